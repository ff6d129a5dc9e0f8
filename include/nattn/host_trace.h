// Layer: public API. Host-time tracing of calls, for diagnosing call overhead: per phase of a
// call (validation, plan lookup, workspace, tensor-map encoding, launches, ...), how many times
// it ran and how long it took on the host, summed over the process's calls. Off by default;
// NATTN_HOST_TRACE=1 in the environment (read at load) or set_host_trace(true) turns it on.
// Off, each phase costs one relaxed atomic load.
#pragma once
#include <string>

namespace nattn {

// Turns tracing on or off; turning it on also resets the counts.
void set_host_trace(bool on);
bool host_trace_enabled();  // one relaxed atomic load
// The counts so far as JSON: {"validate": {"calls": n, "ns": t}, ...}, phases in call order
// (those that never ran included, with zeros).
std::string host_trace_json();

}  // namespace nattn
