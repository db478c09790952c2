// CPU copy loop shared by the paged_kv_gather and paged_kv_scatter CPU twins (internal header;
// the entry points are declared in paged_kv_gather.h / paged_kv_scatter.h).
//
// One call moves one chunk buffer or many (the batched entry points: chunk c takes the next
// n_c tokens of the slot mapping), with one slot validation and one parallel_for. Work is split
// into items, each a tile of about kItemBytes of one chunk's rows, layer-major (the tiles of all
// chunks in token order inside each layer), so each thread walks one layer's cache at a time
// and contiguous stretches of chunk buffer:
//   - layouts whose rows are contiguous (flash_attn, flashinfer, mla): (kv, layer, tile) items;
//     runs of tokens whose rows are adjacent in the cache become one copy (a block or more);
//   - the others (hnd, vllm_cpu, strided views): (layer, tile) items; for each run of tokens
//     inside one block and each head, K's piece then V's piece, so the cache is read in
//     address order. vllm_cpu's K, stored [head_size, block_size], is an SSE2 tile transpose;
//     scattering into it uses AVX2 16x16 register transposes where the CPU has AVX2 and the
//     element is 2 bytes (paged_kv_copy_avx2_cpu.cpp);
//   - packed kv sides (vllm_cpu_amx, tiled for AMX): same (layer, tile) items; each head's piece
//     goes through the layout's own two-level index math (PagedKVLayout::token_part/dim_part,
//     the dim part tabled once per thread), with a 32-bit word transpose where whole words of
//     consecutive tokens are adjacent (vllm_cpu_amx's K). Both copy ISAs take this path.
// Long destination runs use streaming stores (no read-for-ownership of the destination).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/paged_kv_layout.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace lmc {
namespace copy_detail {

// Bytes of chunk buffer per work item; large enough to amortise scheduling, small enough to
// balance two threads on a 1K-token chunk.
constexpr int64_t kItemBytes = int64_t{256} << 10;
// Smallest copy that is worth waking the worker threads for.
constexpr int64_t kParallelBytes = int64_t{512} << 10;
// Runs at least this long use non-temporal stores (the destination will not be read soon and
// streaming stores skip the read-for-ownership of every destination line).
constexpr int64_t kStreamBytes = 4096;
// Staging buffer of the transposed path, per thread: gather stages one [head_size, run] tile
// (4 KiB for 128 x 16 bf16), scatter a whole run's rows (32 KiB for llama3-8b); larger ones
// are transposed in place.
constexpr int64_t kStageBytes = int64_t{64} << 10;

// ---- AVX2 path of the transposed scatter (paged_kv_copy_avx2_cpu.cpp) ----------------------

// Whether this CPU has AVX2 / whether the copies use it now (default: when supported, unless
// LMC_COPY_ISA=sse2 at start-up); copy_set_avx2 switches it (tests and benchmarks).
bool copy_avx2_supported();
bool copy_avx2_enabled();
void copy_set_avx2(bool on);

// Scatters a run of n tokens' rows (row_elems apart; head h's dims at h * d_n) into a kv side
// stored transposed: head h's tile at dst + h * hs, dim d's n tokens at d * ds. Returns false
// (nothing written) unless d_n and n are multiples of 16; stage holds kStageBytes.
bool scatter_transposed_u16_avx2(const uint16_t* rows, int64_t row_elems, uint16_t* dst,
                                 int64_t hs, int64_t ds, int64_t num_heads, int64_t d_n,
                                 int64_t n, uint16_t* stage);

// dst[c * ds + r] = src[r * ss + c] for r < rows, c < cols of 4-byte words in 8x8 AVX2 tiles.
// Returns false (nothing written) unless rows and cols are multiples of 8.
bool transpose_u32_avx2(const uint32_t* src, int64_t ss, uint32_t* dst, int64_t ds, int64_t rows,
                        int64_t cols);

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

#if defined(__SSE2__)
// n bytes (a multiple of 64) as streaming stores; dst 16-byte aligned, src any alignment.
inline void stream_lines(char* LMC_RESTRICT dst, const char* LMC_RESTRICT src, int64_t n) {
  for (int64_t o = 0; o < n; o += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + o));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + o + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + o + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + o + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + o), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + o + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + o + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + o + 48), d);
  }
}
#endif

// Copies bytes; long copies use streaming stores when both ends allow it.
inline void copy_bytes(char* LMC_RESTRICT dst, const char* LMC_RESTRICT src, int64_t n) {
#if defined(__SSE2__)
  if (n >= kStreamBytes && (reinterpret_cast<uintptr_t>(dst) & 15) == 0 && (n & 63) == 0) {
    stream_lines(dst, src, n);
    return;
  }
#endif
  std::memcpy(dst, src, static_cast<size_t>(n));
}

