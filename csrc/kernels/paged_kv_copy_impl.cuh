// CUDA kernels shared by paged_kv_gather.cu and paged_kv_scatter.cu (internal header; the entry
// points are declared in paged_kv_gather.h / paged_kv_scatter.h).
//
// One launch validates the slots, then copy launches of up to kMaxChunksPerLaunch chunk buffers
// and kMaxLayersPerLaunch layers each move the rows (the single-buffer entry points are one
// chunk). A copy thread moves one Word (16, 8, 4, 2 or 1 bytes) of a row per step; the
// widest Word is picked on the host from the alignment of every pointer, offset and stride, so
// bf16 rows of flash-attn caches move as 16-byte vectors. Chunk buffers in pinned host memory
// are addressed directly (unified addressing), which turns the copy into PCIe reads/writes.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "common/check.h"
#include "kernels/paged_kv_layout.h"

namespace lmc {
namespace copy_cuda {

// Layers handled by one copy launch; their pointers travel as a kernel parameter (2 KiB).
constexpr int kMaxLayersPerLaunch = 256;
// Chunk buffers handled by one copy launch; their addresses and token offsets travel as a
// kernel parameter (1 KiB; with LayerPtrs the parameters stay under the 4 KiB limit).
constexpr int kMaxChunksPerLaunch = 64;
// Threads per copy block.
constexpr int kThreadsPerBlock = 256;
// "No bad slot" value of the validation result.
constexpr unsigned long long kNoBadSlot = ULLONG_MAX;

struct LayerPtrs {
  void* ptr[kMaxLayersPerLaunch];
};

// The chunk buffers of one launch: chunk c holds the launch's tokens [token_begin[c],
// token_begin[c + 1]); none is empty.
struct ChunkPtrs {
  void* ptr[kMaxChunksPerLaunch];
  int64_t token_begin[kMaxChunksPerLaunch + 1];
  int32_t num_chunks;
};

// PagedKVLayout in units of Word (vec elements per Word).
struct WordLayout {
  int64_t kv_offset[2];
  int64_t block_stride[2];
  int64_t token_stride[2];
  int64_t head_stride[2];
  int64_t dim_stride[2];
  int64_t block_size;
  int64_t num_slots;
  int32_t head_words;  // Words per head
  int32_t row_words;   // Words per row (num_heads * head_words)
};

// Records the smallest position whose slot is outside [-1, num_slots).
// Grid: (ceil(num_tokens / kThreadsPerBlock))  Block: (kThreadsPerBlock)
template <typename SlotT>
__global__ void validate_slots_kernel(const SlotT* __restrict__ slots,  // [num_tokens]
                                      int64_t num_tokens, int64_t num_slots,
                                      unsigned long long* __restrict__ bad_pos) {  // [1]
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_tokens) return;
  const int64_t s = static_cast<int64_t>(slots[i]);
  if (static_cast<uint64_t>(s + 1) > static_cast<uint64_t>(num_slots)) {
    atomicMin(bad_pos, static_cast<unsigned long long>(i));
  }
}

// Copies rows between the paged caches of layers [layer_begin, layer_begin + gridDim.y) and
// the launch's chunk buffers; threadIdx.y picks the token, threadIdx.x strides the row.
// Grid: (ceil(tokens of this launch's chunks / blockDim.y), layers in this launch, num_kv)
// Block: (Words per row rounded up to 32, capped at kThreadsPerBlock; kThreadsPerBlock / x)
template <bool kGather, typename Word, typename SlotT>
__global__ void paged_kv_copy_kernel(
    LayerPtrs layers,                      // [gridDim.y] each [layer cache, as WordLayout says]
    int64_t layer_begin, int64_t num_layers, WordLayout wl,
    const SlotT* __restrict__ slots,       // [chunks.token_begin[chunks.num_chunks]]
    ChunkPtrs chunks,                      // each [num_kv, num_layers, its tokens, row_words]
    const unsigned long long* bad_pos) {   // [1]
  if (*bad_pos != kNoBadSlot) return;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (token >= chunks.token_begin[chunks.num_chunks]) return;
  const int64_t slot = static_cast<int64_t>(slots[token]);
  // NOTE: slot -1 is padding; the range test repeats the validation so no launch can stray.
  if (static_cast<uint64_t>(slot) >= static_cast<uint64_t>(wl.num_slots)) return;
  // The token's chunk: the last c with token_begin[c] <= token (binary search, <= 6 steps).
  int32_t c = 0;
  for (int32_t hi = chunks.num_chunks - 1; c < hi;) {
    const int32_t mid = (c + hi + 1) / 2;
    if (chunks.token_begin[mid] <= token) {
      c = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int64_t first = chunks.token_begin[c];
  const int64_t chunk_tokens = chunks.token_begin[c + 1] - first;
  // NOTE: fields picked with selects, not wl.x[kv]: a runtime index into a by-value kernel
  // parameter makes nvcc copy the whole struct to local memory.
  const bool v = blockIdx.z != 0;
  const int64_t block = slot / wl.block_size;
  Word* cache = static_cast<Word*>(layers.ptr[blockIdx.y]) +
                (v ? wl.kv_offset[1] : wl.kv_offset[0]) +
                block * (v ? wl.block_stride[1] : wl.block_stride[0]) +
                (slot - block * wl.block_size) * (v ? wl.token_stride[1] : wl.token_stride[0]);
  Word* row = static_cast<Word*>(chunks.ptr[c]) +
              ((blockIdx.z * num_layers + layer_begin + blockIdx.y) * chunk_tokens +
               (token - first)) *
                  static_cast<int64_t>(wl.row_words);
  const int64_t hs = v ? wl.head_stride[1] : wl.head_stride[0];
  const int64_t ds = v ? wl.dim_stride[1] : wl.dim_stride[0];
  for (int32_t w = threadIdx.x; w < wl.row_words; w += blockDim.x) {
    const int32_t h = w / wl.head_words;
    const int32_t d = w - h * wl.head_words;
    Word* p = cache + h * hs + d * ds;
    if (kGather) {
      row[w] = *p;
    } else {
      *p = row[w];
    }
  }
}

// Widest Word (bytes) usable for every access of this copy.
inline int pick_word_bytes(const void* const* layer_ptrs, int64_t num_layers,
                           const PagedKVLayout& l, void* const* chunks, int64_t num_chunks) {
  const int64_t es = l.elem_size;
  for (int w = 16; w > es; w /= 2) {
    const int64_t vec = w / es;
    bool ok = l.head_size % vec == 0;
    for (int64_t c = 0; ok && c < num_chunks; ++c) {
      ok = reinterpret_cast<uintptr_t>(chunks[c]) % w == 0;
    }
    for (int kv = 0; ok && kv < l.num_kv; ++kv) {
      ok = l.dim_stride[kv] == 1 && l.kv_offset[kv] % vec == 0 && l.block_stride[kv] % vec == 0 &&
           l.token_stride[kv] % vec == 0 && (l.num_heads == 1 || l.head_stride[kv] % vec == 0);
    }
    for (int64_t i = 0; ok && i < num_layers; ++i) {
      ok = reinterpret_cast<uintptr_t>(layer_ptrs[i]) % w == 0;
    }
    if (ok) return w;
  }
  return static_cast<int>(es);
}

inline WordLayout to_word_layout(const PagedKVLayout& l, int64_t vec) {
  WordLayout wl{};
  for (int kv = 0; kv < 2; ++kv) {
    wl.kv_offset[kv] = l.kv_offset[kv] / vec;
    wl.block_stride[kv] = l.block_stride[kv] / vec;
    wl.token_stride[kv] = l.token_stride[kv] / vec;
    wl.head_stride[kv] = l.num_heads == 1 ? 0 : l.head_stride[kv] / vec;
    wl.dim_stride[kv] = vec == 1 ? l.dim_stride[kv] : 1;
  }
  wl.block_size = l.block_size;
  wl.num_slots = l.num_slots();
  wl.head_words = static_cast<int32_t>(l.head_size / vec);
  wl.row_words = static_cast<int32_t>(l.row_elems() / vec);
  return wl;
}

// Copy launches over groups of up to kMaxChunksPerLaunch non-empty chunks (in token order) and
// kMaxLayersPerLaunch layers.
template <bool kGather, typename Word, typename SlotT>
cudaError_t launch_copy(void* const* layer_ptrs, int64_t num_layers, const WordLayout& wl,
                        int64_t num_kv, const SlotT* slots, void* const* chunk_ptrs,
                        const int64_t* chunk_tokens, int64_t num_chunks,
                        const unsigned long long* bad_pos, cudaStream_t stream) {
  const int tx = static_cast<int>(
      std::min<int64_t>(kThreadsPerBlock, (static_cast<int64_t>(wl.row_words) + 31) / 32 * 32));
  const int ty = kThreadsPerBlock / tx;
  const dim3 block(tx, ty);
  int64_t group_first = 0;  // token of slots where the next group starts
  int64_t c = 0;
  while (c < num_chunks) {
    ChunkPtrs cp{};
    int64_t tokens = 0;
    for (; c < num_chunks && cp.num_chunks < kMaxChunksPerLaunch; ++c) {
      if (chunk_tokens[c] == 0) continue;
      cp.ptr[cp.num_chunks] = chunk_ptrs[c];
      cp.token_begin[cp.num_chunks] = tokens;
      tokens += chunk_tokens[c];
      ++cp.num_chunks;
    }
    cp.token_begin[cp.num_chunks] = tokens;
    if (tokens == 0) break;
    for (int64_t begin = 0; begin < num_layers; begin += kMaxLayersPerLaunch) {
      const int64_t count = std::min<int64_t>(kMaxLayersPerLaunch, num_layers - begin);
      LayerPtrs lp{};
      for (int64_t i = 0; i < count; ++i) lp.ptr[i] = layer_ptrs[begin + i];
      const dim3 grid(static_cast<unsigned>((tokens + ty - 1) / ty), static_cast<unsigned>(count),
                      static_cast<unsigned>(num_kv));
      paged_kv_copy_kernel<kGather, Word, SlotT><<<grid, block, 0, stream>>>(
          lp, begin, num_layers, wl, slots + group_first, cp, bad_pos);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    group_first += tokens;
  }
  return cudaSuccess;
}

template <bool kGather, typename SlotT>
cudaError_t launch_with_slots(void* const* layer_ptrs, int64_t num_layers,
                              const PagedKVLayout& l, const SlotT* slots, int64_t num_tokens,
                              void* const* chunks, const int64_t* chunk_tokens,
                              int64_t num_chunks, unsigned long long* bad_pos,
                              cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(bad_pos, 0xFF, sizeof(unsigned long long), stream);
  if (err != cudaSuccess) return err;
  const unsigned vblocks =
      static_cast<unsigned>((num_tokens + kThreadsPerBlock - 1) / kThreadsPerBlock);
  validate_slots_kernel<SlotT>
      <<<vblocks, kThreadsPerBlock, 0, stream>>>(slots, num_tokens, l.num_slots(), bad_pos);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  const int word = pick_word_bytes(layer_ptrs, num_layers, l, chunks, num_chunks);
  const WordLayout wl = to_word_layout(l, word / l.elem_size);
  switch (word) {
    case 16:
      return launch_copy<kGather, uint4>(layer_ptrs, num_layers, wl, l.num_kv, slots, chunks,
                                         chunk_tokens, num_chunks, bad_pos, stream);
    case 8:
      return launch_copy<kGather, uint2>(layer_ptrs, num_layers, wl, l.num_kv, slots, chunks,
                                         chunk_tokens, num_chunks, bad_pos, stream);
    case 4:
      return launch_copy<kGather, uint32_t>(layer_ptrs, num_layers, wl, l.num_kv, slots, chunks,
                                         chunk_tokens, num_chunks, bad_pos, stream);
    case 2:
      return launch_copy<kGather, uint16_t>(layer_ptrs, num_layers, wl, l.num_kv, slots, chunks,
                                         chunk_tokens, num_chunks, bad_pos, stream);
    default:
      return launch_copy<kGather, uint8_t>(layer_ptrs, num_layers, wl, l.num_kv, slots, chunks,
                                         chunk_tokens, num_chunks, bad_pos, stream);
  }
}

// Entry shared by both launchers (one chunk buffer or many). Arguments are checked by the
// binding; a bad one here is reported as cudaErrorInvalidValue.
template <bool kGather>
cudaError_t launch_paged_kv_copy(void* const* layer_ptrs, int64_t num_layers,
                                 const PagedKVLayout& l, const void* slot_mapping,
                                 int64_t slot_elem_size, int64_t num_tokens, void* const* chunks,
                                 const int64_t* chunk_tokens, int64_t num_chunks,
                                 unsigned long long* bad_pos, cudaStream_t stream) {
  if (num_layers == 0 || num_tokens == 0) return cudaSuccess;
  if ((slot_elem_size != 4 && slot_elem_size != 8) || num_layers < 0 || num_tokens < 0 ||
      layer_ptrs == nullptr || slot_mapping == nullptr || chunks == nullptr ||
      chunk_tokens == nullptr || num_chunks < 0 || bad_pos == nullptr ||
      l.row_elems() > INT32_MAX || num_tokens > INT64_MAX / 2) {
    return cudaErrorInvalidValue;
  }
  int64_t total = 0;
  for (int64_t c = 0; c < num_chunks; ++c) {
    if (chunk_tokens[c] < 0 || (chunk_tokens[c] > 0 && chunks[c] == nullptr)) {
      return cudaErrorInvalidValue;
    }
    total += chunk_tokens[c];
  }
  if (total != num_tokens) return cudaErrorInvalidValue;
  if (slot_elem_size == 8) {
    return launch_with_slots<kGather>(layer_ptrs, num_layers, l,
                                      static_cast<const int64_t*>(slot_mapping), num_tokens,
                                      chunks, chunk_tokens, num_chunks, bad_pos, stream);
  }
  return launch_with_slots<kGather>(layer_ptrs, num_layers, l,
                                    static_cast<const int32_t*>(slot_mapping), num_tokens, chunks,
                                    chunk_tokens, num_chunks, bad_pos, stream);
}

}  // namespace copy_cuda
}  // namespace lmc
