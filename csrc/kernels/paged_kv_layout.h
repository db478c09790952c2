// Index math for vLLM's paged KV cache, shared by the CPU twins and the CUDA kernels.
//
// A layer's cache is described by element strides, not by a hard-coded shape, so one kernel
// serves every layout. For kv in [0, num_kv) (K = 0, V = 1; MLA has num_kv = 1), element
// (block, offset, head, dim) of that kv side lives at
//
//   layer_base + kv_offset[kv] + block * block_stride[kv] + offset * token_stride[kv]
//              + head * head_stride[kv] + dim * dim_stride[kv]          (in elements)
//
// Examples (elements; B = block_size, H = num_heads, D = head_size, N = num_blocks):
//   flash_attn  [2, N, B, H, D]: kv_offset = {0, N*B*H*D}, block = B*H*D, token = H*D, head = D, dim = 1
//   flashinfer  [N, 2, B, H, D]: kv_offset = {0, B*H*D},   block = 2*B*H*D, token = H*D, head = D, dim = 1
//   hnd         [N, 2, H, B, D]: kv_offset = {0, H*B*D},   block = 2*H*B*D, token = D, head = B*D, dim = 1
//   mla         [N, B, D]:       num_kv = 1, block = B*D, token = D, head = 0 (H = 1), dim = 1
//   vllm_cpu    [N, H, B, 2*D] with K stored transposed [D, B] then V [B, D] per (block, head):
//               K: kv_offset 0,   block = H*B*2D, token = 1, head = B*2D, dim = B
//               V: kv_offset B*D, block = H*B*2D, token = D, head = B*2D, dim = 1
//
// A slot is block * block_size + offset; slot -1 is padding and is skipped.
// A chunk buffer row (one token, one kv side, one layer) is num_heads * head_size elements.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace lmc {

// Number of int64 values in the flat form of PagedKVLayout (see to_flat / from_flat).
constexpr int kLayoutFlatSize = 16;

struct PagedKVLayout {
  int64_t num_kv;           // 2 (K and V) or 1 (MLA)
  int64_t num_blocks;
  int64_t block_size;
  int64_t num_heads;
  int64_t head_size;
  int64_t elem_size;        // bytes per element
  int64_t kv_offset[2];     // elements from the layer base to (block 0, offset 0, head 0, dim 0)
  int64_t block_stride[2];  // elements
  int64_t token_stride[2];  // elements between consecutive offsets inside a block
  int64_t head_stride[2];   // elements
  int64_t dim_stride[2];    // elements

  LMC_HOST_DEVICE int64_t num_slots() const { return num_blocks * block_size; }
  LMC_HOST_DEVICE int64_t row_elems() const { return num_heads * head_size; }
  LMC_HOST_DEVICE int64_t row_bytes() const { return row_elems() * elem_size; }

  // Element offset (from the layer base) of (slot, kv, head, dim); slot must be valid.
  LMC_HOST_DEVICE int64_t elem_offset(int64_t slot, int kv, int64_t head, int64_t dim) const {
    const int64_t block = slot / block_size;
    const int64_t offset = slot - block * block_size;
    return kv_offset[kv] + block * block_stride[kv] + offset * token_stride[kv] +
           head * head_stride[kv] + dim * dim_stride[kv];
  }

  // True when one token's row of a kv side (all heads, all dims) is contiguous in memory.
  LMC_HOST_DEVICE bool row_contiguous(int kv) const {
    return dim_stride[kv] == 1 && (num_heads == 1 || head_stride[kv] == head_size);
  }

  // True when one head's vector (all dims) is contiguous in memory.
  LMC_HOST_DEVICE bool head_contiguous(int kv) const { return dim_stride[kv] == 1; }
};

}  // namespace lmc
