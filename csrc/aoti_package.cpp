// AOTInductor packages (.pt2, made by torch._inductor.aoti_compile_and_package): a model compiled ahead of time
// to native code for one device, loaded and run through libtorch's AOTIModelPackageLoader.
//
// The loader unpacks the package into a temporary folder and dlopens the compiled model from there. In torch
// 2.11 two loaders constructed at once race on that, so construction holds one process-wide mutex. `run` is
// safe from several threads: the loader keeps `num_runners` model instances and each call takes a free one.

#include <mutex>
#include <string>
#include <vector>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "shim.h"

using ember::guarded;

namespace {
std::mutex construction;
}

extern "C" {

// device: -1 for the CPU, N for cuda:N. Returns an AOTIModelPackageLoader*, or null with *error set.
void* ember_aoti_load(const char* path, int device, size_t num_runners, char** error) {
  return guarded(error, static_cast<void*>(nullptr), [&]() -> void* {
    std::lock_guard<std::mutex> lock(construction);
    auto index = static_cast<c10::DeviceIndex>(device < 0 ? -1 : device);
    return new torch::inductor::AOTIModelPackageLoader(path, "model", /*run_single_threaded=*/false, num_runners,
                                                       index);
  });
}

// inputs: n_inputs at::Tensor* owned by the caller. Writes the outputs as new at::Tensor* (owned by the caller)
// and returns their number, or -1 with *error set.
int64_t ember_aoti_run(void* loader, void** inputs, size_t n_inputs, void** outputs, size_t max_outputs,
                       char** error) {
  return guarded(error, static_cast<int64_t>(-1), [&]() -> int64_t {
    std::vector<at::Tensor> arguments;
    arguments.reserve(n_inputs);
    for (size_t i = 0; i < n_inputs; ++i) {
      arguments.push_back(*static_cast<at::Tensor*>(inputs[i]));
    }
    std::vector<at::Tensor> results = static_cast<torch::inductor::AOTIModelPackageLoader*>(loader)->run(arguments);
    if (results.size() > max_outputs) {
      throw std::runtime_error("the package returned " + std::to_string(results.size()) +
                               " tensors; expected at most " + std::to_string(max_outputs));
    }
    for (size_t i = 0; i < results.size(); ++i) {
      outputs[i] = new at::Tensor(std::move(results[i]));
    }
    return static_cast<int64_t>(results.size());
  });
}

void ember_aoti_free(void* loader) { delete static_cast<torch::inductor::AOTIModelPackageLoader*>(loader); }

}  // extern "C"
