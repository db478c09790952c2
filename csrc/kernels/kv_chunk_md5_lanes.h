// The group hasher of the CPU MD5 twin (internal header): messages of equal length are hashed
// W at a time (W = 32 for AVX-512: two interleaved 16-lane sets; 16 for AVX2: two 8-lane sets;
// 1 scalar), one message per SIMD lane, each lane pulling its blocks from its own reader
// (a ContigReader for md5_many_cpu, a PagedReader for kv_chunk_md5_cpu).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/kv_chunk_md5.h"
#include "kernels/md5.h"

namespace lmc {
namespace md5_detail {

// Blocks per transform call (32 KB of staging for 32 lanes).
constexpr int64_t kMaxBatchBlocks = 16;

alignas(64) inline constexpr uint8_t kZeroBlock[kMd5BlockBytes] = {};

// Asks for the cache lines of [p, p + n) ahead of use.
// NOTE: many lanes read many streams at once (32 messages, each from another layer and row),
// more than the hardware prefetchers follow; without this, large inputs run at half speed.
inline void prefetch_bytes(const uint8_t* p, int64_t n) {
  for (int64_t off = 0; off < n; off += 64) __builtin_prefetch(p + off, 0, 2);
}

using TransformFn = void (*)(uint32_t*, const uint8_t* const*, int64_t);

inline void md5_x1_scalar(uint32_t* state, const uint8_t* const* blocks, int64_t num_blocks) {
  for (int64_t b = 0; b < num_blocks; ++b) md5_transform_bytes(state, blocks[b]);
}

// ---- the group hasher ----------------------------------------------------------------------

// Hashes nlanes (<= W) messages of len bytes each, W at a time through xform, and writes
// lane i's digest to digests[i]. batch_blocks: blocks per transform call (<= kMaxBatchBlocks).
template <int W, typename Reader>
void hash_lanes(Reader* readers, int nlanes, int64_t len, int64_t batch_blocks, TransformFn xform,
                uint8_t* const* digests) {
  alignas(64) uint32_t state[4 * W];
  uint32_t init[4];
  md5_init(init);
  for (int w = 0; w < 4; ++w) {
    for (int lane = 0; lane < W; ++lane) state[w * W + lane] = init[w];
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

  // Tail: the last partial block, then md5_pad's 0x80, zeros and bit length (1 or 2 blocks).
  const int64_t rem = len - full_blocks * kMd5BlockBytes;
  alignas(64) uint8_t tail[W][2 * kMd5BlockBytes];
  int tail_blocks = 1;
  for (int lane = 0; lane < nlanes; ++lane) {
    readers[lane].read(tail[lane], rem);
    tail_blocks = md5_pad(tail[lane], rem, static_cast<uint64_t>(len));
  }
  for (int lane = 0; lane < W; ++lane) {
    for (int b = 0; b < tail_blocks; ++b) {
      ptrs[b * W + lane] = lane < nlanes ? tail[lane] + b * kMd5BlockBytes : kZeroBlock;
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
inline int lanes_of(Md5Isa isa, int64_t n) {
  int width = isa == Md5Isa::kAvx512 ? 32 : isa == Md5Isa::kAvx2 ? 16 : 1;
  const int narrowest = isa == Md5Isa::kAvx512 ? 16 : 8;
  while (width > narrowest && (n + width - 1) / width < num_threads()) width /= 2;
  return width;
}

// Orders messages by length (stable) into order and splits them into groups of equal length,
// at most lanes_of(isa, n) each.
inline std::vector<Group> group_by_length(const std::vector<int64_t>& lens, Md5Isa isa,
                                          std::vector<int64_t>& order) {
  const int64_t n = static_cast<int64_t>(lens.size());
  order.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return lens[a] < lens[b]; });
  const int width = lanes_of(isa, n);
  std::vector<Group> groups;
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
void hash_group(Reader* readers, int count, int64_t len, Md5Isa isa, uint8_t* const* digests) {
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
  if (isa != Md5Isa::kScalar && count > 1 && md5_isa_supported(Md5Isa::kAvx2)) {
    hash_lanes<8>(readers, count, len, kMaxBatchBlocks, &md5_simd::md5_x8_avx2, digests);
    return;
  }
#endif
  for (int i = 0; i < count; ++i) {
    hash_lanes<1>(readers + i, 1, len, kMaxBatchBlocks, &md5_x1_scalar, digests + i);
  }
}

}  // namespace md5_detail
}  // namespace lmc
