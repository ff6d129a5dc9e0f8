// Layer: core. The library's developer switches (environment variables read once per process,
// docs/performance.md lists them): whether one is set to a given value.
#pragma once
#include <cstdlib>
#include <cstring>

namespace nattn {

// True when environment variable `name` is set to exactly `value`.
inline bool env_equals(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e != nullptr && std::strcmp(e, value) == 0;
}

}  // namespace nattn