// rows x row_bytes from src (rows src_stride bytes apart) to dst (rows dst_stride bytes apart);
// whole 64-byte lines go out as streaming stores when every row allows it.
inline void copy_rows(char* LMC_RESTRICT dst, int64_t dst_stride, const char* LMC_RESTRICT src,
                      int64_t src_stride, int64_t rows, int64_t row_bytes) {
#if defined(__SSE2__)
  if ((row_bytes & 63) == 0 && ((reinterpret_cast<uintptr_t>(dst) | dst_stride) & 63) == 0) {
    for (int64_t r = 0; r < rows; ++r, dst += dst_stride, src += src_stride) {
      stream_lines(dst, src, row_bytes);
    }
    return;
  }
#endif
  for (int64_t r = 0; r < rows; ++r, dst += dst_stride, src += src_stride) {
    std::memcpy(dst, src, static_cast<size_t>(row_bytes));
  }
}

// Orders the streaming stores of this thread before the caller returns.
inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols (in elements).
template <typename Word>
void transpose(const Word* LMC_RESTRICT src, int64_t src_stride, Word* LMC_RESTRICT dst,
               int64_t dst_stride, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
  }
}

#if defined(__SSE2__)
// 8x8 tiles of 2-byte words: 8 row loads, three rounds of unpacks, 8 column stores.
inline void transpose8x8_u16(const uint16_t* src, int64_t ss, uint16_t* dst, int64_t ds) {
  const auto ld = [&](int i) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * ss));
  };
  const __m128i r0 = ld(0), r1 = ld(1), r2 = ld(2), r3 = ld(3);
  const __m128i r4 = ld(4), r5 = ld(5), r6 = ld(6), r7 = ld(7);
  const __m128i t0 = _mm_unpacklo_epi16(r0, r1), t1 = _mm_unpackhi_epi16(r0, r1);
  const __m128i t2 = _mm_unpacklo_epi16(r2, r3), t3 = _mm_unpackhi_epi16(r2, r3);
  const __m128i t4 = _mm_unpacklo_epi16(r4, r5), t5 = _mm_unpackhi_epi16(r4, r5);
  const __m128i t6 = _mm_unpacklo_epi16(r6, r7), t7 = _mm_unpackhi_epi16(r6, r7);
  const __m128i u0 = _mm_unpacklo_epi32(t0, t2), u1 = _mm_unpackhi_epi32(t0, t2);
  const __m128i u2 = _mm_unpacklo_epi32(t1, t3), u3 = _mm_unpackhi_epi32(t1, t3);
  const __m128i u4 = _mm_unpacklo_epi32(t4, t6), u5 = _mm_unpackhi_epi32(t4, t6);
  const __m128i u6 = _mm_unpacklo_epi32(t5, t7), u7 = _mm_unpackhi_epi32(t5, t7);
  const auto st = [&](int i, __m128i v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i * ds), v);
  };
  st(0, _mm_unpacklo_epi64(u0, u4));
  st(1, _mm_unpackhi_epi64(u0, u4));
  st(2, _mm_unpacklo_epi64(u1, u5));
  st(3, _mm_unpackhi_epi64(u1, u5));
  st(4, _mm_unpacklo_epi64(u2, u6));
  st(5, _mm_unpackhi_epi64(u2, u6));
  st(6, _mm_unpacklo_epi64(u3, u7));
  st(7, _mm_unpackhi_epi64(u3, u7));
}

// 4x4 tiles of 4-byte words.
inline void transpose4x4_u32(const uint32_t* src, int64_t ss, uint32_t* dst, int64_t ds) {
  const auto ld = [&](int i) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * ss));
  };
  const __m128i r0 = ld(0), r1 = ld(1), r2 = ld(2), r3 = ld(3);
  const __m128i t0 = _mm_unpacklo_epi32(r0, r1), t1 = _mm_unpackhi_epi32(r0, r1);
  const __m128i t2 = _mm_unpacklo_epi32(r2, r3), t3 = _mm_unpackhi_epi32(r2, r3);
  const auto st = [&](int i, __m128i v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i * ds), v);
  };
  st(0, _mm_unpacklo_epi64(t0, t2));
  st(1, _mm_unpackhi_epi64(t0, t2));
  st(2, _mm_unpacklo_epi64(t1, t3));
  st(3, _mm_unpackhi_epi64(t1, t3));
}

// Tiles of kTile x kTile through `tile_fn`, scalar edges.
template <int kTile, typename Word, typename TileFn>
void transpose_tiled(const Word* LMC_RESTRICT src, int64_t ss, Word* LMC_RESTRICT dst, int64_t ds,
                     int64_t rows, int64_t cols, TileFn tile_fn) {
  const int64_t rows_t = rows - rows % kTile;
  const int64_t cols_t = cols - cols % kTile;
  for (int64_t r = 0; r < rows_t; r += kTile) {
    for (int64_t c = 0; c < cols_t; c += kTile) tile_fn(src + r * ss + c, ss, dst + c * ds + r, ds);
    for (int64_t c = cols_t; c < cols; ++c) {
      for (int64_t k = 0; k < kTile; ++k) dst[c * ds + r + k] = src[(r + k) * ss + c];
    }
  }
  for (int64_t r = rows_t; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * ds + r] = src[r * ss + c];
  }
}

