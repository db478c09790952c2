// Helpers shared by the binding files: layout checks, pointer and stream casts, the CUDA device
// guard and what a CUDA entry point does in a build without CUDA kernels.
// Bindings validate arguments, release the GIL and call into csrc/kernels/.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "common/check.h"
#include "kernels/paged_kv_layout.h"

#ifdef LMC_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lmc {

// Checks every field of a layout (std::invalid_argument naming the field); run when Python
// builds a _C.PagedKVLayout, so every layout a binding receives has passed it.
void check_layout(const PagedKVLayout& l);

// Refuses, with std::invalid_argument (ValueError), a packed layout in a CUDA entry point: vLLM
// packs caches for AMX only on CPUs, and the CUDA kernels read plain strides only.
inline void require_plain_layout(const PagedKVLayout& l, const char* op) {
  LMC_CHECK_ARG(!l.any_packed(), op,
                ": packed (AMX) cache layouts are CPU caches; the CUDA kernels do not read them");
}

template <typename T>
inline T* as_ptr(int64_t address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

// What a CUDA entry point does, after its argument checks, in a build without CUDA kernels.
[[noreturn]] inline void throw_no_cuda(const char* op) {
  throw std::runtime_error(detail::concat(
      op, ": lmcache_native was built without CUDA kernels (LMC_CUDA=OFF or no nvcc)"));
}

#ifdef LMC_WITH_CUDA
inline cudaStream_t as_stream(int64_t handle) {
  return reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(handle));
}

// Makes `device` current for the scope and restores the previous device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    LMC_CHECK_CUDA(cudaGetDevice(&prev_));
    if (prev_ != device) LMC_CHECK_CUDA(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(prev_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};
#endif

}  // namespace lmc
