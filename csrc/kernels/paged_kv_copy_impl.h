// CPU copy loop shared by the paged_kv_gather and paged_kv_scatter CPU twins (internal header;
// the entry points are declared in paged_kv_gather.h / paged_kv_scatter.h).
//
// Work is split into (kv, layer, token tile) items run by lmc::parallel_for, so each thread
// walks a contiguous stretch of the chunk buffer. Inside an item the copy picks the cheapest
// form the layout allows:
//   - row_contiguous (flash_attn, flashinfer, mla, vllm_cpu V): runs of tokens whose rows are
//     adjacent in the cache become one memcpy (a whole block of 16 tokens is usually one run);
//   - head_contiguous (hnd): one memcpy per (token, head);
//   - anything else (vllm_cpu K, stored [head_size, block_size]; strided views): groups of up
//     to kGroupTokens tokens per head, dims outer and tokens inner, so a transposed block tile
//     is read once while it sits in L1.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/paged_kv_layout.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace lmc {
namespace copy_detail {

// Tokens handled together by the strided path (a block of vLLM's usual sizes, 16 or 32).
constexpr int64_t kGroupTokens = 64;
// Bytes of chunk buffer per work item; large enough to amortise scheduling, small enough to
// balance two threads on a 1K-token chunk.
constexpr int64_t kItemBytes = int64_t{256} << 10;
// Smallest copy that is worth waking the worker threads for.
constexpr int64_t kParallelBytes = int64_t{512} << 10;
// Runs at least this long use non-temporal stores (the destination will not be read soon and
// streaming stores skip the read-for-ownership of every destination line).
constexpr int64_t kStreamBytes = 4096;

// Position of the first slot outside [-1, num_slots), or -1 when every slot is valid.
template <typename SlotT>
int64_t first_bad_slot(const SlotT* LMC_RESTRICT slots, int64_t num_tokens, int64_t num_slots) {
  // NOTE: valid iff 0 <= slot + 1 <= num_slots, one unsigned compare; the OR-reduction runs
  // branch-free (vectorised), the position is only searched for when something is wrong.
  const uint64_t limit = static_cast<uint64_t>(num_slots);
  bool any_bad = false;
  for (int64_t i = 0; i < num_tokens; ++i) {
    any_bad |= static_cast<uint64_t>(static_cast<int64_t>(slots[i]) + 1) > limit;
  }
  if (!any_bad) return -1;
  for (int64_t i = 0; i < num_tokens; ++i) {
    if (static_cast<uint64_t>(static_cast<int64_t>(slots[i]) + 1) > limit) return i;
  }
  return -1;
}

// Throws std::out_of_range naming the first bad slot and its position.
template <typename SlotT>
void validate_slots(const SlotT* slots, int64_t num_tokens, int64_t num_slots) {
  const int64_t bad = first_bad_slot(slots, num_tokens, num_slots);
  LMC_CHECK_INDEX(bad < 0, "slot_mapping[", bad, "] = ", static_cast<int64_t>(slots[bad < 0 ? 0 : bad]),
                  " is out of range: slots must be -1 (padding) or in [0, ", num_slots,
                  ") (num_blocks * block_size)");
}

// Copies bytes; long copies use streaming stores when both ends allow it.
inline void copy_bytes(char* LMC_RESTRICT dst, const char* LMC_RESTRICT src, int64_t n) {
#if defined(__SSE2__)
  if (n >= kStreamBytes && (reinterpret_cast<uintptr_t>(dst) & 15) == 0 && (n & 63) == 0) {
    char* const end = dst + n;
    for (; dst < end; dst += 64, src += 64) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 32));
      const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 48), d);
    }
    return;
  }
#endif
  std::memcpy(dst, src, static_cast<size_t>(n));
}

// Orders the streaming stores of this thread before the caller returns.
inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Element offset of slot's (head 0, dim 0) for one kv side, from the kv side's base.
LMC_INLINE int64_t token_offset(const PagedKVLayout& l, int kv, int64_t slot) {
  const int64_t block = slot / l.block_size;
  return block * l.block_stride[kv] + (slot - block * l.block_size) * l.token_stride[kv];
}