template <>
inline void transpose<uint16_t>(const uint16_t* LMC_RESTRICT src, int64_t ss,
                                uint16_t* LMC_RESTRICT dst, int64_t ds, int64_t rows,
                                int64_t cols) {
  transpose_tiled<8>(src, ss, dst, ds, rows, cols, transpose8x8_u16);
}

template <>
inline void transpose<uint32_t>(const uint32_t* LMC_RESTRICT src, int64_t ss,
                                uint32_t* LMC_RESTRICT dst, int64_t ds, int64_t rows,
                                int64_t cols) {
  transpose_tiled<4>(src, ss, dst, ds, rows, cols, transpose4x4_u32);
}
#endif  // __SSE2__

// Element offset of slot's (head 0, dim 0) for one kv side, from the kv side's base.
LMC_INLINE int64_t token_offset(const PagedKVLayout& l, int kv, int64_t slot) {
  const int64_t block = slot / l.block_size;
  return block * l.block_stride[kv] + (slot - block * l.block_size) * l.token_stride[kv];
}

// Length of the run of tokens from i on whose slots follow each other inside one block
// (stops at t1, at padding, at a gap and at the block's end). slots[i] must not be -1.
template <typename SlotT>
LMC_INLINE int64_t block_run(const SlotT* slots, int64_t i, int64_t t1, int64_t block_size) {
  const int64_t s = static_cast<int64_t>(slots[i]);
  const int64_t room = block_size - s % block_size;
  int64_t n = 1;
  while (n < room && i + n < t1 && static_cast<int64_t>(slots[i + n]) == s + n) ++n;
  return n;
}

// Layouts whose rows are contiguous (flash_attn, flashinfer, mla): per kv side, runs of tokens
// whose rows are adjacent in the cache become one copy (usually a whole block or more).
template <bool kGather, typename SlotT>
void copy_rows_item(char* cache, char* rows, const PagedKVLayout& l, int kv, const SlotT* slots,
                    int64_t t0, int64_t t1) {
  const int64_t es = l.elem_size;
  const int64_t row_elems = l.row_elems();
  const int64_t row_bytes = l.row_bytes();
  int64_t i = t0;
  while (i < t1) {
    const int64_t s = static_cast<int64_t>(slots[i]);
    if (s == -1) {
      ++i;
      continue;
    }
    const int64_t off = token_offset(l, kv, s);
    int64_t n = 1;
    while (i + n < t1) {
      const int64_t s2 = static_cast<int64_t>(slots[i + n]);
      if (s2 == -1 || token_offset(l, kv, s2) != off + n * row_elems) break;
      ++n;
    }
    if (kGather) {
      copy_bytes(rows + i * row_bytes, cache + off * es, n * row_bytes);
    } else {
      copy_bytes(cache + off * es, rows + i * row_bytes, n * row_bytes);
    }
    i += n;
  }
}

// Element-by-element piece of one head for a run of n tokens (any strides).
template <bool kGather, typename Word>
void copy_piece_scalar(Word* cache, int64_t ts, int64_t ds, Word* row, int64_t row_elems,
                       int64_t n, int64_t d_n) {
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t d = 0; d < d_n; ++d) {
      if (kGather) {
        row[j * row_elems + d] = cache[j * ts + d * ds];
      } else {
        cache[j * ts + d * ds] = row[j * row_elems + d];
      }
    }
  }
}

// Per-thread tables of a packed layout: dim_part(kv, d) for every dim of each kv side, and
// whether the side is moved as 32-bit words (PagedKVLayout::words_transposed).
struct PackedTables {
  std::vector<int64_t> dim_off[2];
  bool words[2] = {false, false};  // words_transposed
  bool pairs[2] = {false, false};  // token_pairs_interleaved
  int64_t run[2] = {1, 1};         // dim_run
};

inline PackedTables packed_tables(const PagedKVLayout& l) {
  PackedTables t;
  for (int kv = 0; kv < l.num_kv; ++kv) {
    if (!l.packed(kv)) continue;
    t.dim_off[kv].resize(static_cast<size_t>(l.head_size));
    for (int64_t d = 0; d < l.head_size; ++d) t.dim_off[kv][d] = l.dim_part(kv, d);
    t.words[kv] = l.words_transposed(kv);
    t.pairs[kv] = l.token_pairs_interleaved(kv);
    t.run[kv] = l.dim_run(kv);
  }
  return t;
}

