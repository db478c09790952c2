// A small persistent worker pool for the CPU twins: parallel_for(n, fn) runs fn(begin, end)
// over contiguous slices of [0, n) on up to num_threads() threads (the caller is one of them).
// Sized from LMC_NUM_THREADS or the hardware concurrency. Exceptions thrown by fn are
// re-thrown on the calling thread (the first one wins).
#pragma once

#include <cstdint>
#include <functional>

namespace lmc {

// Number of threads parallel_for uses (>= 1).
int num_threads();

// Overrides the thread count for subsequent calls (n >= 1); used by tests and benchmarks.
void set_num_threads(int n);

// Runs fn(begin, end) over slices of [0, n). Slices are at least min_grain items long, so
// small work stays on the calling thread. Blocks until every slice has run.
void parallel_for(int64_t n, int64_t min_grain,
                  const std::function<void(int64_t begin, int64_t end)>& fn);

}  // namespace lmc