// One item's tokens [t0, t1): cache (kv side base `cache`) <-> chunk rows starting at `rows`.
template <bool kGather, typename Word, typename SlotT>
class ItemCopier {
 public:
  ItemCopier(const PagedKVLayout& l, int kv, const SlotT* slots)
      : l_(l), kv_(kv), slots_(slots), row_elems_(l.row_elems()), row_bytes_(l.row_bytes()) {}

  void run(char* cache, char* rows, int64_t t0, int64_t t1) const {
    if (l_.row_contiguous(kv_)) {
      rows_path(cache, rows, t0, t1);
    } else if (l_.head_contiguous(kv_)) {
      heads_path(cache, rows, t0, t1);
    } else {
      strided_path(reinterpret_cast<Word*>(cache), reinterpret_cast<Word*>(rows), t0, t1);
    }
  }

 private:
  void move(char* cache, char* row, int64_t n) const {
    if (kGather) {
      copy_bytes(row, cache, n);
    } else {
      copy_bytes(cache, row, n);
    }
  }

  // Runs of adjacent rows -> one copy each.
  void rows_path(char* cache, char* rows, int64_t t0, int64_t t1) const {
    const int64_t es = l_.elem_size;
    int64_t i = t0;
    while (i < t1) {
      const int64_t s = static_cast<int64_t>(slots_[i]);
      if (s == -1) {
        ++i;
        continue;
      }
      const int64_t off = token_offset(l_, kv_, s);
      int64_t n = 1;
      while (i + n < t1) {
        const int64_t s2 = static_cast<int64_t>(slots_[i + n]);
        if (s2 == -1 || token_offset(l_, kv_, s2) != off + n * row_elems_) break;
        ++n;
      }
      move(cache + off * es, rows + i * row_bytes_, n * row_bytes_);
      i += n;
    }
  }

  // One copy per (token, head).
  void heads_path(char* cache, char* rows, int64_t t0, int64_t t1) const {
    const int64_t es = l_.elem_size;
    const int64_t head_bytes = l_.head_size * es;
    for (int64_t i = t0; i < t1; ++i) {
      const int64_t s = static_cast<int64_t>(slots_[i]);
      if (s == -1) continue;
      const int64_t off = token_offset(l_, kv_, s);
      char* row = rows + i * row_bytes_;
      for (int64_t h = 0; h < l_.num_heads; ++h) {
        move(cache + (off + h * l_.head_stride[kv_]) * es, row + h * head_bytes, head_bytes);
      }
    }
  }

  // Element by element, kGroupTokens tokens at a time: for each head, dims outer, tokens inner.
  void strided_path(Word* cache, Word* rows, int64_t t0, int64_t t1) const {
    const int64_t hs = l_.head_stride[kv_];
    const int64_t ds = l_.dim_stride[kv_];
    const int64_t d_n = l_.head_size;
    int64_t src_off[kGroupTokens];
    Word* dst_row[kGroupTokens];
    int64_t i = t0;
    while (i < t1) {
      int n = 0;
      for (; i < t1 && n < kGroupTokens; ++i) {
        const int64_t s = static_cast<int64_t>(slots_[i]);
        if (s == -1) continue;
        src_off[n] = token_offset(l_, kv_, s);
        dst_row[n] = rows + i * row_elems_;
        ++n;
      }
      for (int64_t h = 0; h < l_.num_heads; ++h) {
        const int64_t h_off = h * hs;
        const int64_t r_off = h * d_n;
        for (int64_t d = 0; d < d_n; ++d) {
          Word* tile = cache + h_off + d * ds;
          for (int j = 0; j < n; ++j) {
            if (kGather) {
              dst_row[j][r_off + d] = tile[src_off[j]];
            } else {
              tile[src_off[j]] = dst_row[j][r_off + d];
            }
          }
        }
      }
    }
  }

