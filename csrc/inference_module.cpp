// What ember needs from libtorch that tch does not wrap. Loading a TorchScript module and running
// torch::jit::freeze + torch::jit::optimize_for_inference on it (what Python's torch.jit.optimize_for_inference
// does): freezing folds batch norms into convolutions and inlines the weights; on CPU the optimisation then
// prepacks them for oneDNN, which cannot be serialised, so it has to happen in the serving process. Reading a
// module's parameters and buffers by name (fine-tuning writes them into a copy of an ONNX graph). And a tensor
// over memory another runtime owns (ONNX Runtime's outputs), released when libtorch lets go of it.
//
// Every function catches every C++ exception and reports it as a malloc'd message: nothing unwinds into Rust.

#include <string>
#include <vector>

#include <torch/csrc/jit/api/module.h>
#include <torch/script.h>

#include "shim.h"

using ember::guarded;

extern "C" {

// device: -1 for the CPU, N for cuda:N. Returns a torch::jit::Module*, or null with *error set.
void* ember_module_load(const char* path, int device, int optimize, char** error) {
  return guarded(error, static_cast<void*>(nullptr), [&]() -> void* {
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

// inputs: n_inputs at::Tensor* owned by the caller, passed as forward's positional arguments. A tensor result
// or a tuple of tensors is written to outputs as new at::Tensor* (owned by the caller, as tch's Tensor::from_ptr
// expects). Returns the number of outputs, or -1 with *error set.
int64_t ember_module_forward(void* module, void** inputs, size_t n_inputs, void** outputs, size_t max_outputs,
                             char** error) {
  return guarded(error, static_cast<int64_t>(-1), [&]() -> int64_t {
    auto* jit_module = static_cast<torch::jit::Module*>(module);
    std::vector<torch::jit::IValue> arguments;
    arguments.reserve(n_inputs);
    for (size_t i = 0; i < n_inputs; ++i) {
      arguments.emplace_back(*static_cast<at::Tensor*>(inputs[i]));
    }
    torch::jit::IValue output = jit_module->forward(std::move(arguments));
    std::vector<at::Tensor> tensors;
    if (output.isTensor()) {
      tensors.push_back(output.toTensor());
    } else if (output.isTuple()) {
      for (const auto& element : output.toTupleRef().elements()) {
        if (!element.isTensor()) {
          throw std::runtime_error("the model's forward returned a tuple holding " + element.tagKind() +
                                   "; expected only tensors");
        }
        tensors.push_back(element.toTensor());
      }
    } else {
      throw std::runtime_error("the model's forward returned " + output.tagKind() + "; expected a tensor or a tuple of tensors");
    }
    if (tensors.size() > max_outputs) {
      throw std::runtime_error("the model's forward returned " + std::to_string(tensors.size()) + " tensors; expected at most " +
                               std::to_string(max_outputs));
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      outputs[i] = new at::Tensor(std::move(tensors[i]));
    }
    return static_cast<int64_t>(tensors.size());
  });
}

// Calls visit(context, name, tensor) for every parameter and buffer of the module and its submodules, named as
// in Python's state_dict ("features.0.1.running_mean"); the tensor is borrowed for the call. Returns the count, or
// -1 with *error set.
int64_t ember_module_named_tensors(void* module, void* context, void (*visit)(void*, const char*, const void*),
                                   char** error) {
  return guarded(error, static_cast<int64_t>(-1), [&]() -> int64_t {
    auto* jit_module = static_cast<torch::jit::Module*>(module);
    int64_t count = 0;
    for (const auto& parameter : jit_module->named_parameters(/*recurse=*/true)) {
      visit(context, parameter.name.c_str(), &parameter.value);
      ++count;
    }
    for (const auto& buffer : jit_module->named_buffers(/*recurse=*/true)) {
      visit(context, buffer.name.c_str(), &buffer.value);
      ++count;
    }
    return count;
  });
}

// A CPU tensor over `data` (contiguous, `ndim` sizes, c10::ScalarType `scalar_type`) that calls release(context)
// once libtorch no longer uses it. On failure returns null with *error set, and the caller still owns context.
void* ember_tensor_from_blob(void* data, const int64_t* sizes, size_t ndim, int scalar_type, void* context,
                             void (*release)(void*), char** error) {
  return guarded(error, static_cast<void*>(nullptr), [&]() -> void* {
    auto options = torch::TensorOptions().dtype(static_cast<c10::ScalarType>(scalar_type)).device(torch::kCPU);
    at::Tensor tensor =
        torch::from_blob(data, c10::IntArrayRef(sizes, ndim), [context, release](void*) { release(context); }, options);
    return new at::Tensor(std::move(tensor));
  });
}

void ember_module_free(void* module) { delete static_cast<torch::jit::Module*>(module); }

void ember_message_free(char* message) { std::free(message); }

}  // extern "C"
