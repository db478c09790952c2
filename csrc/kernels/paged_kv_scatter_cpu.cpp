// CPU twin of paged_kv_scatter (declared in paged_kv_scatter.h); the loop is
// paged_kv_copy_impl.h.
#include "kernels/paged_kv_copy_impl.h"
#include "kernels/paged_kv_scatter.h"

namespace lmc {

// NOTE: the shared loop moves bytes in either direction through non-const pointers; the
// chunks are only read when kGather is false.

void paged_kv_scatter_cpu(const void* chunk, void* const* layer_ptrs, int64_t num_layers,
                          const PagedKVLayout& layout, const void* slot_mapping,
                          int64_t slot_elem_size, int64_t num_tokens) {
  void* chunks[1] = {const_cast<void*>(chunk)};
  copy_detail::paged_kv_copy_cpu</*kGather=*/false>(
      const_cast<const void* const*>(layer_ptrs), num_layers, layout, slot_mapping, slot_elem_size,
      num_tokens, chunks, &num_tokens, 1);
}

void paged_kv_scatter_chunks_cpu(const void* const* chunks, const int64_t* chunk_tokens,
                                 int64_t num_chunks, void* const* layer_ptrs, int64_t num_layers,
                                 const PagedKVLayout& layout, const void* slot_mapping,
                                 int64_t slot_elem_size, int64_t num_tokens) {
  copy_detail::paged_kv_copy_cpu</*kGather=*/false>(
      const_cast<const void* const*>(layer_ptrs), num_layers, layout, slot_mapping, slot_elem_size,
      num_tokens, const_cast<void* const*>(chunks), chunk_tokens, num_chunks);
}

}  // namespace lmc
