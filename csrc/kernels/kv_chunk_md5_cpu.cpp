// CPU twin of kv_chunk_md5: multi-buffer MD5 over (chunk, layer) messages, threads on top.
//
// Messages of equal length are grouped W at a time (W = 32 for AVX-512: two interleaved 16-lane
// sets; 16 for AVX2: two 8-lane sets; 1 scalar), one message per SIMD lane. Each lane owns a
// reader that walks its message's bytes straight out of the paged cache: a batch of 64-byte
// blocks is handed to the transform as pointers into the cache where a block lies inside one
// contiguous segment there, else copied into a small per-lane staging buffer first (blocks
// across segment boundaries; vllm_cpu's transposed K and vllm_cpu_amx's packed K and V, read
// through per-lane tiles filled with the layout's own index math).
#include "kernels/kv_chunk_md5.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/md5.h"
#include "kernels/paged_kv_copy_impl.h"

namespace lmc {
namespace {

// Blocks per transform call (32 KB of staging for 32 lanes).
constexpr int64_t kMaxBatchBlocks = 16;

// Tokens per tile of a lane (see PagedReader): 16 rows of llama3-8b are 32 KB.
constexpr int64_t kTileTokens = 16;

alignas(64) const uint8_t kZeroBlock[kMd5BlockBytes] = {};

// ---- instruction-set selection -------------------------------------------------------------

bool cpu_has(Md5Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case Md5Isa::kScalar: return true;
    case Md5Isa::kAvx2: return __builtin_cpu_supports("avx2");
    case Md5Isa::kAvx512: return __builtin_cpu_supports("avx512f");
  }
  return false;
#else
  return isa == Md5Isa::kScalar;
#endif
}

Md5Isa best_isa() {
  if (cpu_has(Md5Isa::kAvx512)) return Md5Isa::kAvx512;
  if (cpu_has(Md5Isa::kAvx2)) return Md5Isa::kAvx2;
  return Md5Isa::kScalar;
}

Md5Isa initial_isa() {
  if (const char* env = std::getenv("LMC_MD5_ISA")) {
    for (Md5Isa isa : {Md5Isa::kScalar, Md5Isa::kAvx2, Md5Isa::kAvx512}) {
      if (std::strcmp(env, md5_isa_name(isa)) == 0 && cpu_has(isa)) return isa;
    }
  }
  return best_isa();
}

std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

// ---- transforms ----------------------------------------------------------------------------

using TransformFn = void (*)(uint32_t*, const uint8_t* const*, int64_t);

void md5_x1_scalar(uint32_t* state, const uint8_t* const* blocks, int64_t num_blocks) {
  for (int64_t b = 0; b < num_blocks; ++b) md5_transform_bytes(state, blocks[b]);
}

// ---- message readers -----------------------------------------------------------------------

// Asks for the cache lines of [p, p + n) ahead of use.
// NOTE: many lanes read many streams at once (32 messages, each from another layer and row),
// more than the hardware prefetchers follow; without this, large inputs run at half speed.
inline void prefetch_bytes(const uint8_t* p, int64_t n) {
  for (int64_t off = 0; off < n; off += 64) __builtin_prefetch(p + off, 0, 2);
}

// A contiguous message (md5_many_cpu).
struct ContigReader {
  const uint8_t* p;

  // Points out[b * W] (b < k) at the next k blocks; stage is not needed.
  template <int W>
  void blocks(int64_t k, const uint8_t** out, uint8_t* /*stage*/) {
    for (int64_t b = 0; b < k; ++b) out[b * W] = p + b * kMd5BlockBytes;
    p += k * kMd5BlockBytes;
  }
  void prefetch(int64_t n) const { prefetch_bytes(p, n); }
  void read(uint8_t* dst, int64_t n) {
    if (n > 0) std::memcpy(dst, p, static_cast<size_t>(n));
    p += n;
  }
};

// Geometry shared by all messages of one kv_chunk_md5 call, in bytes. A message is a sequence
// of segments (kv, j, h): kv side, j-th valid slot of the chunk, head h (or the whole row when
// every row is contiguous).
struct MsgGeom {
  PagedKVLayout layout;  // the element-level geometry (packed sides are read through it)
  int64_t num_kv;
  int64_t elem;          // bytes per element
  int64_t block_size;    // tokens per block
  int64_t seg_len;       // bytes per segment
  int64_t segs_per_row;  // 1 (whole rows contiguous) or num_heads
  bool strided[2];       // dims not contiguous (vllm_cpu K): read through tiles or by element
  bool packed[2];        // two-level layout (vllm_cpu_amx): read through tiles only
  copy_detail::PackedTables tables;  // packed sides: the copy twin's tables (dim offsets, paths)
  int64_t kv_off[2], block_stride[2], token_stride[2], head_stride[2], dim_stride[2];

