// Stress test of lmc::parallel_for (csrc/common/thread_pool.cpp), built with -fsanitize=thread by
// scripts/sanitize.sh. Each phase checks that every index of [0, n) is visited exactly once
// before parallel_for returns; ThreadSanitizer reports data races, and a watchdog fails the run
// when a phase stops making progress (a lost wake-up or a miscounted barrier is a hang).
// Usage: thread_pool_stress [rounds]   (exit 0: all phases passed)
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/thread_pool.h"

namespace {

std::atomic<long> g_progress{0};
std::atomic<bool> g_done{false};
std::atomic<const char*> g_phase{"start"};

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "thread_pool_stress: FAIL: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// Runs one parallel_for over n items and checks each was visited once before it returned.
void covered_once(int64_t n, int64_t grain, bool nested) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  for (auto& h : hits) h.store(0, std::memory_order_relaxed);
  lmc::parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    if (begin < 0 || end > n || begin >= end) fail("bad slice");
    if (nested) {
      // A kernel calling parallel_for from inside a worker runs it inline.
      lmc::parallel_for(end - begin, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = begin + b; i < begin + e; ++i) hits[i].fetch_add(1);
      });
    } else {
      for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
    }
  });
  for (int64_t i = 0; i < n; ++i) {
    if (hits[i].load() != 1) {
      fail("index " + std::to_string(i) + " of " + std::to_string(n) + " visited " +
           std::to_string(hits[i].load()) + " times when parallel_for returned");
    }
  }
  g_progress.fetch_add(1);
}

// Several threads call parallel_for at once (the pool serves one, the others run inline).
void phase_concurrent_callers(int rounds) {
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([t, rounds] {
      std::mt19937 rng(t);
      for (int r = 0; r < rounds; ++r) covered_once(1 + rng() % 5000, 1 + rng() % 64, r % 7 == 0);
    });
  }
  for (auto& c : callers) c.join();
}

// The thread count changes between calls, as the kernel tests do around each multithreaded
// case: freshly started workers must not take part in a job posted before they existed.
void phase_resize_then_run(int rounds) {
  std::mt19937 rng(42);
  for (int r = 0; r < rounds; ++r) {
    lmc::set_num_threads(1 + static_cast<int>(rng() % 4));
    if (r % 3 == 1) {
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
    }
    covered_once(64 + rng() % 2000, 1, false);
    covered_once(64 + rng() % 2000, 4, false);
  }
}

// One thread resizes while others keep calling parallel_for.
void phase_resize_concurrently(int rounds) {
  std::atomic<bool> stop{false};
  std::thread resizer([&] {
    std::mt19937 rng(7);
    while (!stop.load()) {
      lmc::set_num_threads(1 + static_cast<int>(rng() % 4));
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
    }
  });
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t) {
    callers.emplace_back([t, rounds] {
      std::mt19937 rng(100 + t);
      for (int r = 0; r < rounds; ++r) covered_once(1 + rng() % 3000, 1 + rng() % 16, false);
    });
  }
  for (auto& c : callers) c.join();
  stop.store(true);
  resizer.join();
}

// An exception thrown in a slice reaches the caller, and the pool keeps working afterwards.
void phase_exceptions(int rounds) {
  lmc::set_num_threads(3);
  for (int r = 0; r < rounds; ++r) {
    bool caught = false;
    try {
      lmc::parallel_for(1000, 1, [&](int64_t begin, int64_t end) {
        if (begin <= 500 && 500 < end) throw std::runtime_error("slice 500");
      });
    } catch (const std::runtime_error&) {
      caught = true;
    }
    if (!caught) fail("exception from a slice was not re-thrown");
    covered_once(1000, 1, false);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 200;
  // Watchdog: every phase calls covered_once many times; no progress for 60 s is a hang.
  std::thread watchdog([] {
    long last = -1;
    int idle = 0;
    while (!g_done.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      long now = g_progress.load();
      idle = now == last ? idle + 1 : 0;
      last = now;
      if (idle >= 600) {
        fail(std::string("no parallel_for completed for 60 s (hang) in phase ") + g_phase.load());
      }
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  g_phase = "concurrent callers";
  phase_concurrent_callers(rounds);
  g_phase = "resize then run";
  phase_resize_then_run(rounds * 4);
  g_phase = "resize concurrently";
  phase_resize_concurrently(rounds);
  g_phase = "exceptions";
  phase_exceptions(rounds / 4 + 1);
  g_done.store(true);
  watchdog.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("thread_pool_stress: %ld parallel_for calls checked in %.1f s, no failure\n",
              g_progress.load(), s);
  return 0;
}
