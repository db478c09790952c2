// CUDA paged_kv_scatter (declared in paged_kv_scatter.h); kernels in paged_kv_copy_impl.cuh.
#include "kernels/paged_kv_copy_impl.cuh"
#include "kernels/paged_kv_scatter.h"

namespace lmc {

// NOTE: the shared kernel moves Words in either direction through non-const pointers; the
// chunks are only read when kGather is false.

cudaError_t launch_paged_kv_scatter(const void* chunk, void* const* layer_ptrs, int64_t num_layers,
                                    const PagedKVLayout& layout, const void* slot_mapping,
                                    int64_t slot_elem_size, int64_t num_tokens,
                                    unsigned long long* bad_pos, cudaStream_t stream) {
  void* chunks[1] = {const_cast<void*>(chunk)};
  return copy_cuda::launch_paged_kv_copy</*kGather=*/false>(
      layer_ptrs, num_layers, layout, slot_mapping, slot_elem_size, num_tokens, chunks, &num_tokens,
      1, bad_pos, stream);
}

cudaError_t launch_paged_kv_scatter_chunks(const void* const* chunks, const int64_t* chunk_tokens,
                                           int64_t num_chunks, void* const* layer_ptrs,
                                           int64_t num_layers, const PagedKVLayout& layout,
                                           const void* slot_mapping, int64_t slot_elem_size,
                                           int64_t num_tokens, unsigned long long* bad_pos,
                                           cudaStream_t stream) {
  return copy_cuda::launch_paged_kv_copy</*kGather=*/false>(
      layer_ptrs, num_layers, layout, slot_mapping, slot_elem_size, num_tokens,
      const_cast<void* const*>(chunks), chunk_tokens, num_chunks, bad_pos, stream);
}

}  // namespace lmc
