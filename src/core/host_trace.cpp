// Layer: core. Process-wide host-time counters per call phase (nattn/host_trace.h).
#include "core/host_trace.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace nattn {
namespace {

constexpr int kPhases = static_cast<int>(HostPhase::kCount);
constexpr const char* kNames[kPhases] = {"call",        "validate", "choose_backend",   "plan_lookup", "workspace",
                                         "bind_copies", "delta",    "family",           "encode_maps", "encode",
                                         "launch",      "copy_out", "workspace_release"};

bool env_on() {
  const char* v = std::getenv("NATTN_HOST_TRACE");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

std::atomic<bool> g_on{env_on()};
std::atomic<int64_t> g_calls[kPhases];
std::atomic<int64_t> g_ns[kPhases];

}  // namespace

void host_trace_add(HostPhase phase, int64_t ns) {
  const int i = static_cast<int>(phase);
  g_calls[i].fetch_add(1, std::memory_order_relaxed);
  g_ns[i].fetch_add(ns, std::memory_order_relaxed);
}

void set_host_trace(bool on) {
  if (on)
    for (int i = 0; i < kPhases; ++i) {
      g_calls[i].store(0, std::memory_order_relaxed);
      g_ns[i].store(0, std::memory_order_relaxed);
    }
  g_on.store(on, std::memory_order_relaxed);
}

bool host_trace_enabled() { return g_on.load(std::memory_order_relaxed); }  // the timers' one load

std::string host_trace_json() {
  std::string s = "{";
  for (int i = 0; i < kPhases; ++i) {
    s += std::string(i ? ", " : "") + "\"" + kNames[i] +
         "\": {\"calls\": " + std::to_string(g_calls[i].load(std::memory_order_relaxed)) +
         ", \"ns\": " + std::to_string(g_ns[i].load(std::memory_order_relaxed)) + "}";
  }
  return s + "}";
}

}  // namespace nattn
