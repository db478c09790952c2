// CPU twin of paged_kv_scatter (declared in paged_kv_scatter.h); the loop is
// paged_kv_copy_impl.h.
#include "kernels/paged_kv_scatter.h"

#include "kernels/paged_kv_copy_impl.h"

namespace lmc {

void paged_kv_scatter_cpu(const void* chunk, void* const* layer_ptrs, int64_t num_layers,
                          const PagedKVLayout& layout, const void* slot_mapping,
                          int64_t slot_elem_size, int64_t num_tokens) {
  // NOTE: the shared loop moves bytes in either direction through non-const pointers; the
  // chunk is only read when kGather is false.
  copy_detail::paged_kv_copy_cpu</*kGather=*/false>(
      const_cast<const void* const*>(layer_ptrs), num_layers, layout, slot_mapping,
      slot_elem_size, num_tokens, const_cast<void*>(chunk));
}

}  // namespace lmc
