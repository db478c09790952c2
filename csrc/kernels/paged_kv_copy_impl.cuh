// CUDA kernels shared by paged_kv_gather.cu and paged_kv_scatter.cu (internal header; the entry
// points are declared in paged_kv_gather.h / paged_kv_scatter.h).
//
// One launch validates the slots, then copy launches of up to kMaxChunksPerLaunch chunk buffers
// and kMaxLayersPerLaunch layers each move the rows (the single-buffer entry points are one
// chunk). A copy thread moves one Word (16, 8, 4, 2 or 1 bytes) of a row per step; the
// widest Word is the layout core's vector_bytes() narrowed to the alignment of every pointer
// (vector_bytes_for), so bf16 rows of flash-attn caches move as 16-byte vectors. Addresses and
// slot checks come from the layout core (paged_kv_layout.h), on the layout in Words. Chunk buffers
// in pinned host memory are addressed directly (unified addressing), which turns the copy into PCIe
// reads/writes.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
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
// kNoBadSlot as the validation result's unsigned view (ULLONG_MAX).
constexpr unsigned long long kNoBadPos = static_cast<unsigned long long>(kNoBadSlot);

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

// Records the smallest position whose slot is outside [-1, num_slots).
// Grid: (ceil(num_tokens / kThreadsPerBlock))  Block: (kThreadsPerBlock)
template <typename SlotT>
__global__ void validate_slots_kernel(const SlotT* __restrict__ slots,  // [num_tokens]
                                      int64_t num_tokens, int64_t num_slots,
                                      unsigned long long* __restrict__ bad_pos) {  // [1]
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_tokens) return;
  if (!slot_valid(static_cast<int64_t>(slots[i]), num_slots)) {
    atomicMin(bad_pos, static_cast<unsigned long long>(i));
  }
}

// Copies rows between the paged caches of layers [layer_begin, layer_begin + gridDim.y) and
// the launch's chunk buffers; threadIdx.y picks the token, threadIdx.x strides the row.
// Grid: (ceil(tokens of this launch's chunks / blockDim.y), layers in this launch, num_kv)
// Block: (Words per row rounded up to 32, capped at kThreadsPerBlock; kThreadsPerBlock / x)
template <bool kGather, typename Word, typename SlotT>
__global__ void paged_kv_copy_kernel(
    LayerPtrs layers,  // [gridDim.y] each [layer cache, as wl says]
    int64_t layer_begin, int64_t num_layers,
    PagedKVLayout wl,                     // the layout in Words (PagedKVLayout::in_words)
    const SlotT* __restrict__ slots,      // [chunks.token_begin[chunks.num_chunks]]
    ChunkPtrs chunks,                     // each [num_kv, num_layers, its tokens, row Words]
    const unsigned long long* bad_pos) {  // [1]
  if (*bad_pos != kNoBadPos) return;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (token >= chunks.token_begin[chunks.num_chunks]) return;
  const int64_t slot = static_cast<int64_t>(slots[token]);
  // NOTE: slot -1 is padding; the range test repeats the validation so no launch can stray.
  if (!slot_holds_row(slot, wl.num_slots())) return;
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
  const int kv = static_cast<int>(blockIdx.z);
  // NOTE: plain layouts only (the bindings refuse packed ones on a device); the test also lets
  // the compiler fold the layout core's two-level branches away.
  if (wl.packed(kv)) return;
  Word* cache = static_cast<Word*>(layers.ptr[blockIdx.y]) + wl.row_offset(slot, kv, 0);
  const int32_t head_words = static_cast<int32_t>(wl.head_size);
  const int32_t row_words = static_cast<int32_t>(wl.row_elems());
  Word* row =
      static_cast<Word*>(chunks.ptr[c]) +
      ((blockIdx.z * num_layers + layer_begin + blockIdx.y) * chunk_tokens + (token - first)) *
          static_cast<int64_t>(row_words);
  for (int32_t w = threadIdx.x; w < row_words; w += blockDim.x) {
    const int32_t h = w / head_words;
    const int32_t d = w - h * head_words;
    Word* p = cache + wl.head_dim_part(kv, h, d);
    if (kGather) {
      row[w] = *p;
    } else {
      *p = row[w];
    }
  }
}

// Widest Word (bytes) usable for every access of this copy: the layout's vector width
// narrowed to the alignment of every layer and chunk pointer (never below the element size).
inline int64_t pick_word_bytes(const void* const* layer_ptrs, int64_t num_layers,
                               const PagedKVLayout& l, void* const* chunks, int64_t num_chunks) {
  int64_t w = vector_bytes_for(l.vector_bytes(), chunks, num_chunks);
  w = vector_bytes_for(w, layer_ptrs, num_layers);
  return w > l.elem_size ? w : l.elem_size;
}

// Copy launches over groups of up to kMaxChunksPerLaunch non-empty chunks (in token order) and
// kMaxLayersPerLaunch layers.
template <bool kGather, typename Word, typename SlotT>
cudaError_t launch_copy(void* const* layer_ptrs, int64_t num_layers, const PagedKVLayout& wl,
                        const SlotT* slots, void* const* chunk_ptrs, const int64_t* chunk_tokens,
                        int64_t num_chunks, const unsigned long long* bad_pos,
                        cudaStream_t stream) {
  const int tx =
      static_cast<int>(std::min<int64_t>(kThreadsPerBlock, (wl.row_elems() + 31) / 32 * 32));
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
                      static_cast<unsigned>(wl.num_kv));
      paged_kv_copy_kernel<kGather, Word, SlotT>
          <<<grid, block, 0, stream>>>(lp, begin, num_layers, wl, slots + group_first, cp, bad_pos);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    group_first += tokens;
  }
  return cudaSuccess;
}

template <bool kGather, typename SlotT>
cudaError_t launch_with_slots(void* const* layer_ptrs, int64_t num_layers, const PagedKVLayout& l,
                              const SlotT* slots, int64_t num_tokens, void* const* chunks,
                              const int64_t* chunk_tokens, int64_t num_chunks,
                              unsigned long long* bad_pos, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(bad_pos, 0xFF, sizeof(unsigned long long), stream);
  if (err != cudaSuccess) return err;
  const unsigned vblocks =
      static_cast<unsigned>((num_tokens + kThreadsPerBlock - 1) / kThreadsPerBlock);
  validate_slots_kernel<SlotT>
      <<<vblocks, kThreadsPerBlock, 0, stream>>>(slots, num_tokens, l.num_slots(), bad_pos);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  const int64_t word = pick_word_bytes(layer_ptrs, num_layers, l, chunks, num_chunks);
  const PagedKVLayout wl = l.in_words(word / l.elem_size);
  const auto launch = [&](auto word_type) {
    return launch_copy<kGather, decltype(word_type)>(layer_ptrs, num_layers, wl, slots, chunks,
                                                     chunk_tokens, num_chunks, bad_pos, stream);
  };
  switch (word) {
    case 16:
      return launch(uint4{});
    case 8:
      return launch(uint2{});
    case 4:
      return launch(uint32_t{});
    case 2:
      return launch(uint16_t{});
    default:
      return launch(uint8_t{});
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
                                      static_cast<const int64_t*>(slot_mapping), num_tokens, chunks,
                                      chunk_tokens, num_chunks, bad_pos, stream);
  }
  return launch_with_slots<kGather>(layer_ptrs, num_layers, l,
                                    static_cast<const int32_t*>(slot_mapping), num_tokens, chunks,
                                    chunk_tokens, num_chunks, bad_pos, stream);
}

}  // namespace copy_cuda
}  // namespace lmc
