// Layer: core. Plan serialisation (the C ABI and Python read plans as JSON).
#include "nattn/plan.h"

#include <cstdio>
#include <string>

namespace nattn {
namespace {

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

template <class T, size_t N>
std::string array(const std::array<T, N>& a) {
  std::string out = "[";
  for (size_t i = 0; i < N; ++i) out += (i ? ", " : "") + std::to_string(a[i]);
  return out + "]";
}

}  // namespace

std::string Plan::to_json() const {
  std::string j = "{\"backend\": " + quoted(backend) + ", \"family\": " + quoted(family) + ", \"families\": [";
  for (size_t i = 0; i < families.size(); ++i)
    j += std::string(i ? ", " : "") + "{\"family\": " + quoted(families[i].family) +
         ", \"chosen\": " + (families[i].chosen ? "true" : "false") + ", \"reason\": " + quoted(families[i].reason) +
         "}";
  j += "], \"copies\": [";
  for (size_t i = 0; i < copies.size(); ++i) j += (i ? ", " : "") + quoted(copies[i]);
  j += "], \"kernels\": [";
  for (size_t i = 0; i < kernels.size(); ++i) {
    const PlannedKernel& k = kernels[i];
    char walked[32];
    std::snprintf(walked, sizeof walked, "%.17g", k.walked_tiles);
    j += std::string(i ? ", " : "") + "{\"role\": " + quoted(k.role) +
         ", \"config_id\": " + std::to_string(k.config_id) + ", \"own_tile\": " + array(k.own_tile) +
         ", \"walk_tile\": " + array(k.walk_tile) + ", \"grid\": " + array(k.grid) +
         ", \"threads\": " + std::to_string(k.threads) + ", \"smem_bytes\": " + std::to_string(k.smem_bytes) +
         ", \"walked_tiles\": " + walked + "}";
  }
  j += "], \"workspace_bytes\": " + std::to_string(workspace_bytes) + ", \"cached\": " + (cached ? "true" : "false") +
       "}";
  return j;
}

}  // namespace nattn
