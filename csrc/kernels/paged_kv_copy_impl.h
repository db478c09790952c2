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
//     address order. vllm_cpu's K, stored [head_size, block_size], is a tile transpose
//     (tile_transpose.h); scattering into it uses AVX2 16x16 register transposes where the CPU
//     has AVX2 and the element is 2 bytes (paged_kv_copy_avx2_cpu.cpp);
//   - packed kv sides (vllm_cpu_amx, tiled for AMX): same (layer, tile) items; each head's piece
//     goes through the layout's own two-level index math (PagedKVLayout::token_part/dim_part,
//     the dim part tabled once per thread), with a 32-bit word transpose where whole words of
//     consecutive tokens are adjacent (vllm_cpu_amx's K). Both copy ISAs take this path.
// Long destination runs use streaming stores (paged_kv_copy_mem.h). The pieces of one head are
// in paged_kv_copy_pieces.h; every address comes from the layout core (paged_kv_layout.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/paged_kv_copy_pieces.h"

namespace lmc {
namespace copy_detail {

// Bytes of chunk buffer per work item; large enough to amortise scheduling, small enough to
// balance two threads on a 1K-token chunk.
constexpr int64_t kItemBytes = int64_t{256} << 10;
// Smallest copy that is worth waking the worker threads for.
constexpr int64_t kParallelBytes = int64_t{512} << 10;

// Throws std::out_of_range naming the first bad slot and its position.
template <typename SlotT>
void validate_slots(const SlotT* slots, int64_t num_tokens, int64_t num_slots) {
  const int64_t bad = first_bad_slot(slots, num_tokens, num_slots);
  LMC_CHECK_INDEX(bad == kNoBadSlot, "slot_mapping[", bad,
                  "] = ", static_cast<int64_t>(slots[bad == kNoBadSlot ? 0 : bad]),
                  " is out of range: slots must be -1 (padding) or in [0, ", num_slots,
                  ") (num_blocks * block_size)");
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
    const int64_t off = l.token_offset(kv, s);
    int64_t n = 1;
    while (i + n < t1) {
      const int64_t s2 = static_cast<int64_t>(slots[i + n]);
      if (s2 == -1 || l.token_offset(kv, s2) != off + n * row_elems) break;
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

// Per-head layouts (hnd, vllm_cpu, strided views), gather: for each run of tokens inside one
// block and each head, every kv side's piece in turn, so the cache is read in address order
// (vllm_cpu keeps a (block, head)'s K and V next to each other). A piece is a strided 2-D copy
// of the run's head vectors when dims are contiguous (dim_stride 1), a [head_size, run] ->
// [run, head_size] transpose when tokens are (token_stride 1: vllm_cpu's K), else scalar.
template <typename Word, typename SlotT>
void gather_heads_item(char* const* cache, char* const* rows, const PagedKVLayout& l,
                       const PackedTables& pt, const SlotT* slots, int64_t t0, int64_t t1,
                       Word* stage) {
  const int64_t es = l.elem_size, d_n = l.head_size, head_bytes = d_n * es;
  const int64_t row_elems = l.row_elems(), row_bytes = l.row_bytes();
  // NOTE: a transposed piece goes through the L1 staging tile so the chunk rows are written as
  // whole lines with streaming stores; transposed words stored straight to memory stall on a
  // read-for-ownership of every destination line.
  const bool staged = d_n * l.block_size * es <= kStageBytes;
  for_each_block_run(slots, t0, t1, l.block_size, [&](int64_t i, int64_t s, int64_t n) {
    const int64_t block = s / l.block_size;
    const int64_t o0 = s - block * l.block_size;
    for (int64_t h = 0; h < l.num_heads; ++h) {
      for (int kv = 0; kv < l.num_kv; ++kv) {
        const Word* side = reinterpret_cast<const Word*>(cache[kv]);
        Word* row = reinterpret_cast<Word*>(rows[kv] + i * row_bytes) + h * d_n;
        bool via_stage = n * head_bytes <= kStageBytes;
        if (l.packed(kv)) {
#if defined(__SSE2__)
          if constexpr (sizeof(Word) == 2) {
            if (pt.pairs[kv] && ((reinterpret_cast<uintptr_t>(row) | row_bytes) & 15) == 0) {
              // Whole 16-byte pieces of the rows: streamed straight out, no staging pass.
              Word* head =
                  const_cast<Word*>(side) + block * l.block_stride[kv] + h * l.head_stride[kv];
              copy_pairs_u16<true, true>(l, kv, pt.dim_off[kv].data(),
                                         reinterpret_cast<uint16_t*>(head), o0, n,
                                         reinterpret_cast<uint16_t*>(row), row_elems);
              continue;
            }
          }
#endif
        } else if (l.dim_stride[kv] == 1) {
          // Strided 2-D copy straight out (streaming stores where the rows allow).
          const Word* src = side + l.token_offset(kv, s) + l.head_dim_part(kv, h, 0);
          copy_rows(reinterpret_cast<char*>(row), row_bytes, reinterpret_cast<const char*>(src),
                    l.token_stride[kv] * es, n, head_bytes);
          continue;
        } else {
          via_stage = l.token_stride[kv] == 1 && staged;
        }
        if (via_stage) {
          // Through the L1 stage, so the chunk rows leave as whole lines (streaming stores).
          gather_piece(l, pt, kv, side, block, o0, h, n, stage, d_n, /*avx2=*/false);
          copy_rows(reinterpret_cast<char*>(row), row_bytes, reinterpret_cast<char*>(stage),
                    head_bytes, n, head_bytes);
        } else {
          gather_piece(l, pt, kv, side, block, o0, h, n, row, row_elems, /*avx2=*/false);
        }
      }
    }
  });
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
  const int64_t es = l.elem_size, d_n = l.head_size, head_bytes = d_n * es;
  const int64_t row_elems = l.row_elems(), row_bytes = l.row_bytes();
  for_each_block_run(slots, t0, t1, l.block_size, [&](int64_t i, int64_t s, int64_t n) {
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
      Word* dst = reinterpret_cast<Word*>(cache[kv]) + l.token_offset(kv, s);
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
  });
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
  const bool rows_layout = l.rows_contiguous();
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
    return static_cast<char*>(const_cast<void*>(layer_ptrs[layer])) + l.kv_offset[kv] * l.elem_size;
  };
  parallel_for(num_items, grain, [&](int64_t begin, int64_t end) {
    // NOTE: default-initialised (not zeroed): every element read was written first.
    std::unique_ptr<Word[]> stage(rows_layout ? nullptr : new Word[kStageBytes / sizeof(Word)]);
    PackedTables tables;
    if (l.any_packed()) tables = packed_tables(l);
    for (int64_t it = begin; it < end; ++it) {
      const int64_t g = it / total_tiles;
      const int64_t k = it % total_tiles;
      const int64_t c =
          std::upper_bound(tile_begin.begin(), tile_begin.end(), k) - tile_begin.begin() - 1;
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
    case 1:
      return copy_all<kGather, uint8_t>(layer_ptrs, num_layers, l, slots, chunks);
    case 2:
      return copy_all<kGather, uint16_t>(layer_ptrs, num_layers, l, slots, chunks);
    case 4:
      return copy_all<kGather, uint32_t>(layer_ptrs, num_layers, l, slots, chunks);
    case 8:
      return copy_all<kGather, uint64_t>(layer_ptrs, num_layers, l, slots, chunks);
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
    copy_slots<kGather>(layer_ptrs, num_layers, l, static_cast<const int64_t*>(slot_mapping), list);
  } else {
    copy_slots<kGather>(layer_ptrs, num_layers, l, static_cast<const int32_t*>(slot_mapping), list);
  }
}

}  // namespace copy_detail
}  // namespace lmc
