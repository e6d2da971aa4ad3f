// What every function of ember's C++ shim shares: nothing unwinds into Rust. Each catches every C++ exception
// and reports it as a malloc'd message, which Rust copies and frees with ember_message_free.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace ember {

inline char* copy_message(const std::string& message) {
  char* copy = static_cast<char*>(std::malloc(message.size() + 1));
  if (copy != nullptr) {
    std::memcpy(copy, message.c_str(), message.size() + 1);
  }
  return copy;
}

// Runs `body`, turning any C++ exception into (failure, *error = malloc'd message).
template <typename F, typename R>
R guarded(char** error, R failure, F body) {
  try {
    return body();
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return failure;
}

}  // namespace ember
