// Binding of paged_kv_gather: paged caches -> chunk buffers (the store direction). Tensors
// arrive as addresses; lmcache_native.ops.paged_kv_gather derives them from torch. The entry
// points and their checks are copy_binding::register_copy's; this file supplies the kernels.
#include "kernels/paged_kv_gather.h"

#include <pybind11/pybind11.h>

#include "bindings/paged_kv_copy.h"

namespace lmc {
namespace {

using copy_binding::CopyArgs;

struct GatherKernels {
  static void cpu(const CopyArgs& a) {
    paged_kv_gather_cpu(a.layers.data(), a.num_layers(), a.layout, a.slots, a.slot_elem_size,
                        a.num_tokens, a.buffers[0]);
  }
  static void cpu_chunks(const CopyArgs& a) {
    paged_kv_gather_chunks_cpu(a.layers.data(), a.num_layers(), a.layout, a.slots, a.slot_elem_size,
                               a.num_tokens, a.buffers.data(), a.buffer_tokens.data(),
                               a.num_buffers());
  }
#ifdef LMC_WITH_CUDA
  static cudaError_t cuda(const CopyArgs& a, unsigned long long* bad_pos, cudaStream_t s) {
    return launch_paged_kv_gather(a.layers.data(), a.num_layers(), a.layout, a.slots,
                                  a.slot_elem_size, a.num_tokens, a.buffers[0], bad_pos, s);
  }
  static cudaError_t cuda_chunks(const CopyArgs& a, unsigned long long* bad_pos, cudaStream_t s) {
    return launch_paged_kv_gather_chunks(a.layers.data(), a.num_layers(), a.layout, a.slots,
                                         a.slot_elem_size, a.num_tokens, a.buffers.data(),
                                         a.buffer_tokens.data(), a.num_buffers(), bad_pos, s);
  }
#endif
};

}  // namespace

void register_paged_kv_gather(pybind11::module_& m) {
  copy_binding::register_copy_common(m);
  copy_binding::register_copy<GatherKernels>(
      m, "paged_kv_gather", "out", "outs",
      "Paged caches -> out [num_kv, num_layers, num_tokens, row] (addresses).",
      "Paged caches -> outs[c] [num_kv, num_layers, chunk_tokens[c], row], each the next "
      "chunk_tokens[c] slots.");
}

}  // namespace lmc
