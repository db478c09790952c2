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
//   flash_attn [2, N, B, H, D]: kv_offset {0, N*B*H*D}, block B*H*D,   token H*D, head D,   dim 1
//   flashinfer [N, 2, B, H, D]: kv_offset {0, B*H*D},   block 2*B*H*D, token H*D, head D,   dim 1
//   hnd        [N, 2, H, B, D]: kv_offset {0, H*B*D},   block 2*H*B*D, token D,   head B*D, dim 1
//   mla        [N, B, D]:       num_kv 1 (H = 1),       block B*D,     token D,   head 0,   dim 1
//   vllm_cpu   [N, H, B, 2*D] with K stored transposed [D, B] then V [B, D] per (block, head):
//               K: kv_offset 0,   block = H*B*2D, token = 1, head = B*2D, dim = B
//               V: kv_offset B*D, block = H*B*2D, token = D, head = B*2D, dim = 1
//
// Packed layouts (vllm_cpu_amx: vLLM's CPU cache for its AMX attention) tile a coordinate in
// two levels: with a group of G, coordinate x contributes
//
//   (x / G) * stride + (x % G) * inner                    (G = 1: x * stride, plain)
//
// for the offset (token_group, token_stride, token_inner) and the dim (dim_group, dim_stride,
// dim_inner); block and head stay plain. vllm_cpu_amx, [N, H, B, 2*D] as vllm_cpu, K then V
// per (block, head) region, p = 4 / elem_size elements per 32-bit word (AMX B tiles are 16
// rows of 64 bytes):
//     K: kv_offset 0,   token: G 16, stride 16*D, inner p;  dim: G p,  stride 16*p, inner 1
//     V: kv_offset B*D, token: G p,  stride 16*p, inner 1;  dim: G 16, stride 16*B, inner p
// (K: 16 tokens' word w form one 64-byte row; V: one 64-byte row holds 16 dims of p tokens).
// This header is the layout core: the one place that turns (slot, kv, head, dim) into an
// address (row_offset / elem_offset, with token_part and dim_part for packed sides), says which
// rows are contiguous (rows_contiguous, piece_elems), how wide a vector access may be
// (vector_bytes) and which slots are valid (slot_valid, first_bad_slot, kNoBadSlot). The CPU
// copy and MD5 twins and the CUDA kernels all call it. The CUDA kernels read plain layouts only
// (the bindings refuse packed ones on a CUDA device).
//
// A slot is block * block_size + offset; slot -1 is padding and is skipped.
// A chunk buffer row (one token, one kv side, one layer) is num_heads * head_size elements.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace lmc {

// Bound to Python field by field as _C.PagedKVLayout (bindings/paged_kv_layout.cpp).
struct PagedKVLayout {
  int64_t num_kv;  // 2 (K and V) or 1 (MLA)
  int64_t num_blocks;
  int64_t block_size;
  int64_t num_heads;
  int64_t head_size;
  int64_t elem_size;        // bytes per element
  int64_t kv_offset[2];     // elements from the layer base to (block 0, offset 0, head 0, dim 0)
  int64_t block_stride[2];  // elements
  int64_t token_stride[2];  // elements between consecutive offsets (groups, when packed)
  int64_t head_stride[2];   // elements
  int64_t dim_stride[2];    // elements between consecutive dims (groups, when packed)
  // Two-level (packed) layouts; group 1 and inner 0 for plain strides.
  int64_t token_group[2];  // offsets per group
  int64_t token_inner[2];  // elements between consecutive offsets inside a group
  int64_t dim_group[2];    // dims per group
  int64_t dim_inner[2];    // elements between consecutive dims inside a group

  // NOTE: every per-side field is read through side(): a select, not an index, so a kernel
  // given the layout by value with a runtime kv keeps it in registers (a runtime index into a
  // by-value kernel parameter makes nvcc copy the whole struct to local memory).
  LMC_HOST_DEVICE static int64_t side(const int64_t (&field)[2], int kv) {
    return kv != 0 ? field[1] : field[0];
  }

  LMC_HOST_DEVICE int64_t num_slots() const { return num_blocks * block_size; }
  LMC_HOST_DEVICE int64_t row_elems() const { return num_heads * head_size; }
  LMC_HOST_DEVICE int64_t row_bytes() const { return row_elems() * elem_size; }

  // True when a coordinate of kv side kv is tiled in two levels (see the header comment).
  LMC_HOST_DEVICE bool packed(int kv) const {
    return side(token_group, kv) != 1 || side(dim_group, kv) != 1;
  }
  LMC_HOST_DEVICE bool any_packed() const { return packed(0) || (num_kv == 2 && packed(1)); }

  // ---- slot -> address ----------------------------------------------------------------------

