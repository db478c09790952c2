// CUDA kv_chunk_md5: compaction of each chunk's valid slots, then one thread per
// (chunk, layer) message reading its rows straight from the paged cache.
#include <cuda_runtime.h>

#include "kernels/kv_chunk_md5.h"
#include "kernels/md5.h"

namespace lmc {
namespace {

constexpr int kCompactThreads = 256;
// NOTE: MD5 is one serial chain per message, so a thread's speed is bound by instruction
// latency, not by how threads pack into warps; small blocks spread few messages over many SMs.
constexpr int kHashThreads = 32;

// Compacts the valid slots of chunk blockIdx.x, in order, into valid[chunk_start ...] and
// their number into counts[chunk]; a slot outside [0, num_slots) other than -1 records its
// token index in *error (atomicMin, so the first one wins) and is skipped.
// Grid: (num_chunks)  Block: (kCompactThreads)
__global__ void kv_chunk_md5_compact_kernel(
    const int64_t* __restrict__ slot_mapping,  // [num_tokens]
    int64_t num_tokens, int64_t chunk_size, int64_t num_slots,
    int64_t* __restrict__ valid,               // [num_tokens] (chunk c from c * chunk_size)
    int64_t* __restrict__ counts,              // [num_chunks]
    unsigned long long* __restrict__ error) {  // [1]
  __shared__ int warp_counts[kCompactThreads / 32];
  const int64_t chunk = blockIdx.x;
  const int64_t begin = chunk * chunk_size;
  const int64_t end = min(num_tokens, begin + chunk_size);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int64_t written = 0;
  for (int64_t t0 = begin; t0 < end; t0 += kCompactThreads) {
    const int64_t t = t0 + threadIdx.x;
    int64_t slot = -1;
    bool keep = false;
    if (t < end) {
      slot = slot_mapping[t];
      if (!slot_valid(slot, num_slots)) atomicMin(error, static_cast<unsigned long long>(t));
      keep = slot_holds_row(slot, num_slots);
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kCompactThreads / 32; ++w) {
      before += w < warp ? warp_counts[w] : 0;
      total += warp_counts[w];
    }
    if (keep) valid[begin + written + before + __popc(ballot & ((1u << lane) - 1u))] = slot;
    written += total;
    __syncthreads();  // warp_counts is rewritten by the next tile
  }
  if (threadIdx.x == 0) counts[chunk] = written;
}

// Byte address of segment (kv, slot, piece h) of a layer (PagedKVLayout::piece_elems).
__device__ __forceinline__ const uint8_t* segment_of(const uint8_t* base, const PagedKVLayout& l,
                                                     int kv, int64_t slot, int64_t h) {
  return base + l.row_offset(slot, kv, h) * l.elem_size;
}

__device__ __forceinline__ void load_block(const uint4* p, uint4 (&w)[4]) {
  w[0] = __ldg(p + 0);
  w[1] = __ldg(p + 1);
  w[2] = __ldg(p + 2);
  w[3] = __ldg(p + 3);
}

__device__ __forceinline__ void transform_block(uint32_t state[4], const uint4 (&w)[4]) {
  const uint32_t m[16] = {w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y, w[1].z, w[1].w,
                          w[2].x, w[2].y, w[2].z, w[2].w, w[3].x, w[3].y, w[3].z, w[3].w};
  md5_transform(state, m);
}

// One thread per message m = chunk * num_layers + layer. kVec: segments are whole 64-byte
// blocks at 16-byte aligned addresses (kv_chunk_md5_cuda_vectorizable), read as uint4 with the
// next block loaded while the current one is hashed; otherwise bytes go through Md5Stream.
// Grid: (ceil(num_chunks * num_layers / kHashThreads))  Block: (kHashThreads)
template <bool kVec>
__global__ void kv_chunk_md5_kernel(const uint64_t* __restrict__ layer_ptrs,  // [num_layers]
                                    int64_t num_layers, PagedKVLayout layout,
                                    const int64_t* __restrict__ valid,   // [num_tokens]
                                    const int64_t* __restrict__ counts,  // [num_chunks]
                                    int64_t num_chunks, int64_t chunk_size,
                                    // [num_layers, num_chunks, 16]
                                    uint8_t* __restrict__ per_layer) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (m >= num_chunks * num_layers) return;
  const int64_t chunk = m / num_layers;
  const int64_t layer = m - chunk * num_layers;
  const uint8_t* base = reinterpret_cast<const uint8_t*>(layer_ptrs[layer]);
  const int64_t* slots = valid + chunk * chunk_size;
  const int64_t n = counts[chunk];
  const int64_t seg_len = layout.piece_elems() * layout.elem_size;
  const int64_t segs_per_row = layout.pieces_per_row();
  uint32_t state[4];
  if constexpr (kVec) {
    md5_init(state);
    const int64_t blocks_per_seg = seg_len / kMd5BlockBytes;
    for (int kv = 0; kv < layout.num_kv; ++kv) {
      for (int64_t j = 0; j < n; ++j) {
        const int64_t slot = slots[j];
        for (int64_t h = 0; h < segs_per_row; ++h) {
          const uint4* p = reinterpret_cast<const uint4*>(segment_of(base, layout, kv, slot, h));
          uint4 next[4];
          load_block(p, next);
          for (int64_t b = 0; b < blocks_per_seg; ++b) {
            const uint4 cur[4] = {next[0], next[1], next[2], next[3]};
            if (b + 1 < blocks_per_seg) load_block(p + 4 * (b + 1), next);
            transform_block(state, cur);
          }
        }
      }
    }
    // The message length is a whole number of blocks: one padding block follows.
    uint8_t tail[2 * kMd5BlockBytes];
    md5_pad(tail, 0, static_cast<uint64_t>(layout.num_kv * n * segs_per_row * seg_len));
    md5_transform_bytes(state, tail);
  } else {
    Md5Stream s;
    s.init();
    const int64_t e = layout.elem_size;
    for (int kv = 0; kv < layout.num_kv; ++kv) {
      const bool contiguous = layout.head_contiguous(kv);
      const int64_t dim_bytes = PagedKVLayout::side(layout.dim_stride, kv) * e;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t slot = slots[j];
        for (int64_t h = 0; h < segs_per_row; ++h) {
          const uint8_t* seg = segment_of(base, layout, kv, slot, h);
          if (contiguous) {
            s.update(seg, seg_len);
          } else {
            for (int64_t d = 0; d < layout.head_size; ++d) s.update(seg + d * dim_bytes, e);
          }
        }
      }
    }
    uint8_t digest[kMd5DigestBytes];
    s.final(digest);
    memcpy(state, digest, kMd5DigestBytes);
  }
  uint4 out;
  out.x = state[0];
  out.y = state[1];
  out.z = state[2];
  out.w = state[3];
  // NOTE: per_layer comes from a 256-byte aligned allocation, so every digest is 16-aligned.
  reinterpret_cast<uint4*>(per_layer)[layer * num_chunks + chunk] = out;
}

}  // namespace

