// Helpers shared by the binding files: the flat layout form and pointer casts.
// Bindings validate arguments, release the GIL and call into csrc/kernels/.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "common/check.h"
#include "kernels/paged_kv_layout.h"

namespace lmc {

// Builds a PagedKVLayout from the 24 int64 values produced by
// lmcache_native.ops._layout.describe (same order as the struct fields).
inline PagedKVLayout layout_from_flat(const std::vector<int64_t>& v) {
  LMC_CHECK_ARG(static_cast<int>(v.size()) == kLayoutFlatSize, "layout must have ",
                kLayoutFlatSize, " values, got ", v.size());
  PagedKVLayout l{};
  l.num_kv = v[0];
  l.num_blocks = v[1];
  l.block_size = v[2];
  l.num_heads = v[3];
  l.head_size = v[4];
  l.elem_size = v[5];
  for (int kv = 0; kv < 2; ++kv) {
    l.kv_offset[kv] = v[6 + kv];
    l.block_stride[kv] = v[8 + kv];
    l.token_stride[kv] = v[10 + kv];
    l.head_stride[kv] = v[12 + kv];
    l.dim_stride[kv] = v[14 + kv];
    l.token_group[kv] = v[16 + kv];
    l.token_inner[kv] = v[18 + kv];
    l.dim_group[kv] = v[20 + kv];
    l.dim_inner[kv] = v[22 + kv];
    LMC_CHECK_ARG(l.token_group[kv] >= 1 && l.dim_group[kv] >= 1,
                  "layout token/dim groups must be >= 1, got ", l.token_group[kv], "/",
                  l.dim_group[kv]);
  }
  LMC_CHECK_ARG(l.num_kv == 1 || l.num_kv == 2, "layout num_kv must be 1 or 2, got ", l.num_kv);
  LMC_CHECK_ARG(l.num_blocks >= 0, "layout num_blocks must be >= 0, got ", l.num_blocks);
  LMC_CHECK_ARG(l.block_size > 0, "layout block_size must be > 0, got ", l.block_size);
  LMC_CHECK_ARG(l.num_heads > 0, "layout num_heads must be > 0, got ", l.num_heads);
  LMC_CHECK_ARG(l.head_size > 0, "layout head_size must be > 0, got ", l.head_size);
  LMC_CHECK_ARG(l.elem_size == 1 || l.elem_size == 2 || l.elem_size == 4 || l.elem_size == 8,
                "layout elem_size must be 1, 2, 4 or 8 bytes, got ", l.elem_size);
  LMC_CHECK_ARG(!l.any_packed() || (l.block_size % l.token_group[0] == 0 &&
                                     l.block_size % l.token_group[l.num_kv - 1] == 0 &&
                                     l.head_size % l.dim_group[0] == 0 &&
                                     l.head_size % l.dim_group[l.num_kv - 1] == 0),
                "a packed layout's groups must divide block_size and head_size");
  return l;
}

// Refuses, with std::invalid_argument (ValueError), a packed layout on a CUDA device: vLLM
// packs caches for AMX only on CPUs, and the CUDA kernels read plain strides only.
inline void require_plain_on_device(const PagedKVLayout& l, int64_t device, const char* op) {
  LMC_CHECK_ARG(device < 0 || !l.any_packed(), op,
                ": packed (AMX) cache layouts are CPU caches; the CUDA kernels do not read them");
}

template <typename T>
inline T* as_ptr(int64_t address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

}  // namespace lmc
