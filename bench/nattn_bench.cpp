// Layer: bench. nattn-bench: runs one neighborhood-attention problem given on the command line,
// times it, optionally verifies it against the float64 reference, and prints time, useful
// TFLOP/s (SPEC.md counting), the FLOP-wise speedup limit and the max error.
// With no arguments it runs an embedded default 2-D problem on the best backend present.
// --explain prints the plan (family, configuration rows, tiles, copies, workspace) as JSON
// instead; --family/--config/--tile force a kernel choice (Options::choice).
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/buffers.h"
#include "nattn/nattn.h"

namespace {

using nattn::DType;

struct Args {
  nattn::Problem p;
  DType dtype = DType::kFloat32;
  nattn::BackendKind backend = nattn::BackendKind::kAuto;
  std::string mode = "fwd";  // fwd, bwd (forward + backward timed separately), both
  bool verify = true;
  bool deterministic = false;
  bool explain = false;  // print the plans as JSON, run nothing
  nattn::KernelChoice choice;
  int warmup = 1, iters = 3;
};

const char* kUsage =
    "usage: nattn-bench [options]\n"
    "  --extent AxB[xC]   token grid (rank = number of values)        default 32x32\n"
    "  --kernel K|AxB..   kernel_size per axis                         default 7\n"
    "  --stride S|AxB..   stride per axis                              default 1\n"
    "  --dilation D|AxB.. dilation per axis                            default 1\n"
    "  --causal C|AxB..   0/1 per axis                                 default 0\n"
    "  --batch B  --heads H  --kv-heads H  --dim D  --dim-v D  --additional NA\n"
    "  --scale S          softmax scale (default 1/sqrt(dim))\n"
    "  --dtype fp32|fp16|bf16|fp64                                     default fp32 (cpu)\n"
    "  --backend auto|reference|cuda                                   default auto\n"
    "  --mode fwd|bwd     bwd times forward and backward               default fwd\n"
    "  --no-verify        skip the float64 reference check\n"
    "  --deterministic    a deterministic backward (bitwise reproducible): on sm90 the dQ and dK/dV pair,\n"
    "                     or with a forced fast row (or NATTN_SM90_DETERMINISTIC=ordered) the fast kernel\n"
    "                     with its dQ adds in a fixed order\n"
    "  --warmup N --iters N\n"
    "  --explain          print the plan as JSON ({\"forward\": plan} or, with --mode bwd,\n"
    "                     {\"forward\": plan, \"backward\": plan}) and exit without running\n"
    "  --family NAME      force a kernel family (sm90, sm80, generic, reference)\n"
    "  --config ID[,ID]   force configuration rows (ids of the kernel configuration table,\n"
    "                     at most one per kernel role: forward; backward_dq, backward_dkdv;\n"
    "                     backward_dkdv_dq, the fast backward's one kernel)\n"
    "  --tile AxB..:AxB.. force the forward/dQ own (query) box and walked (key) box per axis\n"
    "                     (powers of two whose products are the configuration's blocks)\n";

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "nattn-bench: %s\n%s", msg.c_str(), kUsage);
  std::exit(2);
}

int64_t parse_int(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0) usage_error(flag + " = '" + s + "' is not an integer");
  return v;
}

// "3,11" -> {3, 11}: configuration row ids that this library's table has.
std::vector<int> parse_configs(const std::string& flag, const std::string& s) {
  std::vector<int> ids;
  size_t start = 0;
  while (true) {
    const size_t comma = s.find(',', start);
    const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const int64_t id = parse_int(flag, item);
    bool known = false;
    for (const nattn::KernelConfigInfo& c : nattn::kernel_configs()) known |= c.id == id;
    if (!known) usage_error(flag + " = '" + s + "': " + item + " is not a configuration row id of this library");
    ids.push_back(int(id));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return ids;
}

// "7" -> {7}, "7x9" -> {7, 9}
std::vector<int64_t> parse_axes(const std::string& flag, const std::string& s) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (true) {
    const size_t x = s.find('x', start);
    out.push_back(parse_int(flag, s.substr(start, x == std::string::npos ? std::string::npos : x - start)));
    if (x == std::string::npos) break;
    start = x + 1;
  }
  if (out.size() > 3) usage_error(flag + " = '" + s + "' has more than 3 axes");
  return out;
}