// One token's head vector of a packed kv side, element by element through the dim table.
template <bool kGather, typename Word>
LMC_INLINE void copy_token_packed(Word* tok, const int64_t* doff, Word* r, int64_t d_n) {
  for (int64_t d = 0; d < d_n; ++d) {
    if (kGather) {
      r[d] = tok[doff[d]];
    } else {
      tok[doff[d]] = r[d];
    }
  }
}

// token_pairs_interleaved sides (vllm_cpu_amx's bf16/fp16 V): each pair of tokens (even offset,
// odd offset) of a dim group is a run of 2-byte words interleaved token by token; 8 dims of
// the pair (two 16-byte vectors) are split into the two rows by SSE2 shifts and packs, and
// joined back by unpacks. A run's odd first or last token goes element by element.
// kStream (gather only): the rows are written with streaming stores (16-byte aligned rows).
template <bool kGather, bool kStream = false>
void copy_pairs_u16(const PagedKVLayout& l, int kv, const int64_t* doff, uint16_t* head,
                    int64_t o0, int64_t n, uint16_t* row, int64_t row_elems) {
  const int64_t d_n = l.head_size;
  const int64_t group = l.dim_group[kv];
  int64_t j = 0;
  if (o0 % 2 != 0) {
    copy_token_packed<kGather>(head + l.token_part(kv, o0), doff, row, d_n);
    j = 1;
  }
  for (; j + 1 < n; j += 2) {
    uint16_t* pair = head + l.token_part(kv, o0 + j);
    uint16_t* r0 = row + j * row_elems;
    uint16_t* r1 = r0 + row_elems;
    for (int64_t g = 0; g < d_n; g += group) {
      uint16_t* line = pair + l.dim_part(kv, g);
      for (int64_t k = 0; k < group; k += 8) {
#if defined(__SSE2__)
        __m128i* lo = reinterpret_cast<__m128i*>(line + 2 * k);
        __m128i* hi = reinterpret_cast<__m128i*>(line + 2 * k + 8);
        __m128i* a = reinterpret_cast<__m128i*>(r0 + g + k);
        __m128i* b = reinterpret_cast<__m128i*>(r1 + g + k);
        if (kGather) {
          const __m128i x0 = _mm_loadu_si128(lo), x1 = _mm_loadu_si128(hi);
          // Sign-extended 16-bit halves pack back without saturation: the bits are kept.
          const __m128i even = _mm_packs_epi32(_mm_srai_epi32(_mm_slli_epi32(x0, 16), 16),
                                               _mm_srai_epi32(_mm_slli_epi32(x1, 16), 16));
          const __m128i odd = _mm_packs_epi32(_mm_srai_epi32(x0, 16), _mm_srai_epi32(x1, 16));
          if (kStream) {
            _mm_stream_si128(a, even);
            _mm_stream_si128(b, odd);
          } else {
            _mm_storeu_si128(a, even);
            _mm_storeu_si128(b, odd);
          }
        } else {
          const __m128i x = _mm_loadu_si128(a), y = _mm_loadu_si128(b);
          _mm_storeu_si128(lo, _mm_unpacklo_epi16(x, y));
          _mm_storeu_si128(hi, _mm_unpackhi_epi16(x, y));
        }
#else
        for (int64_t e = 0; e < 8; ++e) {
          if (kGather) {
            r0[g + k + e] = line[2 * (k + e)];
            r1[g + k + e] = line[2 * (k + e) + 1];
          } else {
            line[2 * (k + e)] = r0[g + k + e];
            line[2 * (k + e) + 1] = r1[g + k + e];
          }
        }
#endif
      }
    }
  }
  if (j < n) copy_token_packed<kGather>(head + l.token_part(kv, o0 + j), doff, row + j * row_elems, d_n);
}

