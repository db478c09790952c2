// CPU twin of paged_kv_gather (declared in paged_kv_gather.h); the loop is paged_kv_copy_impl.h.
#include "kernels/paged_kv_copy_impl.h"
#include "kernels/paged_kv_gather.h"

namespace lmc {

void paged_kv_gather_cpu(const void* const* layer_ptrs, int64_t num_layers,
                         const PagedKVLayout& layout, const void* slot_mapping,
                         int64_t slot_elem_size, int64_t num_tokens, void* out) {
  copy_detail::paged_kv_copy_cpu</*kGather=*/true>(layer_ptrs, num_layers, layout, slot_mapping,
                                                   slot_elem_size, num_tokens, &out, &num_tokens,
                                                   1);
}

void paged_kv_gather_chunks_cpu(const void* const* layer_ptrs, int64_t num_layers,
                                const PagedKVLayout& layout, const void* slot_mapping,
                                int64_t slot_elem_size, int64_t num_tokens, void* const* outs,
                                const int64_t* chunk_tokens, int64_t num_chunks) {
  copy_detail::paged_kv_copy_cpu</*kGather=*/true>(layer_ptrs, num_layers, layout, slot_mapping,
                                                   slot_elem_size, num_tokens, outs, chunk_tokens,
                                                   num_chunks);
}

}  // namespace lmc