  explicit MsgGeom(const PagedKVLayout& l) : layout(l) {
    num_kv = l.num_kv;
    elem = l.elem_size;
    block_size = l.block_size;
    bool rows = true;
    for (int kv = 0; kv < 2; ++kv) {
      const int k = kv < l.num_kv ? kv : 0;
      kv_off[kv] = l.kv_offset[k] * elem;
      block_stride[kv] = l.block_stride[k] * elem;
      token_stride[kv] = l.token_stride[k] * elem;
      head_stride[kv] = l.head_stride[k] * elem;
      dim_stride[kv] = l.dim_stride[k] * elem;
      strided[kv] = !l.head_contiguous(k);
      packed[kv] = l.packed(k);
      rows = rows && l.row_contiguous(k);
    }
    if (l.any_packed()) tables = copy_detail::packed_tables(l);
    segs_per_row = rows ? 1 : l.num_heads;
    seg_len = rows ? l.row_bytes() : l.head_size * elem;
  }

  int64_t message_len(int64_t nslots) const { return num_kv * nslots * segs_per_row * seg_len; }

  // Start of segment (kv, slot, h) of a plain (not packed) kv side.
  const uint8_t* segment(const uint8_t* base, int kv, int64_t slot, int64_t h) const {
    const int64_t block = slot / block_size;
    const int64_t offset = slot - block * block_size;
    return base + kv_off[kv] + block * block_stride[kv] + offset * token_stride[kv] +
           h * head_stride[kv];
  }
};

template <typename Word>
void gather_elems(uint8_t* dst, const uint8_t* src, int64_t stride, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    Word w;
    std::memcpy(&w, src + i * stride, sizeof(Word));
    std::memcpy(dst + i * static_cast<int64_t>(sizeof(Word)), &w, sizeof(Word));
  }
}

// Rows of tokens [t0, t0 + tokens) of one block and (strided) kv side, copied into tile as
// [tokens, num_heads, head_size] so that each token's row is contiguous. Scalar version: any
// strides and element size.
template <typename Word>
void fill_tile_scalar(const MsgGeom& g, const uint8_t* src, int kv, int64_t num_heads,
                      int64_t head_size, int64_t tokens, uint8_t* tile) {
  const int64_t row = num_heads * head_size;
  Word* out = reinterpret_cast<Word*>(tile);
  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t d = 0; d < head_size; ++d) {
      const uint8_t* col = src + h * g.head_stride[kv] + d * g.dim_stride[kv];
      Word* dst = out + h * head_size + d;
      for (int64_t o = 0; o < tokens; ++o) {
        Word w;
        std::memcpy(&w, col + o * g.token_stride[kv], sizeof(Word));
        dst[o * row] = w;
      }
    }
  }
}

// Rows of tokens [o0, o0 + tokens) of one block of a packed kv side kv, copied into tile as
// [tokens, num_heads, head_size] by the copy twin's gather of one head's piece
// (copy_detail::copy_piece_packed: word transposes, token-pair splits, dim runs, else the
// layout's token_part/dim_part). blk: (block, offset 0, head 0, dim 0) of the side.
template <typename Word>
void fill_tile_packed(const MsgGeom& g, const uint8_t* blk, int kv, int64_t o0, int64_t tokens,
                      uint8_t* tile) {
  const PagedKVLayout& l = g.layout;
  const int64_t row = l.num_heads * l.head_size;
  // NOTE: gather only reads the cache; the shared piece function takes non-const pointers.
  Word* cache = reinterpret_cast<Word*>(const_cast<uint8_t*>(blk));
  Word* out = reinterpret_cast<Word*>(tile);
  for (int64_t h = 0; h < l.num_heads; ++h) {
    copy_detail::copy_piece_packed<true, Word>(l, kv, g.tables, cache + h * l.head_stride[kv], o0,
                                               tokens, out + h * l.head_size, row);
  }
}

