// slot_ranges: the admin API's slot strings <-> int64 slot arrays.
//
// Grammar (ASCII whitespace anywhere is ignored, also inside numbers, as in the reference):
//   text  := item ("," item)*
//   item  := "" | uint | "[" uint "," uint "]"          ([a,b] inclusive, a <= b)
//   uint  := digit+                                      (fits int64)
// Items keep their order and are not deduplicated; empty items are skipped.
//
// Parsing is two passes over the text: slot_ranges_count validates everything and counts
// (throwing std::invalid_argument that names the problem and its position, and failing as
// soon as the count passes max_slots, so "[0,1000000000000]" costs nothing), then
// slot_ranges_fill or slot_ranges_fill_ranges writes the result into a buffer of that size.
// Compression finds maximal runs of consecutive values; expansion turns ranges back into slots
// (CPU twin and CUDA kernel).
#pragma once

#include <cstdint>

#ifdef LMC_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lmc {

struct SlotCount {
  int64_t num_items;  // numbers and ranges (empty items not counted)
  int64_t num_slots;  // slots after expanding ranges
};

// Validates text and counts its items and slots. Throws std::invalid_argument for malformed
// text (unmatched or nested brackets, a > b, a non-number, a negative number, a number that
// overflows int64) or when more than max_slots slots would result (max_slots >= 0).
SlotCount slot_ranges_count(const char* text, int64_t len, int64_t max_slots);

// Writes the expanded slots of text, which slot_ranges_count accepted.
void slot_ranges_fill(const char* text, int64_t len,
                      int64_t* slots);  // [num_slots] (out)

// Writes one (start, end) pair per item of text, which slot_ranges_count accepted; a plain
// number n becomes (n, n).
void slot_ranges_fill_ranges(const char* text, int64_t len,
                             int64_t* ranges);  // [num_items, 2] (out)

// Maximal runs of consecutive values (v[i + 1] == v[i] + 1) in order, as (start, length)
// pairs; returns the number of runs (<= n).
int64_t slot_ranges_runs(const int64_t* slots,  // [n]
                         int64_t n,
                         int64_t* runs);  // [n, 2] (out): (start, length) per run

// Expands inclusive ranges into slots on the host (threads split the output). Throws
// std::invalid_argument unless every range has 0 <= start <= end and the total is num_slots.
void slot_ranges_expand_cpu(const int64_t* ranges,  // [num_ranges, 2] (start, end)
                            int64_t num_ranges,
                            int64_t* slots,  // [num_slots] (out)
                            int64_t num_slots);

#ifdef LMC_WITH_CUDA
// Expands inclusive ranges into slots on the GPU: slot i comes from the range r with
// offsets[r] <= i < offsets[r] + (end - start + 1). ranges and offsets were validated on the
// host. Zero-sized work launches nothing; returns the launch error.
cudaError_t launch_slot_ranges_expand(const int64_t* ranges,   // [num_ranges, 2] device
                                      const int64_t* offsets,  // [num_ranges] device, exclusive
                                      int64_t num_ranges,
                                      int64_t* slots,  // [num_slots] device (out)
                                      int64_t num_slots, cudaStream_t stream);
#endif

}  // namespace lmc
