// Binding of paged_kv_scatter: chunk buffers -> paged caches (the load direction), and the
// instruction-set switch of the CPU scatter. Tensors arrive as addresses;
// lmcache_native.ops.paged_kv_scatter derives them from torch. The entry points and their
// checks are copy_binding::register_copy's; this file supplies the kernels.
#include "kernels/paged_kv_scatter.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/paged_kv_copy.h"

namespace py = pybind11;

namespace lmc {
namespace {

using copy_binding::CopyArgs;

struct ScatterKernels {
  static void cpu(const CopyArgs& a) {
    paged_kv_scatter_cpu(a.buffers[0], a.layers.data(), a.num_layers(), a.layout, a.slots,
                         a.slot_elem_size, a.num_tokens);
  }
  static void cpu_chunks(const CopyArgs& a) {
    paged_kv_scatter_chunks_cpu(a.buffers.data(), a.buffer_tokens.data(), a.num_buffers(),
                                a.layers.data(), a.num_layers(), a.layout, a.slots,
                                a.slot_elem_size, a.num_tokens);
  }
#ifdef LMC_WITH_CUDA
  static cudaError_t cuda(const CopyArgs& a, unsigned long long* bad_pos, cudaStream_t s) {
    return launch_paged_kv_scatter(a.buffers[0], a.layers.data(), a.num_layers(), a.layout, a.slots,
                                   a.slot_elem_size, a.num_tokens, bad_pos, s);
  }
  static cudaError_t cuda_chunks(const CopyArgs& a, unsigned long long* bad_pos, cudaStream_t s) {
    return launch_paged_kv_scatter_chunks(a.buffers.data(), a.buffer_tokens.data(), a.num_buffers(),
                                          a.layers.data(), a.num_layers(), a.layout, a.slots,
                                          a.slot_elem_size, a.num_tokens, bad_pos, s);
  }
#endif
};

}  // namespace

void register_paged_kv_scatter(py::module_& m) {
  m.def("copy_isa", &paged_kv_copy_isa,
        "Instruction set of the CPU scatter into vllm_cpu's transposed K: 'avx2' or 'sse2'.");
  m.def("copy_set_isa", &paged_kv_copy_set_isa, py::arg("isa"),
        "Forces that instruction set (ValueError when unknown or unsupported here).");
  m.def("copy_supported_isas", &paged_kv_copy_supported_isas,
        "Instruction sets of that scatter this CPU can run, best last.");
  copy_binding::register_copy<ScatterKernels>(
      m, "paged_kv_scatter", "chunk", "chunks",
      "chunk [num_kv, num_layers, num_tokens, row] -> paged caches (addresses).",
      "chunks[c] [num_kv, num_layers, chunk_tokens[c], row] -> paged caches, each into the next "
      "chunk_tokens[c] slots.");
}

}  // namespace lmc