// One head's piece of a packed kv side for n tokens from block offset o0 (inside one block):
// head points at (block, offset 0, head, dim 0), row at the first token's head vector.
template <bool kGather, typename Word>
void copy_piece_packed(const PagedKVLayout& l, int kv, const PackedTables& t, Word* head,
                       int64_t o0, int64_t n, Word* row, int64_t row_elems,
                       Word* stage = nullptr) {
  const int64_t d_n = l.head_size;
  if constexpr (sizeof(Word) <= 4) {
    if (t.words[kv]) {
      // Word w of token o at word (o / G) * (token_stride / p) + (o % G) + w * (dim_stride / p).
      const int64_t p = 4 / static_cast<int64_t>(sizeof(Word));
      const int64_t group = l.token_group[kv];
      const int64_t words = d_n / p;
      const int64_t ws = l.word_stride(kv);
      const int64_t row_words = row_elems / p;
      for (int64_t j = 0; j < n;) {
        const int64_t o = o0 + j;
        const int64_t take = std::min(n - j, group - o % group);
        // NOTE: rows are 4-byte aligned here (head_size and row_elems are multiples of p).
        auto* cache = reinterpret_cast<uint32_t*>(head + l.token_part(kv, o));
        auto* rows = reinterpret_cast<uint32_t*>(row + j * row_elems);
        const bool avx2 = copy_avx2_enabled();
        if (!kGather && take == group && stage != nullptr &&
            group * words * 4 <= kStageBytes) {
          // A whole token group is one contiguous [words, group] stretch of the cache: built in
          // the L1 stage, then written out as whole lines (streaming stores).
          auto* tile = reinterpret_cast<uint32_t*>(stage);
          if (!avx2 || !transpose_u32_avx2(rows, row_words, tile, group, take, words)) {
            transpose<uint32_t>(rows, row_words, tile, group, take, words);
          }
          if (ws == group) {
            copy_bytes(reinterpret_cast<char*>(cache), reinterpret_cast<const char*>(tile),
                       group * words * 4);
          } else {
            copy_rows(reinterpret_cast<char*>(cache), ws * 4, reinterpret_cast<const char*>(tile),
                      group * 4, words, group * 4);
          }
          j += take;
          continue;
        }
        if (kGather) {
          if (!avx2 || !transpose_u32_avx2(cache, ws, rows, row_words, words, take)) {
            transpose<uint32_t>(cache, ws, rows, row_words, words, take);
          }
        } else if (!avx2 || !transpose_u32_avx2(rows, row_words, cache, ws, take, words)) {
          transpose<uint32_t>(rows, row_words, cache, ws, take, words);
        }
        j += take;
      }
      return;
    }
  }
  const int64_t* doff = t.dim_off[kv].data();
  if constexpr (sizeof(Word) == 2) {
    if (!kGather && t.pairs[kv] && stage != nullptr && o0 == 0 && n == l.block_size &&
        l.dim_stride[kv] == l.block_size * l.dim_group[kv] &&
        l.token_stride[kv] == 2 * l.dim_group[kv] && n * d_n * 2 <= kStageBytes) {
      // A whole block's side of one head is one contiguous stretch: interleaved in the L1
      // stage, then written out as whole lines (streaming stores).
      copy_pairs_u16<false>(l, kv, doff, reinterpret_cast<uint16_t*>(stage), 0, n,
                            reinterpret_cast<uint16_t*>(row), row_elems);
      copy_bytes(reinterpret_cast<char*>(head), reinterpret_cast<const char*>(stage),
                 n * d_n * 2);
      return;
    }
    if (t.pairs[kv]) {
      copy_pairs_u16<kGather>(l, kv, doff, reinterpret_cast<uint16_t*>(head), o0, n,
                              reinterpret_cast<uint16_t*>(row), row_elems);
      return;
    }
  }
  const int64_t run = t.run[kv];
  if (run > 1) {
    // Runs of `run` dims contiguous per token (vllm_cpu_amx's fp32 V: 64-byte pieces).
    const int64_t run_bytes = run * static_cast<int64_t>(sizeof(Word));
    for (int64_t j = 0; j < n; ++j) {
      Word* tok = head + l.token_part(kv, o0 + j);
      Word* r = row + j * row_elems;
      for (int64_t d = 0; d < d_n; d += run) {
        if (kGather) {
          std::memcpy(r + d, tok + doff[d], static_cast<size_t>(run_bytes));
        } else {
          std::memcpy(tok + doff[d], r + d, static_cast<size_t>(run_bytes));
        }
      }
    }
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    copy_token_packed<kGather>(head + l.token_part(kv, o0 + j), doff, row + j * row_elems, d_n);
  }
}