// "8x16:64x1" -> own {8, 16, 1}, walk {64, 1, 1}: box extents per axis (1 past those given).
void parse_tiles(const std::string& flag, const std::string& s, nattn::KernelChoice* choice) {
  const size_t colon = s.find(':');
  if (colon == std::string::npos || s.find(':', colon + 1) != std::string::npos)
    usage_error(flag + " = '" + s + "' must be OWN:WALK, e.g. 8x16:8x8");
  std::array<int, 3>* dst[2] = {&choice->own_tile, &choice->walk_tile};
  const std::string parts[2] = {s.substr(0, colon), s.substr(colon + 1)};
  for (int i = 0; i < 2; ++i) {
    const std::vector<int64_t> v = parse_axes(flag, parts[i]);
    for (int a = 0; a < 3; ++a) {
      const int64_t x = a < int(v.size()) ? v[size_t(a)] : 1;
      if (x < 1 || x > (1 << 20)) usage_error(flag + " = '" + s + "': box extents must be >= 1");
      (*dst[i])[size_t(a)] = int(x);
    }
  }
}

void set_axes(const std::string& flag, const std::vector<int64_t>& v, int rank, std::array<int64_t, 3>* dst) {
  if (v.size() != 1 && int(v.size()) != rank)
    usage_error(flag + " has " + std::to_string(v.size()) + " values but --extent has " + std::to_string(rank));
  for (int a = 0; a < 3; ++a) (*dst)[a] = v.size() == 1 ? v[0] : (a < rank ? v[a] : 1);
}

