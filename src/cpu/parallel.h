// Layer: cpu. A minimal parallel-for over an index range on std::thread (no OpenMP, so the
// library needs nothing beyond the C++ standard library). Chunks are fixed per call, so
// results never depend on scheduling.
#pragma once
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace nattn::cpu {

// Asked once: hardware_concurrency() reads /sys on every call (an open/read/close, several
// microseconds), which a small call would pay on every launch.
inline int worker_count() {
  static const int workers = [] {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : int(std::min(n, 64u));
  }();
  return workers;
}

// Work (multiply-adds) a thread must get to be worth starting one: a thread start and join
// costs tens of microseconds, so a tiny call (a NAT-sized test problem) runs on the caller's
// thread alone instead of paying ~50 us for threads that each finish in a microsecond.
inline constexpr int64_t kMinWorkPerThread = int64_t(1) << 16;

// Calls body(begin, end) over disjoint chunks of [0, n); `work_per_item` (multiply-adds per
// index, an estimate) bounds the number of threads so that each gets kMinWorkPerThread.
template <class F>
void parallel_for(int64_t n, int64_t work_per_item, F&& body) {
  if (n <= 0) return;
  const int64_t total = n * std::max<int64_t>(work_per_item, 1);
  const int64_t by_work = std::max<int64_t>(total / kMinWorkPerThread, 1);
  const int64_t workers = std::min<int64_t>({int64_t(worker_count()), n, by_work});
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