bool kv_chunk_md5_cuda_vectorizable(const PagedKVLayout& layout, const uint64_t* layer_ptrs_host,
                                    int64_t num_layers) {
  if ((layout.piece_elems() * layout.elem_size) % kMd5BlockBytes != 0) return false;
  if (layout.vector_bytes() < 16) return false;
  for (int64_t l = 0; l < num_layers; ++l) {
    if (layer_ptrs_host[l] % 16 != 0) return false;
  }
  return true;
}

cudaError_t launch_kv_chunk_md5(const uint64_t* layer_ptrs, int64_t num_layers,
                                const PagedKVLayout& layout, const int64_t* slot_mapping,
                                int64_t num_tokens, int64_t chunk_size, int64_t* workspace,
                                uint8_t* per_layer, int64_t* error, bool vectorized,
                                cudaStream_t stream) {
  if (chunk_size < 1 || num_tokens < 0) return cudaErrorInvalidValue;
  const int64_t num_chunks = kv_chunk_md5_num_chunks(num_tokens, chunk_size);
  if (num_chunks == 0 || num_layers == 0) return cudaSuccess;
  int64_t* valid = workspace;
  int64_t* counts = workspace + num_tokens;
  kv_chunk_md5_compact_kernel<<<static_cast<unsigned>(num_chunks), kCompactThreads, 0, stream>>>(
      slot_mapping, num_tokens, chunk_size, layout.num_slots(), valid, counts,
      reinterpret_cast<unsigned long long*>(error));
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t num_msgs = num_chunks * num_layers;
  const unsigned grid = static_cast<unsigned>((num_msgs + kHashThreads - 1) / kHashThreads);
  if (vectorized) {
    kv_chunk_md5_kernel<true><<<grid, kHashThreads, 0, stream>>>(
        layer_ptrs, num_layers, layout, valid, counts, num_chunks, chunk_size, per_layer);
  } else {
    kv_chunk_md5_kernel<false><<<grid, kHashThreads, 0, stream>>>(
        layer_ptrs, num_layers, layout, valid, counts, num_chunks, chunk_size, per_layer);
  }
  return cudaGetLastError();
}

}  // namespace lmc
