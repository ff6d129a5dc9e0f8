// Layer: tests. Library calls checked against the dense oracle (call_check.h).
#include "support/call_check.h"

#include <gtest/gtest.h>

#include <sstream>
#include <vector>

#include "core/heads_axis.h"
#include "cpu/reference.h"

namespace nattn_test {
namespace {

using nattn::DType;

std::vector<int64_t> grid_shape(const nattn::Problem& p, int64_t heads, int64_t dim) {
  std::vector<int64_t> s{p.batch};
  for (int a = 0; a < p.rank; ++a) s.push_back(p.extent[a]);
  s.push_back(heads);
  if (dim > 0) s.push_back(dim);
  return s;
}

TestTensor make(const CallConfig& c, std::vector<int64_t> shape, DType dtype, bool is_output, Rng& rng) {
  const Layout layout = c.strided ? random_layout(rng, is_output) : Layout::kContiguous;
  return TestTensor(std::move(shape), dtype, layout, rng);
}

TestTensor random_input(const CallConfig& c, std::vector<int64_t> shape, DType dtype, Rng& rng) {
  TestTensor t = make(c, std::move(shape), dtype, false, rng);
  t.fill_random(rng);
  return t;
}

void make_inputs(const CallConfig& c, Rng& rng, CallTensors* t) {
  const nattn::Problem& p = c.problem;
  t->q = random_input(c, grid_shape(p, p.heads_q, p.head_dim), c.dtype, rng);
  t->k = random_input(c, grid_shape(p, p.heads_kv, p.head_dim), c.dtype, rng);
  t->v = random_input(c, grid_shape(p, p.heads_kv, p.head_dim_v), c.dtype, rng);
  if (p.num_additional > 0) {
    t->ka = random_input(c, {p.batch, p.num_additional, p.heads_kv, p.head_dim}, c.dtype, rng);
    t->va = random_input(c, {p.batch, p.num_additional, p.heads_kv, p.head_dim_v}, c.dtype, rng);
  }
}

std::string axes_string(const nattn::Problem& p) {
  std::ostringstream o;
  for (int a = 0; a < p.rank; ++a)
    o << (a ? " x " : "") << p.extent[a] << "(k" << p.window.kernel_size[a] << " s" << p.window.stride[a] << " d"
      << p.window.dilation[a] << (p.window.is_causal[a] ? " causal" : "") << ")";
  return o.str();
}

// Bytes of every defined tensor in `ts`, to check that a call left its inputs alone.
std::vector<std::vector<unsigned char>> snapshot(const std::vector<const TestTensor*>& ts) {
  std::vector<std::vector<unsigned char>> s;
  for (const TestTensor* t : ts) s.push_back(t->bytes());
  return s;
}

void expect_unchanged(const std::vector<const TestTensor*>& ts, const std::vector<std::vector<unsigned char>>& before) {
  for (size_t i = 0; i < ts.size(); ++i) EXPECT_TRUE(ts[i]->bytes() == before[i]) << "input " << i << " was modified";
}

}  // namespace

std::string CallConfig::describe() const {
  const nattn::Problem& p = problem;
  std::ostringstream o;
  o << (dense ? "dense " : "") << "rank " << p.rank << ": " << axes_string(p) << ", B " << p.batch << ", Hq "
    << p.heads_q << ", Hkv " << p.heads_kv << ", D " << p.head_dim << ", Dv " << p.head_dim_v << ", Na "
    << p.num_additional << ", scale " << (p.scale ? std::to_string(*p.scale) : "default") << ", "
    << nattn::dtype_name(dtype) << (strided ? ", strided" : "") << (with_lse ? ", lse" : "")
    << (with_dlse ? ", dlse" : "") << (heads_axis ? ", heads as grid axis" : "");
  return o.str();
}

nattn::AttentionProblem attention_problem(const CallConfig& c) {
  nattn::AttentionProblem d;
  d.batch = c.problem.batch;
  d.seq_len = c.problem.extent[0];
  d.heads_q = c.problem.heads_q;
  d.heads_kv = c.problem.heads_kv;
  d.head_dim = c.problem.head_dim;
  d.head_dim_v = c.problem.head_dim_v;
  d.is_causal = c.problem.window.is_causal[0];
  d.scale = c.problem.scale;
  return d;
}

DenseSizes sizes_of(const CallConfig& c) {
  return c.dense ? dense_sizes(attention_problem(c)) : dense_sizes(c.problem);
}

TokenMask mask_of(const CallConfig& c) {
  return c.dense ? dense_mask(c.problem.extent[0], c.problem.window.is_causal[0]) : spec_mask(c.problem);
}

nattn::ForwardTensors CallTensors::forward_views() const { return forward_views_of(*this); }

nattn::BackwardTensors CallTensors::backward_views() const { return backward_views_of(*this); }

DenseInputs CallTensors::dense_inputs() const {
  DenseInputs in{q.read(), k.read(), v.read(), {}, {}};
  if (ka.defined()) {
    in.ka = ka.read();
    in.va = va.read();
  }
  return in;
}

std::string CallTensors::describe() const {
  std::ostringstream o;
  o << "layouts:";
  const std::pair<const char*, const TestTensor*> all[] = {
      {"q", &q},       {"k", &k},       {"v", &v},   {"ka", &ka}, {"va", &va}, {"out", &out}, {"lse", &lse},
      {"dout", &dout}, {"dlse", &dlse}, {"dq", &dq}, {"dk", &dk}, {"dv", &dv}, {"dka", &dka}, {"dva", &dva}};
  for (const auto& [name, t] : all)
    if (t->defined()) o << " " << name << "=" << layout_name(t->layout());
  return o.str();
}

CallTensors make_forward_call(const CallConfig& c, Rng& rng) {
  CallTensors t;
  make_inputs(c, rng, &t);
  const nattn::Problem& p = c.problem;
  t.out = make(c, grid_shape(p, p.heads_q, p.head_dim_v), c.dtype, true, rng);
  if (c.with_lse) t.lse = make(c, grid_shape(p, p.heads_q, 0), DType::kFloat32, true, rng);
  return t;
}

CallTensors make_backward_call(const CallConfig& c, Rng& rng) {
  CallTensors t;
  make_inputs(c, rng, &t);
  const nattn::Problem& p = c.problem;
  const DenseForward f = dense_forward(sizes_of(c), mask_of(c), t.dense_inputs());
  // out and lse hold one forward's results: no broadcast layout for them.
  t.out = make(c, grid_shape(p, p.heads_q, p.head_dim_v), c.dtype, true, rng);
  t.out.write(f.out);
  t.lse = make(c, grid_shape(p, p.heads_q, 0), DType::kFloat32, true, rng);
  t.lse.write(f.lse);
  t.dout = random_input(c, grid_shape(p, p.heads_q, p.head_dim_v), c.dtype, rng);
  if (c.with_dlse) t.dlse = random_input(c, grid_shape(p, p.heads_q, 0), DType::kFloat32, rng);
  t.dq = make(c, grid_shape(p, p.heads_q, p.head_dim), c.dtype, true, rng);
  t.dk = make(c, grid_shape(p, p.heads_kv, p.head_dim), c.dtype, true, rng);
  t.dv = make(c, grid_shape(p, p.heads_kv, p.head_dim_v), c.dtype, true, rng);
  if (p.num_additional > 0) {
    t.dka = make(c, {p.batch, p.num_additional, p.heads_kv, p.head_dim}, c.dtype, true, rng);
    t.dva = make(c, {p.batch, p.num_additional, p.heads_kv, p.head_dim_v}, c.dtype, true, rng);
  }
  return t;
}

CallConfig random_call_config(Rng& rng, int max_rank) {
  CallConfig c;
  nattn::Problem& p = c.problem;
  p.rank = int(rng.integer(1, max_rank));
  const int64_t max_extent = p.rank == 1 ? 41 : p.rank == 2 ? 13 : 7;
  for (size_t a = 0; a < size_t(p.rank); ++a) {
    const int64_t L = 2 * rng.integer(1, (max_extent - 1) / 2) + 1;  // odd, 3 .. max_extent
    const int64_t d = rng.coin(0.6) ? 1 : rng.integer(1, L / 2);
    const int64_t k = rng.integer(2, L / d);
    p.extent[a] = L;
    p.window.kernel_size[a] = k;
    p.window.dilation[a] = d;
    p.window.stride[a] = rng.coin(0.5) ? 1 : rng.integer(1, k);
    p.window.is_causal[a] = rng.coin(0.3);
  }
  p.batch = rng.integer(1, 2);
  p.heads_kv = rng.integer(1, 2);
  p.heads_q = p.heads_kv * rng.integer(1, 3);
  p.head_dim = rng.integer(1, 8);
  p.head_dim_v = rng.coin() ? p.head_dim : rng.integer(1, 8);
  p.num_additional = rng.coin(0.6) ? 0 : rng.integer(1, 4);
  if (rng.coin(0.3)) p.scale = rng.coin(0.1) ? 0.0 : rng.uniform(-2.0, 2.0);
  c.dtype = rng.pick(std::vector<nattn::DType>{nattn::DType::kFloat32, nattn::DType::kFloat64, nattn::DType::kFloat16,
                                               nattn::DType::kBFloat16});
  c.strided = rng.coin();
  c.with_lse = rng.coin(0.8);
  c.with_dlse = rng.coin();
  return c;
}

nattn::Status run_forward(const CallConfig& c, const CallTensors& t) {
  if (c.heads_axis) {
    const nattn::ForwardTensors v = nattn::heads_as_axis(t.forward_views(), c.problem);
    // The backend level, as the CUDA backend runs it: kernel size 1 along the heads is no valid
    // public window (>= 2), and the call as it is was valid.
    return nattn::reference_forward(nattn::heads_as_axis(c.problem), v);
  }
  return c.dense ? nattn::attention_forward(attention_problem(c), t.forward_views())
                 : nattn::forward(c.problem, t.forward_views());
}

nattn::Status run_backward(const CallConfig& c, const CallTensors& t) {
  if (c.heads_axis) {
    const nattn::BackwardTensors v = nattn::heads_as_axis(t.backward_views(), c.problem);
    return nattn::reference_backward(nattn::heads_as_axis(c.problem), v);
  }
  return c.dense ? nattn::attention_backward(attention_problem(c), t.backward_views())
                 : nattn::backward(c.problem, t.backward_views());
}

void expect_fully_written(const TestTensor& t, const std::string& name) {
  if (!t.defined()) return;
  EXPECT_EQ(t.unwritten_elements(), 0) << name << ": elements left unwritten (still poisoned)";
  EXPECT_TRUE(t.padding_poisoned()) << name << ": bytes outside the view were written";
}

void check_forward(const CallConfig& c, Rng& rng) {
  SCOPED_TRACE(c.describe());
  const CallTensors t = make_forward_call(c, rng);
  SCOPED_TRACE(t.describe());
  const std::vector<const TestTensor*> inputs{&t.q, &t.k, &t.v, &t.ka, &t.va};
  const auto before = snapshot(inputs);
  const nattn::Status s = run_forward(c, t);
  ASSERT_TRUE(s.ok()) << s.message();
  expect_unchanged(inputs, before);
  expect_fully_written(t.out, "out");
  expect_fully_written(t.lse, "lse");
  const DenseForward want = dense_forward(sizes_of(c), mask_of(c), t.dense_inputs());
  expect_close(t.out.read(), want.out, storage_tolerance(c.dtype), "out");
  if (c.with_lse) expect_close(t.lse.read(), want.lse, lse_tolerance(), "lse");
}

void check_backward(const CallConfig& c, Rng& rng) {
  SCOPED_TRACE(c.describe());
  const CallTensors t = make_backward_call(c, rng);
  SCOPED_TRACE(t.describe());
  const std::vector<const TestTensor*> inputs{&t.q, &t.k, &t.v, &t.ka, &t.va, &t.out, &t.lse, &t.dout, &t.dlse};
  const auto before = snapshot(inputs);
  const nattn::Status s = run_backward(c, t);
  ASSERT_TRUE(s.ok()) << s.message();
  expect_unchanged(inputs, before);
  const std::pair<const char*, const TestTensor*> outs[] = {
      {"dq", &t.dq}, {"dk", &t.dk}, {"dv", &t.dv}, {"d_additional_k", &t.dka}, {"d_additional_v", &t.dva}};
  for (const auto& [name, x] : outs) expect_fully_written(*x, name);
  const std::vector<double> dlse = c.with_dlse ? t.dlse.read() : std::vector<double>{};
  const DenseForward received{t.out.read(), t.lse.read()};
  const DenseGrads want = dense_backward(sizes_of(c), mask_of(c), t.dense_inputs(), t.dout.read(),
                                         c.with_dlse ? &dlse : nullptr, &received);
  const Tolerance tol = storage_tolerance(c.dtype);
  expect_close(t.dq.read(), want.dq, tol, "dq");
  expect_close(t.dk.read(), want.dk, tol, "dk");
  expect_close(t.dv.read(), want.dv, tol, "dv");
  if (t.dka.defined()) {
    expect_close(t.dka.read(), want.dka, tol, "d_additional_k");
    expect_close(t.dva.read(), want.dva, tol, "d_additional_v");
  }
}

}  // namespace nattn_test
