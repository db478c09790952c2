// slot_ranges: the admin API's slot strings <-> int64 slot arrays.
//
// Grammar (ASCII whitespace anywhere is ignored, also inside numbers, as in the reference):
//   text  := item ("," item)*
//   item  := "" | uint | "[" uint "," uint "]"          ([a,b] inclusive, a <= b)
//   uint  := digit+                                      (fits int64)
// Items keep their order and are not deduplicated; empty items are skipped.
//
// Parsing validates the whole text and counts its slots while it collects one (start, end)
// pair per item (errors name the problem and its byte position; the count is checked against
// max_slots item by item, so "[0,1000000000000]" fails at once); only then is the slot array
// allocated and the pairs expanded into it (slot_ranges_expand_cpu, or the CUDA kernel).
// Compression finds maximal runs of consecutive values.
#pragma once

#include <cstdint>
#include <vector>

#ifdef LMC_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lmc {

// Parses text into one inclusive (start, end) pair per item (a plain number n is (n, n)),
// appended to ranges after clearing it, and returns the number of slots they expand to.
// Throws std::invalid_argument for malformed text (unmatched or nested brackets, a > b, a
// non-number, a negative number, a number beyond int64) or as soon as the count passes
// max_slots (>= 0). Memory use is bounded by the text's length, never by the slot count.
int64_t slot_ranges_parse(const char* text, int64_t len, int64_t max_slots,
                          std::vector<int64_t>& ranges);  // [num_items, 2] (out)

// Walks the maximal runs of consecutive values (v[i + 1] == v[i] + 1) of slots in order:
// returns the number of items of the compressed form (a run of >= 3 values is one item, a
// shorter run one item per value) and, when visit is given, calls visit(start, length) for
// every run.
template <typename Visit>
int64_t slot_ranges_runs(const int64_t* slots,  // [n]
                         int64_t n, Visit&& visit) {
  int64_t items = 0;
  int64_t i = 0;
  while (i < n) {
    int64_t j = i;
    // NOTE: v + 1 is formed only below INT64_MAX, so it cannot overflow.
    while (j + 1 < n && slots[j] != INT64_MAX && slots[j + 1] == slots[j] + 1) ++j;
    const int64_t length = j - i + 1;
    items += length >= 3 ? 1 : length;
    visit(slots[i], length);
    i = j + 1;
  }
  return items;
}

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
