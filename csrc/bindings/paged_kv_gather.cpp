// Binding of paged_kv_gather: argument checks, GIL release, CPU twin or CUDA launcher.
// Tensors arrive as addresses; lmcache_native.ops.paged_kv_gather derives them from torch.
#include "kernels/paged_kv_gather.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/common.h"
#include "bindings/paged_kv_copy_binding.h"

namespace py = pybind11;

namespace lmc {
namespace {

void paged_kv_gather(const std::vector<int64_t>& layer_ptrs, const std::vector<int64_t>& layout,
                     int64_t slot_mapping, int64_t num_tokens, int64_t slot_elem_size,
                     int64_t out, int64_t device, int64_t stream, int64_t scratch) {
  const PagedKVLayout l = layout_from_flat(layout);
  require_plain_on_device(l, device, "paged_kv_gather");
  copy_binding::check_args(layer_ptrs, slot_mapping, num_tokens, slot_elem_size);
  copy_binding::check_chunks({out}, {num_tokens}, num_tokens, "out");
  if (num_tokens == 0) return;
  const std::vector<void*> ptrs = copy_binding::to_ptrs(layer_ptrs);
  const auto num_layers = static_cast<int64_t>(ptrs.size());
  if (device < 0) {
    py::gil_scoped_release release;
    paged_kv_gather_cpu(ptrs.data(), num_layers, l, as_ptr<const void>(slot_mapping),
                        slot_elem_size, num_tokens, as_ptr<void>(out));
    return;
  }
#ifdef LMC_WITH_CUDA
  copy_binding::run_on_device(device, stream, scratch, slot_mapping, slot_elem_size,
                              l.num_slots(), [&](unsigned long long* bad_pos, cudaStream_t s) {
    LMC_CHECK_CUDA(launch_paged_kv_gather(ptrs.data(), num_layers, l,
                                          as_ptr<const void>(slot_mapping), slot_elem_size,
                                          num_tokens, as_ptr<void>(out), bad_pos, s));
  });
#else
  copy_binding::throw_no_cuda("paged_kv_gather", stream, scratch);
#endif
}

void paged_kv_gather_chunks(const std::vector<int64_t>& layer_ptrs,
                            const std::vector<int64_t>& layout, int64_t slot_mapping,
                            int64_t num_tokens, int64_t slot_elem_size,
                            const std::vector<int64_t>& out_ptrs,
                            const std::vector<int64_t>& chunk_tokens, int64_t device,
                            int64_t stream, int64_t scratch) {
  const PagedKVLayout l = layout_from_flat(layout);
  require_plain_on_device(l, device, "paged_kv_gather_chunks");
  copy_binding::check_args(layer_ptrs, slot_mapping, num_tokens, slot_elem_size);
  copy_binding::check_chunks(out_ptrs, chunk_tokens, num_tokens, "outs");
  if (num_tokens == 0) return;
  const std::vector<void*> ptrs = copy_binding::to_ptrs(layer_ptrs);
  const std::vector<void*> outs = copy_binding::to_ptrs(out_ptrs);
  const auto num_layers = static_cast<int64_t>(ptrs.size());
  const auto num_chunks = static_cast<int64_t>(outs.size());
  if (device < 0) {
    py::gil_scoped_release release;
    paged_kv_gather_chunks_cpu(ptrs.data(), num_layers, l, as_ptr<const void>(slot_mapping),
                               slot_elem_size, num_tokens, outs.data(), chunk_tokens.data(),
                               num_chunks);
    return;
  }
#ifdef LMC_WITH_CUDA
  copy_binding::run_on_device(device, stream, scratch, slot_mapping, slot_elem_size,
                              l.num_slots(), [&](unsigned long long* bad_pos, cudaStream_t s) {
    LMC_CHECK_CUDA(launch_paged_kv_gather_chunks(
        ptrs.data(), num_layers, l, as_ptr<const void>(slot_mapping), slot_elem_size, num_tokens,
        outs.data(), chunk_tokens.data(), num_chunks, bad_pos, s));
  });
#else
  copy_binding::throw_no_cuda("paged_kv_gather_chunks", stream, scratch);
#endif
}

}  // namespace

void register_paged_kv_gather(py::module_& m) {
  m.def("paged_kv_gather", &paged_kv_gather, py::arg("layer_ptrs"), py::arg("layout"),
        py::arg("slot_mapping"), py::arg("num_tokens"), py::arg("slot_elem_size"), py::arg("out"),
        py::arg("device"), py::arg("stream"), py::arg("scratch"),
        "Paged caches -> chunk buffer [num_kv, num_layers, num_tokens, row]. Addresses only; "
        "device -1 runs the CPU twin, else the CUDA kernel on `stream` with `scratch` an int64 "
        "device word for the slot check. Raises IndexError for an out-of-range slot.");
  m.def("paged_kv_gather_chunks", &paged_kv_gather_chunks, py::arg("layer_ptrs"),
        py::arg("layout"), py::arg("slot_mapping"), py::arg("num_tokens"),
        py::arg("slot_elem_size"), py::arg("out_ptrs"), py::arg("chunk_tokens"), py::arg("device"),
        py::arg("stream"), py::arg("scratch"),
        "Paged caches -> many chunk buffers in one call: out_ptrs[c] [num_kv, num_layers, "
        "chunk_tokens[c], row] takes the next chunk_tokens[c] slots. Otherwise as "
        "paged_kv_gather; ValueError when the counts do not add up to num_tokens.");
}

}  // namespace lmc
