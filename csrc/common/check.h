// Argument, index and CUDA checks that turn into typed exceptions at the binding layer:
//   std::invalid_argument -> ValueError, std::out_of_range -> IndexError,
//   lmc::CudaError -> lmcache_native.CudaError (a RuntimeError).
// Kernels never throw; CPU twins and bindings do.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace lmc {

class CudaError : public std::runtime_error {
 public:
  explicit CudaError(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace lmc

// Throws std::invalid_argument (-> ValueError) built from the streamed message parts.
#define LMC_CHECK_ARG(cond, ...)                                                  \
  do {                                                                            \
    if (!(cond)) throw std::invalid_argument(::lmc::detail::concat(__VA_ARGS__)); \
  } while (0)

// Throws std::out_of_range (-> IndexError) built from the streamed message parts.
#define LMC_CHECK_INDEX(cond, ...)                                            \
  do {                                                                        \
    if (!(cond)) throw std::out_of_range(::lmc::detail::concat(__VA_ARGS__)); \
  } while (0)

#ifdef LMC_WITH_CUDA
#include <cuda_runtime_api.h>
// Throws lmc::CudaError naming the failed call when a CUDA API call or launch fails.
#define LMC_CHECK_CUDA(expr)                                                        \
  do {                                                                              \
    cudaError_t lmc_err_ = (expr);                                                  \
    if (lmc_err_ != cudaSuccess)                                                    \
      throw ::lmc::CudaError(                                                       \
          ::lmc::detail::concat(#expr, " failed: ", cudaGetErrorString(lmc_err_))); \
  } while (0)
#endif
