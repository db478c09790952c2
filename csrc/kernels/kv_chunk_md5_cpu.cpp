// CPU twin of kv_chunk_md5: multi-buffer MD5 over (chunk, layer) messages, threads on top.
//
// Messages of equal length are grouped and hashed one per SIMD lane (kv_chunk_md5_lanes.h);
// each lane owns a reader that walks its message's bytes straight out of the paged cache
// (kv_chunk_md5_reader.h): a batch of 64-byte blocks is handed to the transform as pointers
// into the cache where a block lies inside one contiguous segment there, else copied into a
// small per-lane staging buffer first (blocks across segment boundaries; vllm_cpu's transposed
// K and vllm_cpu_amx's packed K and V, read through per-lane tiles filled by the copy twin's
// gather_piece). ISA selection and md5_many_cpu: kv_chunk_md5_isa_cpu.cpp.
#include <algorithm>
#include <vector>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/kv_chunk_md5.h"
#include "kernels/kv_chunk_md5_lanes.h"
#include "kernels/kv_chunk_md5_reader.h"
#include "kernels/md5.h"

namespace lmc {

void kv_chunk_md5_cpu(const uint8_t* const* layer_ptrs, int64_t num_layers,
                      const PagedKVLayout& layout, const int64_t* slot_mapping, int64_t num_tokens,
                      int64_t chunk_size, uint8_t* per_layer) {
  LMC_CHECK_ARG(chunk_size >= 1, "chunk_size must be >= 1, got ", chunk_size);
  LMC_CHECK_ARG(num_tokens >= 0, "num_tokens must be >= 0, got ", num_tokens);
  const int64_t num_slots = layout.num_slots();
  const int64_t bad = first_bad_slot(slot_mapping, num_tokens, num_slots);
  LMC_CHECK_INDEX(bad == kNoBadSlot, "slot_mapping[", bad,
                  "] = ", slot_mapping[bad == kNoBadSlot ? 0 : bad],
                  " is out of range for a cache of ", num_slots, " slots (-1 marks padding)");
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

  const md5_detail::MsgGeom geom(layout);
  const Md5Isa isa = md5_isa();

  // Messages m = c * num_layers + l, ordered by length (chunks with equal valid counts first
  // adjacent), so lanes of one group share a length.
  const int64_t num_msgs = num_chunks * num_layers;
  std::vector<int64_t> lens(static_cast<size_t>(num_msgs));
  for (int64_t m = 0; m < num_msgs; ++m) {
    const int64_t c = m / num_layers;
    lens[m] = geom.message_len(start[c + 1] - start[c]);
  }
  std::vector<int64_t> order;
  const std::vector<md5_detail::Group> groups = md5_detail::group_by_length(lens, isa, order);

  // Strided sides are read through per-lane tiles of up to kTileTokens tokens.
  const bool tiled = geom.strided[0] || geom.strided[1];
  int64_t tile_tokens = std::min(md5_detail::kTileTokens, layout.block_size);
  while (layout.block_size % tile_tokens != 0) --tile_tokens;
  const int64_t tile_bytes = tiled ? tile_tokens * layout.row_bytes() : 0;

  parallel_for(static_cast<int64_t>(groups.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> tiles;
    for (int64_t gi = begin; gi < end; ++gi) {
      const md5_detail::Group& grp = groups[gi];
      if (tiled) tiles.resize(static_cast<size_t>(grp.count * tile_bytes));
      md5_detail::PagedReader readers[32];
      uint8_t* outs[32];
      for (int i = 0; i < grp.count; ++i) {
        const int64_t m = order[grp.first + i];
        const int64_t c = m / num_layers;
        const int64_t l = m - c * num_layers;
        md5_detail::PagedReader& r = readers[i];
        r.g = &geom;
        r.base = layer_ptrs[l];
        r.slots = valid.data() + start[c];
        r.nslots = start[c + 1] - start[c];
        if (tiled) {
          r.tile = tiles.data() + i * tile_bytes;
          r.tile_tokens = tile_tokens;
          r.num_heads = layout.num_heads;
          r.head_size = layout.head_size;
          r.simd_transpose = isa != Md5Isa::kScalar && md5_isa_supported(Md5Isa::kAvx2);
        }
        outs[i] = per_layer + (l * num_chunks + c) * kMd5DigestBytes;
      }
      md5_detail::hash_group(readers, grp.count, lens[order[grp.first]], isa, outs);
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