// Per-head layouts (hnd, vllm_cpu, strided views), gather: for each run of tokens inside one
// block and each head, every kv side's piece in turn, so the cache is read in address order
// (vllm_cpu keeps a (block, head)'s K and V next to each other). A piece is a strided 2-D copy
// of the run's head vectors when dims are contiguous (dim_stride 1), a [head_size, run] ->
// [run, head_size] transpose when tokens are (token_stride 1: vllm_cpu's K), else scalar.
template <typename Word, typename SlotT>
void gather_heads_item(char* const* cache, char* const* rows, const PagedKVLayout& l,
                       const PackedTables& pt, const SlotT* slots, int64_t t0, int64_t t1,
                       Word* stage) {
  const int64_t es = l.elem_size;
  const int64_t d_n = l.head_size;
  const int64_t head_bytes = d_n * es;
  const int64_t row_elems = l.row_elems();
  const int64_t row_bytes = l.row_bytes();
  // NOTE: a transposed piece goes through the L1 staging tile so the chunk rows are written as
  // whole lines with streaming stores; transposed words stored straight to memory stall on a
  // read-for-ownership of every destination line.
  const bool staged = d_n * l.block_size * es <= kStageBytes;
  int64_t i = t0;
  while (i < t1) {
    const int64_t s = static_cast<int64_t>(slots[i]);
    if (s == -1) {
      ++i;
      continue;
    }
    const int64_t n = block_run(slots, i, t1, l.block_size);
    for (int64_t h = 0; h < l.num_heads; ++h) {
      for (int kv = 0; kv < l.num_kv; ++kv) {
        const int64_t ts = l.token_stride[kv];
        const int64_t ds = l.dim_stride[kv];
        Word* row = reinterpret_cast<Word*>(rows[kv] + i * row_bytes) + h * d_n;
        if (l.packed(kv)) {
          const int64_t block = s / l.block_size;
          Word* head = reinterpret_cast<Word*>(cache[kv]) + block * l.block_stride[kv] +
                       h * l.head_stride[kv];
          const int64_t o0 = s - block * l.block_size;
#if defined(__SSE2__)
          if constexpr (sizeof(Word) == 2) {
            if (pt.pairs[kv] && ((reinterpret_cast<uintptr_t>(row) | row_bytes) & 15) == 0) {
              // Whole 16-byte pieces of the rows: streamed straight out, no staging pass.
              copy_pairs_u16<true, true>(l, kv, pt.dim_off[kv].data(),
                                         reinterpret_cast<uint16_t*>(head), o0, n,
                                         reinterpret_cast<uint16_t*>(row), row_elems);
              continue;
            }
          }
#endif
          if (n * head_bytes <= kStageBytes) {
            // Through the L1 stage, so the chunk rows leave as whole lines (streaming stores).
            copy_piece_packed<true>(l, kv, pt, head, o0, n, stage, d_n);
            copy_rows(reinterpret_cast<char*>(row), row_bytes, reinterpret_cast<char*>(stage),
                      head_bytes, n, head_bytes);
          } else {
            copy_piece_packed<true>(l, kv, pt, head, o0, n, row, row_elems);
          }
          continue;
        }
        Word* src = reinterpret_cast<Word*>(cache[kv]) + token_offset(l, kv, s) +
                    h * l.head_stride[kv];
        if (ds == 1) {
          copy_rows(reinterpret_cast<char*>(row), row_bytes, reinterpret_cast<char*>(src),
                    ts * es, n, head_bytes);
        } else if (ts == 1 && staged) {
          transpose<Word>(src, ds, stage, d_n, d_n, n);
          copy_rows(reinterpret_cast<char*>(row), row_bytes, reinterpret_cast<char*>(stage),
                    head_bytes, n, head_bytes);
        } else if (ts == 1) {
          transpose<Word>(src, ds, row, row_elems, d_n, n);
        } else {
          copy_piece_scalar<true>(src, ts, ds, row, row_elems, n, d_n);
        }
      }
    }
    i += n;
  }
}

// Per-head layouts, scatter: the chunk rows of each run are read in address order (token by
// token) and the cache pieces written with streaming stores. For a kv side with contiguous
// dims, each token's row is split over the heads; for a transposed side (token_stride 1) the
// run's rows are transposed into the staging buffer ([num_heads * head_size, run]) and each
// head's [head_size, run] tile written out, in one contiguous stretch when the run is a whole
// block. NOTE: reading a head_bytes slice of every row per head (head-major, as gather does)
// runs at about half the speed: the chunk is then read with a row_bytes stride.
template <typename Word, typename SlotT>
void scatter_heads_item(char* const* cache, char* const* rows, const PagedKVLayout& l,
                        const PackedTables& pt, const SlotT* slots, int64_t t0, int64_t t1,
                        Word* stage) {
  const int64_t es = l.elem_size;
  const int64_t d_n = l.head_size;
  const int64_t head_bytes = d_n * es;
  const int64_t row_elems = l.row_elems();
  const int64_t row_bytes = l.row_bytes();
  int64_t i = t0;
  while (i < t1) {
    const int64_t s = static_cast<int64_t>(slots[i]);
    if (s == -1) {
      ++i;
      continue;
    }
    const int64_t n = block_run(slots, i, t1, l.block_size);
    for (int kv = 0; kv < l.num_kv; ++kv) {
      const int64_t ts = l.token_stride[kv];
      const int64_t ds = l.dim_stride[kv];
      const int64_t hs = l.head_stride[kv];
      Word* row = reinterpret_cast<Word*>(rows[kv] + i * row_bytes);
      if (l.packed(kv)) {
        const int64_t block = s / l.block_size;
        Word* blk = reinterpret_cast<Word*>(cache[kv]) + block * l.block_stride[kv];
        for (int64_t h = 0; h < l.num_heads; ++h) {
          copy_piece_packed<false>(l, kv, pt, blk + h * hs, s - block * l.block_size, n,
                                   row + h * d_n, row_elems, stage);
        }
        continue;
      }
      Word* dst = reinterpret_cast<Word*>(cache[kv]) + token_offset(l, kv, s);
      if (ds == 1) {
        for (int64_t j = 0; j < n; ++j) {
          copy_rows(reinterpret_cast<char*>(dst + j * ts), hs * es,
                    reinterpret_cast<char*>(row + j * row_elems), head_bytes, l.num_heads,
                    head_bytes);
        }
      } else if (ts == 1) {
        if constexpr (sizeof(Word) == 2) {
          if (copy_avx2_enabled() &&
              scatter_transposed_u16_avx2(reinterpret_cast<const uint16_t*>(row), row_elems,
                                          reinterpret_cast<uint16_t*>(dst), hs, ds, l.num_heads,
                                          d_n, n, reinterpret_cast<uint16_t*>(stage))) {
            continue;
          }
        }
        // Heads in groups whose [group * head_size, n] transpose fits the staging buffer.
        const int64_t group = kStageBytes / (d_n * n * es);
        for (int64_t h0 = 0; h0 < l.num_heads; h0 += std::max<int64_t>(group, 1)) {
          if (group == 0) {
            transpose<Word>(row + h0 * d_n, row_elems, dst + h0 * hs, ds, n, d_n);
            continue;
          }
          const int64_t g = std::min(group, l.num_heads - h0);
          transpose<Word>(row + h0 * d_n, row_elems, stage, n, n, g * d_n);  // [g * d_n, n]
          for (int64_t h = 0; h < g; ++h) {
            const char* tile = reinterpret_cast<const char*>(stage + h * d_n * n);
            char* out = reinterpret_cast<char*>(dst + (h0 + h) * hs);
            if (ds == n) {
              copy_bytes(out, tile, n * head_bytes);
            } else {
              copy_rows(out, ds * es, tile, n * es, d_n, n * es);
            }
          }
        }
      } else {
        for (int64_t h = 0; h < l.num_heads; ++h) {
          copy_piece_scalar<false>(dst + h * hs, ts, ds, row + h * d_n, row_elems, n, d_n);
        }
      }
    }
    i += n;
  }
}

