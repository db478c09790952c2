// CUDA paged_kv_gather (declared in paged_kv_gather.h); kernels in paged_kv_copy_impl.cuh.
#include "kernels/paged_kv_copy_impl.cuh"
#include "kernels/paged_kv_gather.h"

namespace lmc {

cudaError_t launch_paged_kv_gather(const void* const* layer_ptrs, int64_t num_layers,
                                   const PagedKVLayout& layout, const void* slot_mapping,
                                   int64_t slot_elem_size, int64_t num_tokens, void* out,
                                   unsigned long long* bad_pos, cudaStream_t stream) {
  return copy_cuda::launch_paged_kv_copy</*kGather=*/true>(
      const_cast<void* const*>(layer_ptrs), num_layers, layout, slot_mapping, slot_elem_size,
      num_tokens, &out, &num_tokens, 1, bad_pos, stream);
}

cudaError_t launch_paged_kv_gather_chunks(const void* const* layer_ptrs, int64_t num_layers,
                                          const PagedKVLayout& layout, const void* slot_mapping,
                                          int64_t slot_elem_size, int64_t num_tokens,
                                          void* const* outs, const int64_t* chunk_tokens,
                                          int64_t num_chunks, unsigned long long* bad_pos,
                                          cudaStream_t stream) {
  return copy_cuda::launch_paged_kv_copy</*kGather=*/true>(
      const_cast<void* const*>(layer_ptrs), num_layers, layout, slot_mapping, slot_elem_size,
      num_tokens, outs, chunk_tokens, num_chunks, bad_pos, stream);
}

}  // namespace lmc
