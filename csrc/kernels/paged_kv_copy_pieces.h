// Per-head pieces of the CPU copy twins (internal header): one head of one kv side for a run
// of tokens inside one block, in either direction, for every layout the core describes
// (paged_kv_layout.h): strided 2-D copies, tile transposes (vllm_cpu's K), packed two-level
// sides (vllm_cpu_amx: 32-bit word transposes, token-pair (de)interleaves, dim runs, else the
// layout's own index math through a per-thread dim table). gather_piece is also what the CPU
// MD5 twin reads transposed and packed sides through.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/paged_kv_copy_mem.h"
#include "kernels/paged_kv_layout.h"
#include "kernels/tile_transpose.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace lmc {
namespace copy_detail {

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
bool scatter_transposed_u16_avx2(const uint16_t* rows, int64_t row_elems, uint16_t* dst, int64_t hs,
                                 int64_t ds, int64_t num_heads, int64_t d_n, int64_t n,
                                 uint16_t* stage);

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

// Calls fn(i, slot, n) for each block_run of n tokens from token i in [t0, t1), skipping
// padding.
template <typename SlotT, typename Fn>
void for_each_block_run(const SlotT* slots, int64_t t0, int64_t t1, int64_t block_size, Fn&& fn) {
  for (int64_t i = t0; i < t1;) {
    const int64_t s = static_cast<int64_t>(slots[i]);
    if (s == -1) {
      ++i;
      continue;
    }
    const int64_t n = block_run(slots, i, t1, block_size);
    fn(i, s, n);
    i += n;
  }
}

// Element-by-element piece of one head for a run of n tokens (any strides).
template <bool kGather, typename Word>
void copy_piece_scalar(Word* cache, int64_t ts, int64_t ds, Word* row, int64_t row_elems, int64_t n,
                       int64_t d_n) {
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
void copy_pairs_u16(const PagedKVLayout& l, int kv, const int64_t* doff, uint16_t* head, int64_t o0,
                    int64_t n, uint16_t* row, int64_t row_elems) {
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
  if (j < n)
    copy_token_packed<kGather>(head + l.token_part(kv, o0 + j), doff, row + j * row_elems, d_n);
}

// One head's piece of a packed kv side for n tokens from block offset o0 (inside one block):
// head points at (block, offset 0, head, dim 0), row at the first token's head vector.
template <bool kGather, typename Word>
void copy_piece_packed(const PagedKVLayout& l, int kv, const PackedTables& t, Word* head,
                       int64_t o0, int64_t n, Word* row, int64_t row_elems, Word* stage = nullptr) {
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
        if (!kGather && take == group && stage != nullptr && group * words * 4 <= kStageBytes) {
          // A whole token group is one contiguous [words, group] stretch of the cache: built in
          // the L1 stage, then written out as whole lines (streaming stores).
          auto* tile = reinterpret_cast<uint32_t*>(stage);
          transpose_any<uint32_t>(rows, row_words, tile, group, take, words, avx2);
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
          transpose_any<uint32_t>(cache, ws, rows, row_words, words, take, avx2);
        } else {
          transpose_any<uint32_t>(rows, row_words, cache, ws, take, words, avx2);
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
      copy_bytes(reinterpret_cast<char*>(head), reinterpret_cast<const char*>(stage), n * d_n * 2);
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

// Gathers one head's piece of kv side kv for n tokens from offset o0 of block `block` (inside
// the block) into rows [n, row_elems] at row: packed sides through copy_piece_packed, dims
// contiguous as a strided 2-D copy, tokens contiguous (vllm_cpu's K) as a [head_size, n] tile
// transpose (AVX2 tiles when avx2), else element by element. side: layer base + kv_offset.
// Plain stores: the caller streams the result out or reads it back (the MD5 tiles).
template <typename Word>
void gather_piece(const PagedKVLayout& l, const PackedTables& pt, int kv, const Word* side,
                  int64_t block, int64_t o0, int64_t h, int64_t n, Word* row, int64_t row_elems,
                  bool avx2) {
  // NOTE: gather only reads the cache; the shared piece functions take non-const pointers.
  Word* cache = const_cast<Word*>(side);
  if (l.packed(kv)) {
    Word* head = cache + block * PagedKVLayout::side(l.block_stride, kv) +
                 h * PagedKVLayout::side(l.head_stride, kv);
    copy_piece_packed<true>(l, kv, pt, head, o0, n, row, row_elems);
    return;
  }
  Word* src = cache + l.token_offset(kv, block * l.block_size + o0) + l.head_dim_part(kv, h, 0);
  const int64_t ts = PagedKVLayout::side(l.token_stride, kv);
  const int64_t ds = PagedKVLayout::side(l.dim_stride, kv);
  const int64_t d_n = l.head_size;
  if (ds == 1) {
    for (int64_t j = 0; j < n; ++j) {
      std::memcpy(row + j * row_elems, src + j * ts, static_cast<size_t>(d_n) * sizeof(Word));
    }
  } else if (ts == 1) {
    transpose_any<Word>(src, ds, row, row_elems, d_n, n, avx2);
  } else {
    copy_piece_scalar<true>(src, ts, ds, row, row_elems, n, d_n);
  }
}

}  // namespace copy_detail
}  // namespace lmc