// Rows of tokens [o0, o0 + tokens) of block `block` of a strided or packed kv side kv, as
// [tokens, num_heads, head_size] in tile. base: the layer base.
void fill_tile(const MsgGeom& g, const uint8_t* base, int kv, int64_t block, int64_t o0,
               int64_t tokens, bool simd, uint8_t* tile) {
  const int64_t e = g.elem;
  const int64_t num_heads = g.layout.num_heads;
  const int64_t head_size = g.layout.head_size;
  const uint8_t* blk = base + g.kv_off[kv] + block * g.block_stride[kv];
  if (g.packed[kv]) {
    switch (e) {
      case 1: fill_tile_packed<uint8_t>(g, blk, kv, o0, tokens, tile); break;
      case 2: fill_tile_packed<uint16_t>(g, blk, kv, o0, tokens, tile); break;
      case 4: fill_tile_packed<uint32_t>(g, blk, kv, o0, tokens, tile); break;
      default: fill_tile_packed<uint64_t>(g, blk, kv, o0, tokens, tile); break;
    }
    return;
  }
  const uint8_t* src = blk + o0 * g.token_stride[kv];
#if defined(__x86_64__) || defined(__i386__)
  // vllm_cpu's K: each head is a [head_size, block_size] matrix with tokens contiguous.
  if (simd && g.token_stride[kv] == e) {
    const int64_t head_bytes = head_size * e;
    const int64_t row_bytes = num_heads * head_bytes;
    const int64_t tile_n = e == 2 ? 16 : 8;
    if ((e == 2 || e == 4) && head_size % tile_n == 0 && tokens % tile_n == 0) {
      for (int64_t h = 0; h < num_heads; ++h) {
        const uint8_t* s = src + h * g.head_stride[kv];
        uint8_t* d = tile + h * head_bytes;
        if (e == 2) {
          md5_simd::transpose_u16_avx2(s, g.dim_stride[kv], head_size, tokens, d, row_bytes);
        } else {
          md5_simd::transpose_u32_avx2(s, g.dim_stride[kv], head_size, tokens, d, row_bytes);
        }
      }
      return;
    }
  }
#else
  (void)simd;
#endif
  switch (e) {
    case 1: fill_tile_scalar<uint8_t>(g, src, kv, num_heads, head_size, tokens, tile); break;
    case 2: fill_tile_scalar<uint16_t>(g, src, kv, num_heads, head_size, tokens, tile); break;
    case 4: fill_tile_scalar<uint32_t>(g, src, kv, num_heads, head_size, tokens, tile); break;
    default: fill_tile_scalar<uint64_t>(g, src, kv, num_heads, head_size, tokens, tile); break;
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
  int64_t j = 0, h = 0;   // current segment
  int64_t off = 0;        // bytes of the current segment already consumed
  const uint8_t* seg = nullptr;
  bool contig = true;     // seg holds the segment's bytes contiguously (else strided elements)
  bool in_tile = false;   // seg points into tile (which the next fill overwrites)
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
        const uint8_t* src = seg + (off / e) * g->dim_stride[kv];
        const int64_t stride = g->dim_stride[kv];
        switch (e) {
          case 1: gather_elems<uint8_t>(dst, src, stride, take); break;
          case 2: gather_elems<uint16_t>(dst, src, stride, take / 2); break;
          case 4: gather_elems<uint32_t>(dst, src, stride, take / 4); break;
          default: gather_elems<uint64_t>(dst, src, stride, take / 8); break;
        }
      }
      dst += take;
      n -= take;
      off += take;
      if (off == g->seg_len) advance();
    }
  }
};