  // Elements from (block, offset 0) to (block, offset) of kv side kv, any head and dim.
  LMC_HOST_DEVICE int64_t token_part(int kv, int64_t offset) const {
    const int64_t group = side(token_group, kv);
    if (group == 1) return offset * side(token_stride, kv);
    const int64_t g = offset / group;
    return g * side(token_stride, kv) + (offset - g * group) * side(token_inner, kv);
  }

  // Elements from dim 0 to dim of one head of kv side kv, any token.
  LMC_HOST_DEVICE int64_t dim_part(int kv, int64_t dim) const {
    const int64_t group = side(dim_group, kv);
    if (group == 1) return dim * side(dim_stride, kv);
    const int64_t g = dim / group;
    return g * side(dim_stride, kv) + (dim - g * group) * side(dim_inner, kv);
  }

  // Elements from the layer base to (block, offset 0, head 0, dim 0) of kv side kv.
  LMC_HOST_DEVICE int64_t block_base(int kv, int64_t block) const {
    return side(kv_offset, kv) + block * side(block_stride, kv);
  }

  // Elements from kv side kv's base (layer base + kv_offset) to (slot, head 0, dim 0).
  LMC_HOST_DEVICE int64_t token_offset(int kv, int64_t slot) const {
    const int64_t block = slot / block_size;
    return block * side(block_stride, kv) + token_part(kv, slot - block * block_size);
  }

  // Elements from (slot, head 0, dim 0) to (slot, head, dim) of kv side kv.
  LMC_HOST_DEVICE int64_t head_dim_part(int kv, int64_t head, int64_t dim) const {
    return head * side(head_stride, kv) + dim_part(kv, dim);
  }

  // Element offset from the layer base of the row of (slot, kv side kv, head): where the head's
  // vector starts (the whole row when rows_contiguous()). slot must be in [0, num_slots).
  LMC_HOST_DEVICE int64_t row_offset(int64_t slot, int kv, int64_t head) const {
    return side(kv_offset, kv) + token_offset(kv, slot) + head * side(head_stride, kv);
  }

  // Element offset from the layer base of (slot, kv, head, dim); slot must be valid.
  LMC_HOST_DEVICE int64_t elem_offset(int64_t slot, int kv, int64_t head, int64_t dim) const {
    return row_offset(slot, kv, head) + dim_part(kv, dim);
  }

  // ---- contiguity -----------------------------------------------------------------------------

  // True when one token's row of a kv side (all heads, all dims) is contiguous in memory.
  LMC_HOST_DEVICE bool row_contiguous(int kv) const {
    return !packed(kv) && side(dim_stride, kv) == 1 &&
           (num_heads == 1 || side(head_stride, kv) == head_size);
  }
  // True when every kv side's rows are contiguous (flash_attn, flashinfer, mla).
  LMC_HOST_DEVICE bool rows_contiguous() const {
    return row_contiguous(0) && (num_kv == 1 || row_contiguous(1));
  }

  // True when one head's vector (all dims) is contiguous in memory.
  LMC_HOST_DEVICE bool head_contiguous(int kv) const {
    return !packed(kv) && side(dim_stride, kv) == 1;
  }

  // The pieces a token's row is read in: the whole row when rows_contiguous(), else one
  // head's vector per piece (row_offset(slot, kv, h) for h < pieces_per_row()).
  LMC_HOST_DEVICE int64_t piece_elems() const {
    return rows_contiguous() ? row_elems() : head_size;
  }
  LMC_HOST_DEVICE int64_t pieces_per_row() const { return rows_contiguous() ? 1 : num_heads; }

  // ---- vector width ---------------------------------------------------------------------------

  // Widest access (bytes; a power of two from elem_size up to 16) at which every head vector of
  // every slot starts and ends, counted from the layer base: dims contiguous, plain strides,
  // and every offset, stride and head_size a multiple of it. The pointers' own alignment is
  // checked apart (vector_bytes_for).
  LMC_HOST_DEVICE int64_t vector_bytes() const {
    for (int64_t w = 16; w > elem_size; w /= 2) {
      const int64_t vec = w / elem_size;
      bool ok = head_size % vec == 0;
      for (int kv = 0; ok && kv < num_kv; ++kv) {
        ok = head_contiguous(kv) && side(kv_offset, kv) % vec == 0 &&
             side(block_stride, kv) % vec == 0 && side(token_stride, kv) % vec == 0 &&
             (num_heads == 1 || side(head_stride, kv) % vec == 0);
      }
      if (ok) return w;
    }
    return elem_size;
  }

