// Layer: public API. Errors are values: a code plus a message naming the argument, its value and the rule.
#pragma once
#include <string>
#include <utility>

namespace nattn {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // the caller broke a rule of SPEC.md or of the tensor contract
  kUnsupported = 2,      // valid, but the chosen backend cannot run it (message says why)
  kRuntimeError = 3,     // a device or allocation failure while running
};

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  static Status Invalid(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status Unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
  static Status Runtime(std::string m) { return {StatusCode::kRuntimeError, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

}  // namespace nattn

// Propagates a non-ok Status to the caller.
#define NATTN_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::nattn::Status nattn_status_ = (expr);        \
    if (!nattn_status_.ok()) return nattn_status_; \
  } while (0)