// ---- the group hasher ----------------------------------------------------------------------

// Hashes nlanes (<= W) messages of len bytes each, W at a time through xform, and writes
// lane i's digest to digests[i]. batch_blocks: blocks per transform call (<= kMaxBatchBlocks).
template <int W, typename Reader>
void hash_lanes(Reader* readers, int nlanes, int64_t len, int64_t batch_blocks,
                TransformFn xform, uint8_t* const* digests) {
  alignas(64) uint32_t state[4 * W];
  for (int w = 0; w < 4; ++w) {
    for (int lane = 0; lane < W; ++lane) state[w * W + lane] = kMd5Init[w];
  }
  const uint8_t* ptrs[kMaxBatchBlocks * W];
  alignas(64) uint8_t stage[W][kMaxBatchBlocks * kMd5BlockBytes];

  const int64_t full_blocks = len / kMd5BlockBytes;
  for (int64_t done = 0; done < full_blocks;) {
    const int64_t k = std::min(batch_blocks, full_blocks - done);
    for (int lane = 0; lane < W; ++lane) {
      if (lane < nlanes) {
        readers[lane].template blocks<W>(k, ptrs + lane, stage[lane]);
        if (done + k < full_blocks) readers[lane].prefetch(k * kMd5BlockBytes);
      } else {
        for (int64_t b = 0; b < k; ++b) ptrs[b * W + lane] = kZeroBlock;
      }
    }
    xform(state, ptrs, k);
    done += k;
  }

  // Tail: the last partial block, 0x80, zeros, and the bit length (one or two blocks).
  const int64_t rem = len - full_blocks * kMd5BlockBytes;
  const int64_t tail_blocks = rem + 9 > kMd5BlockBytes ? 2 : 1;
  const uint64_t bits = static_cast<uint64_t>(len) * 8;
  alignas(64) uint8_t tail[W][2 * kMd5BlockBytes];
  for (int lane = 0; lane < W; ++lane) {
    uint8_t* t = tail[lane];
    if (lane < nlanes) {
      readers[lane].read(t, rem);
      t[rem] = 0x80;
      std::memset(t + rem + 1, 0, static_cast<size_t>(tail_blocks * kMd5BlockBytes - rem - 1));
      std::memcpy(t + tail_blocks * kMd5BlockBytes - 8, &bits, 8);
    }
    for (int64_t b = 0; b < tail_blocks; ++b) {
      ptrs[b * W + lane] = lane < nlanes ? t + b * kMd5BlockBytes : kZeroBlock;
    }
  }
  xform(state, ptrs, tail_blocks);

  for (int lane = 0; lane < nlanes; ++lane) {
    for (int w = 0; w < 4; ++w) std::memcpy(digests[lane] + 4 * w, &state[w * W + lane], 4);
  }
}

// A run of messages with equal length, hashed together.
struct Group {
  int64_t first;  // index into the sorted message order
  int count;
};

// Lanes per group for n messages: the widest transform of isa, halved (down to the plain
// 16/8-lane width) while that leaves fewer groups than threads, so small calls use every thread.
int lanes_of(Md5Isa isa, int64_t n) {
  int width = isa == Md5Isa::kAvx512 ? 32 : isa == Md5Isa::kAvx2 ? 16 : 1;
  const int narrowest = isa == Md5Isa::kAvx512 ? 16 : 8;
  while (width > narrowest && (n + width - 1) / width < num_threads()) width /= 2;
  return width;
}

// Splits messages (already ordered so equal lengths are adjacent) into groups of <= W.
std::vector<Group> make_groups(const std::vector<int64_t>& order,
                               const std::vector<int64_t>& lens, int width) {
  std::vector<Group> groups;
  const int64_t n = static_cast<int64_t>(order.size());
  for (int64_t i = 0; i < n;) {
    int count = 1;
    while (count < width && i + count < n && lens[order[i + count]] == lens[order[i]]) ++count;
    groups.push_back({i, count});
    i += count;
  }
  return groups;
}

