// Message readers of the CPU MD5 twin (internal header): a reader walks one (chunk, layer)
// message's bytes straight out of the paged cache, segment by segment (a row, or one head's
// vector: PagedKVLayout::piece_elems), every address from the layout core (paged_kv_layout.h).
// Transposed and packed kv sides are read through per-lane tiles filled by the copy twin's
// gather_piece (paged_kv_copy_pieces.h), so copy and MD5 share one set of tile transposes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/kv_chunk_md5_lanes.h"
#include "kernels/md5.h"
#include "kernels/paged_kv_copy_pieces.h"
#include "kernels/paged_kv_layout.h"

namespace lmc {
namespace md5_detail {

// Tokens per tile of a lane (see PagedReader): 16 rows of llama3-8b are 32 KB.
constexpr int64_t kTileTokens = 16;

// Geometry shared by all messages of one kv_chunk_md5 call. A message is a sequence of
// segments (kv, j, h): kv side, j-th valid slot of the chunk, piece h of its row.
struct MsgGeom {
  PagedKVLayout layout;  // the element-level geometry
  int64_t num_kv;
  int64_t elem;          // bytes per element
  int64_t block_size;    // tokens per block
  int64_t seg_len;       // bytes per segment
  int64_t segs_per_row;  // 1 (whole rows contiguous) or num_heads
  bool strided[2];       // dims not contiguous (vllm_cpu K): read through tiles or by element
  bool packed[2];        // two-level layout (vllm_cpu_amx): read through tiles only
  copy_detail::PackedTables tables;  // packed sides: the copy twin's tables (dim offsets, paths)

  explicit MsgGeom(const PagedKVLayout& l)
      : layout(l),
        num_kv(l.num_kv),
        elem(l.elem_size),
        block_size(l.block_size),
        seg_len(l.piece_elems() * l.elem_size),
        segs_per_row(l.pieces_per_row()) {
    for (int kv = 0; kv < 2; ++kv) {
      const int k = kv < l.num_kv ? kv : 0;
      strided[kv] = !l.head_contiguous(k);
      packed[kv] = l.packed(k);
    }
    if (l.any_packed()) tables = copy_detail::packed_tables(l);
  }

  int64_t message_len(int64_t nslots) const { return num_kv * nslots * segs_per_row * seg_len; }

  // Start of segment (kv, slot, h) of a plain (not packed) kv side.
  const uint8_t* segment(const uint8_t* base, int kv, int64_t slot, int64_t h) const {
    return base + layout.row_offset(slot, kv, h) * elem;
  }
  // Bytes between consecutive dims of a plain kv side.
  int64_t dim_bytes(int kv) const { return PagedKVLayout::side(layout.dim_stride, kv) * elem; }
};

template <typename Word>
void gather_elems(uint8_t* dst, const uint8_t* src, int64_t stride, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    Word w;
    std::memcpy(&w, src + i * stride, sizeof(Word));
    std::memcpy(dst + i * static_cast<int64_t>(sizeof(Word)), &w, sizeof(Word));
  }
}

// Rows of tokens [o0, o0 + tokens) of block `block` of a strided or packed kv side kv, as
// [tokens, num_heads, head_size] in tile, through the copy twin's gather_piece. base: the
// layer base; avx2: AVX2 tile transposes.
template <typename Word>
void fill_tile_as(const MsgGeom& g, const uint8_t* base, int kv, int64_t block, int64_t o0,
                  int64_t tokens, bool avx2, uint8_t* tile) {
  const PagedKVLayout& l = g.layout;
  const Word* side = reinterpret_cast<const Word*>(base) + PagedKVLayout::side(l.kv_offset, kv);
  Word* out = reinterpret_cast<Word*>(tile);
  for (int64_t h = 0; h < l.num_heads; ++h) {
    copy_detail::gather_piece(l, g.tables, kv, side, block, o0, h, tokens, out + h * l.head_size,
                              l.row_elems(), avx2);
  }
}

inline void fill_tile(const MsgGeom& g, const uint8_t* base, int kv, int64_t block, int64_t o0,
                      int64_t tokens, bool avx2, uint8_t* tile) {
  switch (g.elem) {
    case 1:
      return fill_tile_as<uint8_t>(g, base, kv, block, o0, tokens, avx2, tile);
    case 2:
      return fill_tile_as<uint16_t>(g, base, kv, block, o0, tokens, avx2, tile);
    case 4:
      return fill_tile_as<uint32_t>(g, base, kv, block, o0, tokens, avx2, tile);
    default:
      return fill_tile_as<uint64_t>(g, base, kv, block, o0, tokens, avx2, tile);
  }
}

// One (chunk, layer) message read sequentially from the paged cache.
//
// Strided kv sides (vllm_cpu's K, stored [head_size, block_size] per head) are read through a
// per-lane tile: when two consecutive slots of the message fall into the same span of
// kTileTokens tokens of one block, that span is transposed into the tile once (AVX2 16x16 or
// 8x8 tiles where the sizes allow) and its rows are read from there contiguously. A lone slot
// of a span is gathered element by element instead, except on a packed side (vllm_cpu_amx),
// where the tile then holds that one token's row.
struct PagedReader {
  const MsgGeom* g;
  const uint8_t* base;   // layer base
  const int64_t* slots;  // valid slots of the chunk
  int64_t nslots;
  uint8_t* tile = nullptr;  // [tile_tokens, num_heads, head_size] scratch, or null
  int64_t tile_tokens = 0;  // tokens per tile (divides block_size)
  int64_t num_heads = 0, head_size = 0;
  bool simd_transpose = false;  // AVX2 tile transposes (any ISA but scalar)
  int kv = 0;
  int64_t j = 0, h = 0;  // current segment
  int64_t off = 0;       // bytes of the current segment already consumed
  const uint8_t* seg = nullptr;
  bool contig = true;       // seg holds the segment's bytes contiguously (else strided elements)
  bool in_tile = false;     // seg points into tile (which the next fill overwrites)
  int64_t tile_first = -1;  // first slot held by the tile
  int64_t tile_count = 0;   // slots held by the tile (tile_tokens, or 1 on a packed side)
  int tile_kv = -1;

