// CUDA slot_ranges: expansion of inclusive ranges into slots on the GPU.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/slot_ranges.h"

namespace lmc {
namespace {

constexpr int kExpandThreads = 256;
constexpr int64_t kMaxExpandBlocks = 1 << 16;

// slots[i] = start[r] + (i - offsets[r]) for the last range r with offsets[r] <= i (binary
// search; every range holds at least one slot), grid-stride over the output.
// Grid: (min(ceil(num_slots / kExpandThreads), kMaxExpandBlocks))  Block: (kExpandThreads)
__global__ void slot_ranges_expand_kernel(const int64_t* __restrict__ ranges,   // [num_ranges, 2]
                                          const int64_t* __restrict__ offsets,  // [num_ranges]
                                          int64_t num_ranges,
                                          int64_t* __restrict__ slots,  // [num_slots]
                                          int64_t num_slots) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < num_slots;
       i += stride) {
    int64_t lo = 0, hi = num_ranges - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (offsets[mid] <= i) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    slots[i] = ranges[2 * lo] + (i - offsets[lo]);
  }
}

}  // namespace

cudaError_t launch_slot_ranges_expand(const int64_t* ranges, const int64_t* offsets,
                                      int64_t num_ranges, int64_t* slots, int64_t num_slots,
                                      cudaStream_t stream) {
  if (num_slots <= 0 || num_ranges <= 0) return cudaSuccess;
  const int64_t blocks =
      std::min<int64_t>((num_slots + kExpandThreads - 1) / kExpandThreads, kMaxExpandBlocks);
  slot_ranges_expand_kernel<<<static_cast<unsigned>(blocks), kExpandThreads, 0, stream>>>(
      ranges, offsets, num_ranges, slots, num_slots);
  return cudaGetLastError();
}

}  // namespace lmc