// Hashes one group on the widest transform that pays off for its size.
template <typename Reader>
void hash_group(Reader* readers, int count, int64_t len, Md5Isa isa,
                uint8_t* const* digests) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == Md5Isa::kAvx512 && count > 16) {
    hash_lanes<32>(readers, count, len, kMaxBatchBlocks, &md5_simd::md5_x32_avx512, digests);
    return;
  }
  if (isa == Md5Isa::kAvx512 && count > 8) {
    hash_lanes<16>(readers, count, len, kMaxBatchBlocks, &md5_simd::md5_x16_avx512, digests);
    return;
  }
  if (isa == Md5Isa::kAvx2 && count > 8) {
    hash_lanes<16>(readers, count, len, kMaxBatchBlocks, &md5_simd::md5_x16_avx2, digests);
    return;
  }
  if (isa != Md5Isa::kScalar && count > 1 && cpu_has(Md5Isa::kAvx2)) {
    hash_lanes<8>(readers, count, len, kMaxBatchBlocks, &md5_simd::md5_x8_avx2, digests);
    return;
  }
#endif
  for (int i = 0; i < count; ++i) {
    hash_lanes<1>(readers + i, 1, len, kMaxBatchBlocks, &md5_x1_scalar, digests + i);
  }
}

}  // namespace

// ---- public entry points -------------------------------------------------------------------

const char* md5_isa_name(Md5Isa isa) {
  switch (isa) {
    case Md5Isa::kScalar: return "scalar";
    case Md5Isa::kAvx2: return "avx2";
    case Md5Isa::kAvx512: return "avx512";
  }
  return "unknown";
}

Md5Isa md5_isa_from_name(const char* name) {
  for (Md5Isa isa : {Md5Isa::kScalar, Md5Isa::kAvx2, Md5Isa::kAvx512}) {
    if (std::strcmp(name, md5_isa_name(isa)) == 0) return isa;
  }
  throw std::invalid_argument(
      detail::concat("isa must be 'scalar', 'avx2' or 'avx512', got '", name, "'"));
}

bool md5_isa_supported(Md5Isa isa) { return cpu_has(isa); }

Md5Isa md5_isa() { return static_cast<Md5Isa>(isa_slot().load(std::memory_order_relaxed)); }

void md5_set_isa(Md5Isa isa) {
  LMC_CHECK_ARG(cpu_has(isa), "isa '", md5_isa_name(isa), "' is not supported by this CPU");
  isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

void md5_many_cpu(const uint8_t* const* msgs, const int64_t* lens, int64_t n, uint8_t* digests) {
  if (n <= 0) return;
  const Md5Isa isa = md5_isa();
  std::vector<int64_t> len_of(lens, lens + n);
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return len_of[a] < len_of[b]; });
  const std::vector<Group> groups = make_groups(order, len_of, lanes_of(isa, n));
  parallel_for(static_cast<int64_t>(groups.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t gi = begin; gi < end; ++gi) {
      const Group& grp = groups[gi];
      ContigReader readers[32];
      uint8_t* outs[32];
      for (int i = 0; i < grp.count; ++i) {
        const int64_t m = order[grp.first + i];
        readers[i].p = msgs[m];
        outs[i] = digests + m * kMd5DigestBytes;
      }
      hash_group(readers, grp.count, len_of[order[grp.first]], isa, outs);
    }
  });
}

