// Layer: cpu. A minimal parallel-for over an index range on std::thread (no OpenMP, so the
// library needs nothing beyond the C++ standard library). Chunks are fixed per call, so
// results never depend on scheduling.
#pragma once
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace nattn::cpu {

inline int worker_count() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(std::min(n, 64u));
}

// Calls body(begin, end) over disjoint chunks of [0, n).
template <class F>
void parallel_for(int64_t n, F&& body) {
  if (n <= 0) return;
  const int64_t workers = std::min<int64_t>(worker_count(), n);
  if (workers <= 1) {
    body(int64_t(0), n);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(size_t(workers - 1));
  const int64_t chunk = (n + workers - 1) / workers;
  for (int64_t w = 1; w < workers; ++w) {
    const int64_t b = w * chunk, e = std::min(n, b + chunk);
    if (b < e) threads.emplace_back([&body, b, e] { body(b, e); });
  }
  body(int64_t(0), std::min(n, chunk));
  for (auto& t : threads) t.join();
}

}  // namespace nattn::cpu
