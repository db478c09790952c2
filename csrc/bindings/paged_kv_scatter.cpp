// Binding of paged_kv_scatter: argument checks, GIL release, CPU twin or CUDA launcher.
// Tensors arrive as addresses; lmcache_native.ops.paged_kv_scatter derives them from torch.
#include "kernels/paged_kv_scatter.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/common.h"
#include "bindings/paged_kv_copy_binding.h"

namespace py = pybind11;

namespace lmc {
namespace {

void paged_kv_scatter(int64_t chunk, const std::vector<int64_t>& layer_ptrs,
                      const std::vector<int64_t>& layout, int64_t slot_mapping,
                      int64_t num_tokens, int64_t slot_elem_size, int64_t device, int64_t stream,
                      int64_t scratch) {
  const PagedKVLayout l = layout_from_flat(layout);
  require_plain_on_device(l, device, "paged_kv_scatter");
  copy_binding::check_args(layer_ptrs, slot_mapping, num_tokens, slot_elem_size);
  copy_binding::check_chunks({chunk}, {num_tokens}, num_tokens, "chunk");
  if (num_tokens == 0) return;
  const std::vector<void*> ptrs = copy_binding::to_ptrs(layer_ptrs);
  const auto num_layers = static_cast<int64_t>(ptrs.size());
  if (device < 0) {
    py::gil_scoped_release release;
    paged_kv_scatter_cpu(as_ptr<const void>(chunk), ptrs.data(), num_layers, l,
                         as_ptr<const void>(slot_mapping), slot_elem_size, num_tokens);
    return;
  }
#ifdef LMC_WITH_CUDA
  copy_binding::run_on_device(device, stream, scratch, slot_mapping, slot_elem_size,
                              l.num_slots(), [&](unsigned long long* bad_pos, cudaStream_t s) {
    LMC_CHECK_CUDA(launch_paged_kv_scatter(as_ptr<const void>(chunk), ptrs.data(), num_layers, l,
                                           as_ptr<const void>(slot_mapping), slot_elem_size,
                                           num_tokens, bad_pos, s));
  });
#else
  copy_binding::throw_no_cuda("paged_kv_scatter", stream, scratch);
#endif
}

void paged_kv_scatter_chunks(const std::vector<int64_t>& chunk_ptrs,
                             const std::vector<int64_t>& chunk_tokens,
                             const std::vector<int64_t>& layer_ptrs,
                             const std::vector<int64_t>& layout, int64_t slot_mapping,
                             int64_t num_tokens, int64_t slot_elem_size, int64_t device,
                             int64_t stream, int64_t scratch) {
  const PagedKVLayout l = layout_from_flat(layout);
  require_plain_on_device(l, device, "paged_kv_scatter_chunks");
  copy_binding::check_args(layer_ptrs, slot_mapping, num_tokens, slot_elem_size);
  copy_binding::check_chunks(chunk_ptrs, chunk_tokens, num_tokens, "chunks");
  if (num_tokens == 0) return;
  const std::vector<void*> ptrs = copy_binding::to_ptrs(layer_ptrs);
  const std::vector<void*> chunks = copy_binding::to_ptrs(chunk_ptrs);
  const auto num_layers = static_cast<int64_t>(ptrs.size());
  const auto num_chunks = static_cast<int64_t>(chunks.size());
  if (device < 0) {
    py::gil_scoped_release release;
    paged_kv_scatter_chunks_cpu(chunks.data(), chunk_tokens.data(), num_chunks, ptrs.data(),
                                num_layers, l, as_ptr<const void>(slot_mapping), slot_elem_size,
                                num_tokens);
    return;
  }
#ifdef LMC_WITH_CUDA
  copy_binding::run_on_device(device, stream, scratch, slot_mapping, slot_elem_size,
                              l.num_slots(), [&](unsigned long long* bad_pos, cudaStream_t s) {
    LMC_CHECK_CUDA(launch_paged_kv_scatter_chunks(
        chunks.data(), chunk_tokens.data(), num_chunks, ptrs.data(), num_layers, l,
        as_ptr<const void>(slot_mapping), slot_elem_size, num_tokens, bad_pos, s));
  });
#else
  copy_binding::throw_no_cuda("paged_kv_scatter_chunks", stream, scratch);
#endif
}

}  // namespace

void register_paged_kv_scatter(py::module_& m) {
  m.def("copy_isa", &paged_kv_copy_isa,
        "Instruction set of the CPU scatter into vllm_cpu's transposed K: 'avx2' or 'sse2'.");
  m.def("copy_set_isa", &paged_kv_copy_set_isa, py::arg("isa"),
        "Forces that instruction set (ValueError when unknown or unsupported here).");
  m.def("copy_supported_isas", &paged_kv_copy_supported_isas,
        "Instruction sets of that scatter this CPU can run, best last.");
  m.def("paged_kv_scatter", &paged_kv_scatter, py::arg("chunk"), py::arg("layer_ptrs"),
        py::arg("layout"), py::arg("slot_mapping"), py::arg("num_tokens"),
        py::arg("slot_elem_size"), py::arg("device"), py::arg("stream"), py::arg("scratch"),
        "Chunk buffer [num_kv, num_layers, num_tokens, row] -> paged caches. Addresses only; "
        "device -1 runs the CPU twin, else the CUDA kernel on `stream` with `scratch` an int64 "
        "device word for the slot check. Raises IndexError for an out-of-range slot.");
  m.def("paged_kv_scatter_chunks", &paged_kv_scatter_chunks, py::arg("chunk_ptrs"),
        py::arg("chunk_tokens"), py::arg("layer_ptrs"), py::arg("layout"),
        py::arg("slot_mapping"), py::arg("num_tokens"), py::arg("slot_elem_size"),
        py::arg("device"), py::arg("stream"), py::arg("scratch"),
        "Many chunk buffers -> paged caches in one call: chunk_ptrs[c] [num_kv, num_layers, "
        "chunk_tokens[c], row] supplies the next chunk_tokens[c] slots. Otherwise as "
        "paged_kv_scatter; ValueError when the counts do not add up to num_tokens.");
}

}  // namespace lmc