  const PagedKVLayout& l_;
  const int kv_;
  const SlotT* const slots_;
  const int64_t row_elems_;
  const int64_t row_bytes_;
};

template <bool kGather, typename Word, typename SlotT>
void copy_all(const void* const* layer_ptrs, int64_t num_layers, const PagedKVLayout& l,
              const SlotT* slots, int64_t num_tokens, void* chunk) {
  const int64_t row_bytes = l.row_bytes();
  const int64_t tile = std::max<int64_t>(16, (kItemBytes + row_bytes - 1) / row_bytes);
  const int64_t num_tiles = (num_tokens + tile - 1) / tile;
  const int64_t num_items = l.num_kv * num_layers * num_tiles;
  const int64_t total_bytes = l.num_kv * num_layers * num_tokens * row_bytes;
  const int64_t grain = total_bytes < kParallelBytes ? num_items : 1;
  parallel_for(num_items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t t = it % num_tiles;
      const int64_t kl = it / num_tiles;
      const int kv = static_cast<int>(kl / num_layers);
      const int64_t layer = kl % num_layers;
      char* cache = static_cast<char*>(const_cast<void*>(layer_ptrs[layer])) +
                    l.kv_offset[kv] * l.elem_size;
      char* rows = static_cast<char*>(chunk) + kl * num_tokens * row_bytes;
      ItemCopier<kGather, Word, SlotT>(l, kv, slots)
          .run(cache, rows, t * tile, std::min(num_tokens, (t + 1) * tile));
    }
    store_fence();
  });
}

template <bool kGather, typename SlotT>
void copy_slots(const void* const* layer_ptrs, int64_t num_layers, const PagedKVLayout& l,
                const SlotT* slots, int64_t num_tokens, void* chunk) {
  validate_slots(slots, num_tokens, l.num_slots());
  switch (l.elem_size) {
    case 1: return copy_all<kGather, uint8_t>(layer_ptrs, num_layers, l, slots, num_tokens, chunk);
    case 2: return copy_all<kGather, uint16_t>(layer_ptrs, num_layers, l, slots, num_tokens, chunk);
    case 4: return copy_all<kGather, uint32_t>(layer_ptrs, num_layers, l, slots, num_tokens, chunk);
    case 8: return copy_all<kGather, uint64_t>(layer_ptrs, num_layers, l, slots, num_tokens, chunk);
    default:
      throw std::invalid_argument(
          detail::concat("layout elem_size must be 1, 2, 4 or 8 bytes, got ", l.elem_size));
  }
}

// Entry shared by both CPU twins: argument checks, slot validation (before any write), copy.
template <bool kGather>
void paged_kv_copy_cpu(const void* const* layer_ptrs, int64_t num_layers, const PagedKVLayout& l,
                       const void* slot_mapping, int64_t slot_elem_size, int64_t num_tokens,
                       void* chunk) {
  LMC_CHECK_ARG(slot_elem_size == 4 || slot_elem_size == 8,
                "slot_mapping element size must be 4 (int32) or 8 (int64) bytes, got ",
                slot_elem_size);
  LMC_CHECK_ARG(num_layers >= 0, "num_layers must be >= 0, got ", num_layers);
  LMC_CHECK_ARG(num_tokens >= 0, "num_tokens must be >= 0, got ", num_tokens);
  if (num_layers == 0 || num_tokens == 0) return;
  LMC_CHECK_ARG(layer_ptrs != nullptr && slot_mapping != nullptr && chunk != nullptr,
                "null pointer passed to paged KV copy");
  if (slot_elem_size == 8) {
    copy_slots<kGather>(layer_ptrs, num_layers, l, static_cast<const int64_t*>(slot_mapping),
                        num_tokens, chunk);
  } else {
    copy_slots<kGather>(layer_ptrs, num_layers, l, static_cast<const int32_t*>(slot_mapping),
                        num_tokens, chunk);
  }
}

}  // namespace copy_detail
}  // namespace lmc
