// The one thing ember needs from libtorch that tch does not wrap: loading a TorchScript module and running
// torch::jit::freeze + torch::jit::optimize_for_inference on it (what Python's torch.jit.optimize_for_inference
// does). Freezing folds batch norms into convolutions and inlines the weights; on CPU the optimisation then
// prepacks them for oneDNN, which cannot be serialised, so it has to happen in the serving process.
//
// Every function catches every C++ exception and reports it as a malloc'd message: nothing unwinds into Rust.

#include <cstdlib>
#include <cstring>
#include <string>

#include <torch/csrc/jit/api/module.h>
#include <torch/script.h>

namespace {

char* copy_message(const std::string& message) {
  char* copy = static_cast<char*>(std::malloc(message.size() + 1));
  if (copy != nullptr) {
    std::memcpy(copy, message.c_str(), message.size() + 1);
  }
  return copy;
}

template <typename F>
auto guarded(char** error, F body) -> decltype(body()) {
  try {
    return body();
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return nullptr;
}

}  // namespace

extern "C" {

// device: -1 for the CPU, N for cuda:N. Returns a torch::jit::Module*, or null with *error set.
void* ember_module_load(const char* path, int device, int optimize, char** error) {
  return guarded(error, [&]() -> void* {
    torch::Device target = device < 0 ? torch::Device(torch::kCPU) : torch::Device(torch::kCUDA, device);
    torch::jit::Module module = torch::jit::load(path, target);
    module.eval();
    if (optimize != 0) {
      torch::jit::Module frozen = torch::jit::freeze(module);
      module = torch::jit::optimize_for_inference(frozen);
    }
    return new torch::jit::Module(std::move(module));
  });
}

// input: an at::Tensor* owned by the caller. Returns a new at::Tensor* (owned by the caller, as tch's
// Tensor::from_ptr expects), or null with *error set.
void* ember_module_forward(void* module, void* input, char** error) {
  return guarded(error, [&]() -> void* {
    auto* jit_module = static_cast<torch::jit::Module*>(module);
    torch::jit::IValue output = jit_module->forward({*static_cast<at::Tensor*>(input)});
    if (!output.isTensor()) {
      throw std::runtime_error("the model's forward returned " + output.tagKind() + ", expected one tensor");
    }
    return new at::Tensor(output.toTensor());
  });
}

void ember_module_free(void* module) { delete static_cast<torch::jit::Module*>(module); }

void ember_message_free(char* message) { std::free(message); }

}  // extern "C"