  bool tile_holds(int64_t slot) const {
    return kv == tile_kv && slot >= tile_first && slot < tile_first + tile_count;
  }

  void fill(int64_t first, int64_t count) {
    const int64_t block = first / g->block_size;
    fill_tile(*g, base, kv, block, first - block * g->block_size, count, simd_transpose, tile);
    tile_first = first;
    tile_count = count;
    tile_kv = kv;
  }

  void open() {
    const int64_t slot = slots[j];
    contig = !g->strided[kv];
    in_tile = false;
    if (g->strided[kv] && tile != nullptr) {
      if (!tile_holds(slot)) {
        const int64_t span = slot / tile_tokens;
        if (j + 1 < nslots && slots[j + 1] / tile_tokens == span) {
          fill(span * tile_tokens, tile_tokens);
        } else if (g->packed[kv]) {
          fill(slot, 1);
        }
      }
      if (tile_holds(slot)) {
        seg = tile + ((slot - tile_first) * num_heads + h) * g->seg_len;
        contig = true;
        in_tile = true;
        return;
      }
    }
    seg = g->segment(base, kv, slot, h);
  }

  void advance() {
    off = 0;
    seg = nullptr;
    if (++h == g->segs_per_row) {
      h = 0;
      if (++j == nslots) {
        j = 0;
        ++kv;
      }
    }
  }

  // Prefetches the next n bytes, walking ahead over segments without moving the reader.
  void prefetch(int64_t n) const {
    int pkv = kv;
    int64_t pj = j, ph = h, poff = off;
    while (n > 0 && pkv < g->num_kv) {
      const int64_t take = std::min(n, g->seg_len - poff);
      if (!g->strided[pkv]) prefetch_bytes(g->segment(base, pkv, slots[pj], ph) + poff, take);
      n -= take;
      poff = 0;
      if (++ph == g->segs_per_row) {
        ph = 0;
        if (++pj == nslots) {
          pj = 0;
          ++pkv;
        }
      }
    }
  }

  // Points out[b * W] (b < k) at the next k blocks: in place where a block lies inside one
  // contiguous segment of the cache, else assembled in stage (k blocks of room).
  // NOTE: tile bytes are copied too: a later segment of the same batch may re-fill the tile.
  template <int W>
  void blocks(int64_t k, const uint8_t** out, uint8_t* stage) {
    for (int64_t b = 0; b < k;) {
      if (seg == nullptr) open();
      const int64_t avail = contig && !in_tile ? (g->seg_len - off) / kMd5BlockBytes : 0;
      if (avail > 0) {
        const int64_t take = std::min(k - b, avail);
        for (int64_t t = 0; t < take; ++t) out[(b + t) * W] = seg + off + t * kMd5BlockBytes;
        off += take * kMd5BlockBytes;
        b += take;
        if (off == g->seg_len) advance();
      } else {
        uint8_t* dst = stage + b * kMd5BlockBytes;
        read(dst, kMd5BlockBytes);
        out[b * W] = dst;
        ++b;
      }
    }
  }

  // Copies the next n bytes to dst (n is a multiple of the element size).
  void read(uint8_t* dst, int64_t n) {
    while (n > 0) {
      if (seg == nullptr) open();
      const int64_t take = std::min(n, g->seg_len - off);
      if (contig) {
        std::memcpy(dst, seg + off, static_cast<size_t>(take));
      } else {
        const int64_t e = g->elem;
        const int64_t stride = g->dim_bytes(kv);
        const uint8_t* src = seg + (off / e) * stride;
        switch (e) {
          case 1:
            gather_elems<uint8_t>(dst, src, stride, take);
            break;
          case 2:
            gather_elems<uint16_t>(dst, src, stride, take / 2);
            break;
          case 4:
            gather_elems<uint32_t>(dst, src, stride, take / 4);
            break;
          default:
            gather_elems<uint64_t>(dst, src, stride, take / 8);
            break;
        }
      }
      dst += take;
      n -= take;
      off += take;
      if (off == g->seg_len) advance();
    }
  }
};

}  // namespace md5_detail
}  // namespace lmc