void kv_chunk_md5_cpu(const uint8_t* const* layer_ptrs, int64_t num_layers,
                      const PagedKVLayout& layout, const int64_t* slot_mapping,
                      int64_t num_tokens, int64_t chunk_size, uint8_t* per_layer) {
  LMC_CHECK_ARG(chunk_size >= 1, "chunk_size must be >= 1, got ", chunk_size);
  LMC_CHECK_ARG(num_tokens >= 0, "num_tokens must be >= 0, got ", num_tokens);
  const int64_t num_slots = layout.num_slots();
  for (int64_t i = 0; i < num_tokens; ++i) {
    const int64_t s = slot_mapping[i];
    LMC_CHECK_INDEX(s == -1 || (s >= 0 && s < num_slots), "slot_mapping[", i, "] = ", s,
                    " is out of range for a cache of ", num_slots, " slots (-1 marks padding)");
  }
  const int64_t num_chunks = kv_chunk_md5_num_chunks(num_tokens, chunk_size);
  if (num_chunks == 0 || num_layers == 0) return;

  // Valid slots of each chunk, compacted in order: chunk c owns [start[c], start[c + 1]).
  std::vector<int64_t> valid;
  valid.reserve(static_cast<size_t>(num_tokens));
  std::vector<int64_t> start(static_cast<size_t>(num_chunks + 1));
  for (int64_t c = 0; c < num_chunks; ++c) {
    start[c] = static_cast<int64_t>(valid.size());
    const int64_t end = std::min(num_tokens, (c + 1) * chunk_size);
    for (int64_t i = c * chunk_size; i < end; ++i) {
      if (slot_mapping[i] != -1) valid.push_back(slot_mapping[i]);
    }
  }
  start[num_chunks] = static_cast<int64_t>(valid.size());

  const MsgGeom geom(layout);
  const Md5Isa isa = md5_isa();

  // Messages m = c * num_layers + l, ordered by length (chunks with equal valid counts first
  // adjacent), so lanes of one group share a length.
  const int64_t num_msgs = num_chunks * num_layers;
  std::vector<int64_t> lens(static_cast<size_t>(num_msgs));
  for (int64_t m = 0; m < num_msgs; ++m) {
    const int64_t c = m / num_layers;
    lens[m] = geom.message_len(start[c + 1] - start[c]);
  }
  std::vector<int64_t> order(static_cast<size_t>(num_msgs));
  for (int64_t m = 0; m < num_msgs; ++m) order[m] = m;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return lens[a] < lens[b]; });
  const std::vector<Group> groups = make_groups(order, lens, lanes_of(isa, num_msgs));

  // Strided sides are read through per-lane tiles of up to kTileTokens tokens.
  const bool tiled = geom.strided[0] || geom.strided[1];
  int64_t tile_tokens = std::min(kTileTokens, layout.block_size);
  while (layout.block_size % tile_tokens != 0) --tile_tokens;
  const int64_t tile_bytes = tiled ? tile_tokens * layout.row_bytes() : 0;

  parallel_for(static_cast<int64_t>(groups.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> tiles;
    for (int64_t gi = begin; gi < end; ++gi) {
      const Group& grp = groups[gi];
      if (tiled) tiles.resize(static_cast<size_t>(grp.count * tile_bytes));
      PagedReader readers[32];
      uint8_t* outs[32];
      for (int i = 0; i < grp.count; ++i) {
        const int64_t m = order[grp.first + i];
        const int64_t c = m / num_layers;
        const int64_t l = m - c * num_layers;
        PagedReader& r = readers[i];
        r.g = &geom;
        r.base = layer_ptrs[l];
        r.slots = valid.data() + start[c];
        r.nslots = start[c + 1] - start[c];
        if (tiled) {
          r.tile = tiles.data() + i * tile_bytes;
          r.tile_tokens = tile_tokens;
          r.num_heads = layout.num_heads;
          r.head_size = layout.head_size;
          r.simd_transpose = isa != Md5Isa::kScalar && cpu_has(Md5Isa::kAvx2);
        }
        outs[i] = per_layer + (l * num_chunks + c) * kMd5DigestBytes;
      }
      hash_group(readers, grp.count, lens[order[grp.first]], isa, outs);
    }
  });
}

void kv_chunk_md5_combine(const uint8_t* per_layer, int64_t num_layers, int64_t num_chunks,
                          uint8_t* combined) {
  for (int64_t c = 0; c < num_chunks; ++c) {
    Md5Stream s;
    s.init();
    for (int64_t l = 0; l < num_layers; ++l) {
      char hex[32];
      md5_hex(per_layer + (l * num_chunks + c) * kMd5DigestBytes, hex);
      s.update(reinterpret_cast<const uint8_t*>(hex), 32);
    }
    s.final(combined + c * kMd5DigestBytes);
  }
}

}  // namespace lmc
