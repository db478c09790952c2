// The one compiled module, lmcache_native._C. Each kernel registers its own functions from
// bindings/<name>.cpp; this file owns the module-level attributes and exception mapping.
#include <pybind11/pybind11.h>

#include "common/check.h"
#include "common/thread_pool.h"

namespace py = pybind11;

namespace lmc {
void register_paged_kv_layout(py::module_& m);
void register_slot_ranges(py::module_& m);
void register_paged_kv_gather(py::module_& m);
void register_paged_kv_scatter(py::module_& m);
void register_kv_chunk_md5(py::module_& m);
}  // namespace lmc

PYBIND11_MODULE(_C, m) {
  m.doc() = "lmcache-native kernels (CPU twins always; CUDA when built with LMC_CUDA=ON/AUTO)";
  m.attr("__version__") = LMC_VERSION;
  m.attr("COMMIT_ID") = LMC_COMMIT_ID;
#ifdef LMC_WITH_CUDA
  m.attr("HAS_CUDA") = true;
#else
  m.attr("HAS_CUDA") = false;
#endif
  // CMAKE_CUDA_ARCHITECTURES of the build, comma-separated ("" without CUDA kernels).
#ifdef LMC_CUDA_ARCHS_BUILT
  m.attr("CUDA_ARCHS") = LMC_CUDA_ARCHS_BUILT;
#else
  m.attr("CUDA_ARCHS") = "";
#endif

  // std::invalid_argument -> ValueError and std::out_of_range -> IndexError are pybind11's
  // built-in translations; CUDA failures get their own RuntimeError subclass.
  py::register_exception<lmc::CudaError>(m, "CudaError", PyExc_RuntimeError);

  m.def("num_threads", &lmc::num_threads, "Threads used by the CPU twins.");
  m.def("set_num_threads", &lmc::set_num_threads, py::arg("n"),
        "Sets the threads used by the CPU twins (>= 1).");

  lmc::register_paged_kv_layout(m);
  lmc::register_slot_ranges(m);
  lmc::register_paged_kv_gather(m);
  lmc::register_paged_kv_scatter(m);
  lmc::register_kv_chunk_md5(m);
}