// The chunk buffers of one copy: chunk c holds tokens [token_begin[c], token_begin[c + 1]) of
// the slot mapping, at `ptr[c]` ([num_kv, num_layers, token_begin[c + 1] - token_begin[c], row]).
struct ChunkList {
  char* const* ptr;            // [num_chunks]
  const int64_t* token_begin;  // [num_chunks + 1], token_begin[0] = 0
  int64_t num_chunks;
};

template <bool kGather, typename Word, typename SlotT>
void copy_all(const void* const* layer_ptrs, int64_t num_layers, const PagedKVLayout& l,
              const SlotT* slots, const ChunkList& chunks) {
  const int64_t row_bytes = l.row_bytes();
  const bool rows_layout = l.row_contiguous(0) && (l.num_kv == 1 || l.row_contiguous(1));
  // Items are (kv, layer, tile) for row layouts and (layer, tile) covering both kv sides
  // otherwise, where the tiles are those of every chunk in token order, so a thread's slice
  // stays on one layer's cache across the chunks; a tile holds about kItemBytes of one chunk's
  // rows per kv side. NOTE: (chunk, kv, layer, tile) order, which switches layers every chunk,
  // measured 5-8% slower for 32 chunks of 256 llama3-8b tokens than one 8K-token chunk; this
  // order matches the one-chunk speed.
  const int64_t tile = std::max<int64_t>(16, (kItemBytes + row_bytes - 1) / row_bytes);
  const int64_t groups = rows_layout ? l.num_kv * num_layers : num_layers;
  // tile_begin[c]: first tile of chunk c in the concatenation of all chunks' tiles.
  std::vector<int64_t> tile_begin(static_cast<size_t>(chunks.num_chunks) + 1, 0);
  for (int64_t c = 0; c < chunks.num_chunks; ++c) {
    const int64_t n = chunks.token_begin[c + 1] - chunks.token_begin[c];
    tile_begin[c + 1] = tile_begin[c] + (n + tile - 1) / tile;
  }
  const int64_t total_tiles = tile_begin.back();
  const int64_t num_items = groups * total_tiles;
  const int64_t num_tokens = chunks.token_begin[chunks.num_chunks];
  const int64_t total_bytes = l.num_kv * num_layers * num_tokens * row_bytes;
  const int64_t grain = total_bytes < kParallelBytes ? num_items : 1;
  const auto layer_base = [&](int64_t layer, int kv) {
    return static_cast<char*>(const_cast<void*>(layer_ptrs[layer])) +
           l.kv_offset[kv] * l.elem_size;
  };
  parallel_for(num_items, grain, [&](int64_t begin, int64_t end) {
    // NOTE: default-initialised (not zeroed): every element read was written first.
    std::unique_ptr<Word[]> stage(rows_layout ? nullptr : new Word[kStageBytes / sizeof(Word)]);
    PackedTables tables;
    if (l.any_packed()) tables = packed_tables(l);
    for (int64_t it = begin; it < end; ++it) {
      const int64_t g = it / total_tiles;
      const int64_t k = it % total_tiles;
      const int64_t c = std::upper_bound(tile_begin.begin(), tile_begin.end(), k) -
                        tile_begin.begin() - 1;
      const int64_t first = chunks.token_begin[c];
      const int64_t n = chunks.token_begin[c + 1] - first;
      const int64_t t0 = (k - tile_begin[c]) * tile;
      const int64_t t1 = std::min(n, t0 + tile);
      const SlotT* chunk_slots = slots + first;
      const auto chunk_rows = [&](int64_t layer, int kv) {
        return chunks.ptr[c] + (kv * num_layers + layer) * n * row_bytes;
      };
      if (rows_layout) {
        const int kv = static_cast<int>(g / num_layers);
        const int64_t layer = g % num_layers;
        copy_rows_item<kGather>(layer_base(layer, kv), chunk_rows(layer, kv), l, kv, chunk_slots,
                                t0, t1);
      } else {
        char* cache[2] = {layer_base(g, 0), layer_base(g, l.num_kv - 1)};
        char* rows[2] = {chunk_rows(g, 0), chunk_rows(g, l.num_kv - 1)};
        if (kGather) {
          gather_heads_item<Word>(cache, rows, l, tables, chunk_slots, t0, t1, stage.get());
        } else {
          scatter_heads_item<Word>(cache, rows, l, tables, chunk_slots, t0, t1, stage.get());
        }
      }
    }
    store_fence();
  });
}