Args parse(int argc, char** argv) {
  Args a;
  a.p.rank = 2;
  a.p.extent = {32, 32, 1};
  a.p.heads_q = a.p.heads_kv = 4;
  a.p.head_dim = a.p.head_dim_v = 64;
  std::vector<int64_t> kernel{7}, stride{1}, dilation{1}, causal{0};
  bool dim_v_set = false, kv_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(f + " needs a value");
      return argv[++i];
    };
    if (f == "--help" || f == "-h") {
      std::printf("%s", kUsage);
      std::exit(0);
    } else if (f == "--extent") {
      const auto e = parse_axes(f, value());
      a.p.rank = int(e.size());
      for (int ax = 0; ax < 3; ++ax) a.p.extent[ax] = ax < a.p.rank ? e[ax] : 1;
    } else if (f == "--kernel")
      kernel = parse_axes(f, value());
    else if (f == "--stride")
      stride = parse_axes(f, value());
    else if (f == "--dilation")
      dilation = parse_axes(f, value());
    else if (f == "--causal")
      causal = parse_axes(f, value());
    else if (f == "--batch")
      a.p.batch = parse_int(f, value());
    else if (f == "--heads")
      a.p.heads_q = parse_int(f, value());
    else if (f == "--kv-heads") {
      a.p.heads_kv = parse_int(f, value());
      kv_set = true;
    } else if (f == "--dim")
      a.p.head_dim = parse_int(f, value());
    else if (f == "--dim-v") {
      a.p.head_dim_v = parse_int(f, value());
      dim_v_set = true;
    } else if (f == "--additional")
      a.p.num_additional = parse_int(f, value());
    else if (f == "--scale") {
      const std::string s = value();
      char* end = nullptr;
      a.p.scale = std::strtod(s.c_str(), &end);
      if (s.empty() || *end != '\0') usage_error("--scale = '" + s + "' is not a number");
    } else if (f == "--dtype") {
      const std::string s = value();
      if (s == "fp32")
        a.dtype = DType::kFloat32;
      else if (s == "fp16")
        a.dtype = DType::kFloat16;
      else if (s == "bf16")
        a.dtype = DType::kBFloat16;
      else if (s == "fp64")
        a.dtype = DType::kFloat64;
      else
        usage_error("--dtype = '" + s + "' must be fp32, fp16, bf16 or fp64");
    } else if (f == "--backend") {
      const std::string s = value();
      if (s == "auto")
        a.backend = nattn::BackendKind::kAuto;
      else if (s == "reference")
        a.backend = nattn::BackendKind::kReference;
      else if (s == "cuda")
        a.backend = nattn::BackendKind::kCuda;
      else
        usage_error("--backend = '" + s + "' must be auto, reference or cuda");
    } else if (f == "--mode") {
      a.mode = value();
      if (a.mode != "fwd" && a.mode != "bwd") usage_error("--mode = '" + a.mode + "' must be fwd or bwd");
    } else if (f == "--no-verify")
      a.verify = false;
    else if (f == "--deterministic")
      a.deterministic = true;
    else if (f == "--explain")
      a.explain = true;
    else if (f == "--family") {
      a.choice.family = value();
      if (a.choice.family.empty()) usage_error("--family needs a family name");
    } else if (f == "--config")
      a.choice.config_ids = parse_configs(f, value());
    else if (f == "--tile")
      parse_tiles(f, value(), &a.choice);
    else if (f == "--warmup")
      a.warmup = int(parse_int(f, value()));
    else if (f == "--iters")
      a.iters = int(parse_int(f, value()));
    else
      usage_error("unknown option '" + f + "'");
  }
  if (!kv_set) a.p.heads_kv = a.p.heads_q;
  if (!dim_v_set) a.p.head_dim_v = a.p.head_dim;
  if (a.iters < 1 || a.warmup < 0) usage_error("--iters must be >= 1 and --warmup >= 0");
  set_axes("--kernel", kernel, a.p.rank, &a.p.window.kernel_size);
  set_axes("--stride", stride, a.p.rank, &a.p.window.stride);
  set_axes("--dilation", dilation, a.p.rank, &a.p.window.dilation);
  std::array<int64_t, 3> c{};
  set_axes("--causal", causal, a.p.rank, &c);
  for (int ax = 0; ax < 3; ++ax) a.p.window.is_causal[ax] = c[ax] != 0;
  return a;
}

std::string axes_string(const std::array<int64_t, 3>& v, int rank) {
  std::string s;
  for (int a = 0; a < rank; ++a) s += (a ? "x" : "") + std::to_string(v[a]);
  return s;
}

// Median wall time in ms of `iters` calls (after `warmup`); device work is synchronized
// inside the call by the buffers' sync().
template <class F>
double time_ms(const Args& a, nattn::bench::Buffers& buf, F&& f) {
  for (int i = 0; i < a.warmup; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < a.iters; ++i) {
    buf.sync();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    buf.sync();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void check(const nattn::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "nattn-bench: %s failed: %s\n", what, s.message().c_str());
    std::exit(1);
  }
}