  // This layout in units of vec elements (vec divides vector_bytes() / elem_size): the same
  // slots and heads, head_size / vec words per head.
  LMC_HOST_DEVICE PagedKVLayout in_words(int64_t vec) const {
    PagedKVLayout w = *this;
    w.elem_size = elem_size * vec;
    w.head_size = head_size / vec;
    for (int kv = 0; kv < 2; ++kv) {
      w.kv_offset[kv] = kv_offset[kv] / vec;
      w.block_stride[kv] = block_stride[kv] / vec;
      w.token_stride[kv] = token_stride[kv] / vec;
      w.head_stride[kv] = num_heads == 1 ? 0 : head_stride[kv] / vec;
      w.dim_stride[kv] = vec == 1 ? dim_stride[kv] : 1;
    }
    return w;
  }

  // ---- packed access paths (what the CPU copy moves whole) -------------------------------------

  // True when a packed kv side holds, inside each token group, one 32-bit word (4 bytes of
  // consecutive dims: one dim group) of every token next to each other, so that a group of
  // tokens is a [head_size / word, group] matrix of words, rows word_stride(kv) words apart:
  // vllm_cpu_amx's K. Copies then move words with a transpose instead of elements.
  LMC_HOST_DEVICE bool words_transposed(int kv) const {
    const int64_t p = side(dim_group, kv);  // elements per word
    return packed(kv) && side(token_group, kv) > 1 && p * elem_size == 4 &&
           side(token_inner, kv) == p && (p == 1 || side(dim_inner, kv) == 1) &&
           side(dim_stride, kv) % p == 0 && head_size % p == 0;
  }
  // True when a packed kv side holds one dim of 2 consecutive tokens (an even offset and the
  // next) per 32-bit word of 2-byte elements, the words of consecutive dims adjacent inside a
  // dim group of a multiple of 8 dims: a 64-byte row of 16 dims of a token pair interleaved
  // (vllm_cpu_amx's V for bf16/fp16). Copies then (de)interleave token pairs.
  LMC_HOST_DEVICE bool token_pairs_interleaved(int kv) const {
    return packed(kv) && elem_size == 2 && side(token_group, kv) == 2 &&
           side(token_inner, kv) == 1 && side(dim_group, kv) > 1 && side(dim_group, kv) % 8 == 0 &&
           side(dim_inner, kv) == 2;
  }
  // Consecutive dims of one token that lie next to each other on a packed kv side (the dim
  // group when dim_inner is 1: vllm_cpu_amx's V for fp32), else 1.
  LMC_HOST_DEVICE int64_t dim_run(int kv) const {
    return packed(kv) && side(dim_group, kv) > 1 && side(dim_inner, kv) == 1 ? side(dim_group, kv)
                                                                             : 1;
  }

  // Words between word w and w + 1 of one token, for words_transposed sides.
  LMC_HOST_DEVICE int64_t word_stride(int kv) const {
    return side(dim_stride, kv) / side(dim_group, kv);
  }
};

// ---- slot validation ------------------------------------------------------------------------

// "No bad slot": the position every validation reports when all slots are valid. It is -1, all
// bits set, so read as unsigned long long it is ULLONG_MAX and a CUDA atomicMin over that view
// keeps the smallest bad position.
constexpr int64_t kNoBadSlot = -1;

// True when slot is padding (-1) or names a cache row (0 <= slot < num_slots).
// NOTE: unsigned arithmetic: -1 wraps to 0, INT64_MAX cannot overflow.
LMC_HOST_DEVICE LMC_INLINE bool slot_valid(int64_t slot, int64_t num_slots) {
  return static_cast<uint64_t>(slot) + 1 <= static_cast<uint64_t>(num_slots);
}

// True when slot names a cache row (not padding, not out of range).
LMC_HOST_DEVICE LMC_INLINE bool slot_holds_row(int64_t slot, int64_t num_slots) {
  return static_cast<uint64_t>(slot) < static_cast<uint64_t>(num_slots);
}

// Position of the first slot that is not slot_valid, or kNoBadSlot (host).
template <typename SlotT>
int64_t first_bad_slot(const SlotT* LMC_RESTRICT slots, int64_t num_tokens, int64_t num_slots) {
  // NOTE: the OR-reduction runs branch-free (vectorised); the position is only searched for
  // when something is wrong.
  bool any_bad = false;
  for (int64_t i = 0; i < num_tokens; ++i) {
    any_bad |= !slot_valid(static_cast<int64_t>(slots[i]), num_slots);
  }
  if (!any_bad) return kNoBadSlot;
  for (int64_t i = 0; i < num_tokens; ++i) {
    if (!slot_valid(static_cast<int64_t>(slots[i]), num_slots)) return i;
  }
  return kNoBadSlot;
}

// Widest access (bytes) of vector_bytes() that every pointer of ptrs[0..n) is aligned to.
LMC_INLINE int64_t vector_bytes_for(int64_t bytes, const void* const* ptrs, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    while (bytes > 1 && reinterpret_cast<uintptr_t>(ptrs[i]) % static_cast<uintptr_t>(bytes) != 0) {
      bytes /= 2;
    }
  }
  return bytes;
}

}  // namespace lmc