template <bool kGather, typename SlotT>
void copy_slots(const void* const* layer_ptrs, int64_t num_layers, const PagedKVLayout& l,
                const SlotT* slots, const ChunkList& chunks) {
  validate_slots(slots, chunks.token_begin[chunks.num_chunks], l.num_slots());
  switch (l.elem_size) {
    case 1: return copy_all<kGather, uint8_t>(layer_ptrs, num_layers, l, slots, chunks);
    case 2: return copy_all<kGather, uint16_t>(layer_ptrs, num_layers, l, slots, chunks);
    case 4: return copy_all<kGather, uint32_t>(layer_ptrs, num_layers, l, slots, chunks);
    case 8: return copy_all<kGather, uint64_t>(layer_ptrs, num_layers, l, slots, chunks);
    default:
      throw std::invalid_argument(
          detail::concat("layout elem_size must be 1, 2, 4 or 8 bytes, got ", l.elem_size));
  }
}

// Entry shared by both CPU twins (one chunk buffer or many): argument checks, slot validation
// (before any write), copy. chunk_tokens[c] is the token count of chunks[c]; they must add up
// to num_tokens (the chunks take the slot mapping's tokens in order).
template <bool kGather>
void paged_kv_copy_cpu(const void* const* layer_ptrs, int64_t num_layers, const PagedKVLayout& l,
                       const void* slot_mapping, int64_t slot_elem_size, int64_t num_tokens,
                       void* const* chunks, const int64_t* chunk_tokens, int64_t num_chunks) {
  LMC_CHECK_ARG(slot_elem_size == 4 || slot_elem_size == 8,
                "slot_mapping element size must be 4 (int32) or 8 (int64) bytes, got ",
                slot_elem_size);
  LMC_CHECK_ARG(num_layers >= 0, "num_layers must be >= 0, got ", num_layers);
  LMC_CHECK_ARG(num_tokens >= 0, "num_tokens must be >= 0, got ", num_tokens);
  LMC_CHECK_ARG(num_chunks >= 0, "num_chunks must be >= 0, got ", num_chunks);
  LMC_CHECK_ARG(num_chunks == 0 || (chunks != nullptr && chunk_tokens != nullptr),
                "null chunk list passed to paged KV copy");
  std::vector<int64_t> token_begin(static_cast<size_t>(num_chunks) + 1, 0);
  for (int64_t c = 0; c < num_chunks; ++c) {
    LMC_CHECK_ARG(chunk_tokens[c] >= 0, "chunk ", c, " has ", chunk_tokens[c], " tokens");
    LMC_CHECK_ARG(chunk_tokens[c] == 0 || chunks[c] != nullptr, "chunk ", c,
                  " has a null data pointer");
    token_begin[c + 1] = token_begin[c] + chunk_tokens[c];
  }
  LMC_CHECK_ARG(token_begin.back() == num_tokens, "the chunks hold ", token_begin.back(),
                " tokens in all, but slot_mapping has ", num_tokens);
  if (num_layers == 0 || num_tokens == 0) return;
  LMC_CHECK_ARG(layer_ptrs != nullptr && slot_mapping != nullptr,
                "null pointer passed to paged KV copy");
  const ChunkList list{reinterpret_cast<char* const*>(chunks), token_begin.data(), num_chunks};
  if (slot_elem_size == 8) {
    copy_slots<kGather>(layer_ptrs, num_layers, l, static_cast<const int64_t*>(slot_mapping),
                        list);
  } else {
    copy_slots<kGather>(layer_ptrs, num_layers, l, static_cast<const int32_t*>(slot_mapping),
                        list);
  }
}

}  // namespace copy_detail
}  // namespace lmc