// "sm80 config 3" / "sm80 config 11,17": the family and the configuration rows of a plan.
std::string plan_summary(const nattn::Plan& plan) {
  std::string ids;
  for (const nattn::PlannedKernel& k : plan.kernels)
    if (k.config_id >= 0) ids += (ids.empty() ? "" : ",") + std::to_string(k.config_id);
  return plan.family + " config " + (ids.empty() ? "-" : ids);
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  const nattn::BackendInfo best = nattn::bench::best_backend(a.backend);
  if (argc == 1 && best.kind == nattn::BackendKind::kCuda) {
    // The default problem on a GPU: large enough to fill it, in bf16.
    a.p.extent = {128, 128, 1};
    a.p.window.kernel_size = {31, 31, 1};
    a.p.batch = 2;
    a.p.heads_q = a.p.heads_kv = 16;
    a.p.head_dim = a.p.head_dim_v = 128;
    a.dtype = DType::kBFloat16;
    a.iters = 20;
    a.warmup = 3;
  }
  // Plans need tensors (their layouts and alignment) but no values: --explain fills nothing.
  nattn::bench::Buffers buf(a.p, a.dtype, best.kind, !a.explain);
  nattn::Options opt;
  opt.backend = a.backend;
  opt.stream = buf.stream();
  opt.choice = a.choice;
  opt.deterministic = a.deterministic;

  nattn::Plan fwd_plan, bwd_plan;
  check(nattn::explain_forward(a.p, buf.forward_tensors(), opt, &fwd_plan), "explain forward");
  if (a.mode == "bwd") check(nattn::explain_backward(a.p, buf.backward_tensors(), opt, &bwd_plan), "explain backward");
  if (a.explain) {
    std::printf("{\"forward\": %s", fwd_plan.to_json().c_str());
    if (a.mode == "bwd") std::printf(", \"backward\": %s", bwd_plan.to_json().c_str());
    std::printf("}\n");
    return 0;
  }

  std::string plans = "fwd " + plan_summary(fwd_plan);
  if (a.mode == "bwd") plans += " | bwd " + plan_summary(bwd_plan);
  std::printf(
      "nattn-bench: %d-D extent %s kernel %s stride %s dilation %s causal %s | B=%lld Hq=%lld Hkv=%lld D=%lld Dv=%lld "
      "Na=%lld | %s | backend %s | %s\n",
      a.p.rank, axes_string(a.p.extent, a.p.rank).c_str(), axes_string(a.p.window.kernel_size, a.p.rank).c_str(),
      axes_string(a.p.window.stride, a.p.rank).c_str(), axes_string(a.p.window.dilation, a.p.rank).c_str(),
      axes_string({a.p.window.is_causal[0], a.p.window.is_causal[1], a.p.window.is_causal[2]}, a.p.rank).c_str(),
      (long long)a.p.batch, (long long)a.p.heads_q, (long long)a.p.heads_kv, (long long)a.p.head_dim,
      (long long)a.p.head_dim_v, (long long)a.p.num_additional, nattn::dtype_name(a.dtype), best.name.c_str(),
      plans.c_str());

  const double fwd_ms = time_ms(a, buf, [&] { check(nattn::forward(a.p, buf.forward_tensors(), opt), "forward"); });
  double bwd_ms = -1;
  if (a.mode == "bwd")
    bwd_ms = time_ms(a, buf, [&] { check(nattn::backward(a.p, buf.backward_tensors(), opt), "backward"); });

  const double flops = nattn::forward_flops(a.p);
  std::printf("%-10s %12s %16s %16s %14s\n", "pass", "time_ms", "useful_TFLOP/s", "flopwise_limit", "max_abs_err");
  auto row = [&](const char* name, double ms, double f, const std::string& err) {
    std::printf("%-10s %12.4f %16.3f %15.2fx %14s\n", name, ms, f / (ms * 1e-3) / 1e12,
                nattn::flopwise_speedup_limit(a.p), err.c_str());
  };
  std::string fwd_err = "-", bwd_err = "-";
  if (a.verify) {
    const nattn::bench::Errors e = buf.verify(a.mode == "bwd");
    char s[64];
    std::snprintf(s, sizeof s, "%.3e", e.forward);
    fwd_err = s;
    if (a.mode == "bwd") {
      std::snprintf(s, sizeof s, "%.3e", e.backward);
      bwd_err = s;
    }
  }
  row("forward", fwd_ms, flops, fwd_err);
  if (a.mode == "bwd") row("backward", bwd_ms, 2.5 * flops, bwd_err);
  return 0;
}
