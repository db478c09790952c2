// Binding helpers shared by paged_kv_gather.cpp and paged_kv_scatter.cpp: argument checks, the
// CUDA device guard and the read-back of the device-side slot validation.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "bindings/common.h"
#include "common/check.h"

#ifdef LMC_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lmc {
namespace copy_binding {

// Checks what the kernels cannot: counts, pointers, slot width (the chunk buffers are checked
// by check_chunks).
inline void check_args(const std::vector<int64_t>& layer_ptrs, int64_t slot_mapping,
                       int64_t num_tokens, int64_t slot_elem_size) {
  LMC_CHECK_ARG(!layer_ptrs.empty(), "kv_caches must hold at least one layer");
  LMC_CHECK_ARG(num_tokens >= 0, "num_tokens must be >= 0, got ", num_tokens);
  LMC_CHECK_ARG(slot_elem_size == 4 || slot_elem_size == 8,
                "slot_mapping must be int32 or int64 (element size 4 or 8), got element size ",
                slot_elem_size);
  if (num_tokens == 0) return;
  for (size_t i = 0; i < layer_ptrs.size(); ++i) {
    LMC_CHECK_ARG(layer_ptrs[i] != 0, "kv_caches[", i, "] has a null data pointer");
  }
  LMC_CHECK_ARG(slot_mapping != 0, "slot_mapping has a null data pointer");
}

// Checks the chunk list of a copy (one buffer for the single-buffer ops): one token count per
// address, none negative, no null address for a chunk with tokens, and the counts adding up to
// slot_mapping's length.
inline void check_chunks(const std::vector<int64_t>& chunk_ptrs,
                         const std::vector<int64_t>& chunk_tokens, int64_t num_tokens,
                         const char* chunks_name) {
  LMC_CHECK_ARG(chunk_ptrs.size() == chunk_tokens.size(), chunks_name, ": ", chunk_ptrs.size(),
                " addresses but ", chunk_tokens.size(), " token counts");
  int64_t total = 0;
  for (size_t c = 0; c < chunk_tokens.size(); ++c) {
    LMC_CHECK_ARG(chunk_tokens[c] >= 0, chunks_name, "[", c, "] has ", chunk_tokens[c],
                  " tokens");
    LMC_CHECK_ARG(chunk_tokens[c] == 0 || chunk_ptrs[c] != 0, chunks_name, "[", c,
                  "] has a null data pointer");
    total += chunk_tokens[c];
  }
  LMC_CHECK_ARG(total == num_tokens, chunks_name, " hold ", total,
                " tokens in all, but slot_mapping has ", num_tokens);
}

inline std::vector<void*> to_ptrs(const std::vector<int64_t>& addresses) {
  std::vector<void*> out(addresses.size());
  for (size_t i = 0; i < addresses.size(); ++i) out[i] = as_ptr<void>(addresses[i]);
  return out;
}

#ifdef LMC_WITH_CUDA
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

// Waits for `stream`, then throws std::out_of_range when the validation kernel flagged a slot.
// NOTE: this is the one host wait of a CUDA copy; it is what lets an out-of-range slot raise
// IndexError from the call that passed it.
inline void raise_if_bad_slot(const unsigned long long* bad_pos, int64_t slot_mapping,
                              int64_t slot_elem_size, int64_t num_slots, cudaStream_t stream) {
  unsigned long long bad = 0;
  LMC_CHECK_CUDA(cudaMemcpyAsync(&bad, bad_pos, sizeof(bad), cudaMemcpyDeviceToHost, stream));
  LMC_CHECK_CUDA(cudaStreamSynchronize(stream));
  if (bad == ~0ULL) return;
  int64_t value = 0;
  const char* src = as_ptr<const char>(slot_mapping) + static_cast<int64_t>(bad) * slot_elem_size;
  if (slot_elem_size == 8) {
    LMC_CHECK_CUDA(cudaMemcpy(&value, src, 8, cudaMemcpyDeviceToHost));
  } else {
    int32_t v32 = 0;
    LMC_CHECK_CUDA(cudaMemcpy(&v32, src, 4, cudaMemcpyDeviceToHost));
    value = v32;
  }
  throw std::out_of_range(detail::concat(
      "slot_mapping[", bad, "] = ", value, " is out of range: slots must be -1 (padding) or in [0, ",
      num_slots, ") (num_blocks * block_size); nothing was written"));
}

// Runs a copy on `device`: checks the scratch word, releases the GIL, makes `device` current,
// calls `launch(bad_pos, stream)` (which enqueues the slot validation into the scratch word and
// the copy, and checks the launch error itself), then raises for a slot the validation flagged.
template <class Launch>
void run_on_device(int64_t device, int64_t stream, int64_t scratch, int64_t slot_mapping,
                   int64_t slot_elem_size, int64_t num_slots, Launch&& launch) {
  LMC_CHECK_ARG(scratch != 0, "scratch (device validation result) must not be null");
  pybind11::gil_scoped_release release;
  DeviceGuard guard(static_cast<int>(device));
  auto* bad_pos = as_ptr<unsigned long long>(scratch);
  auto s = as_ptr<CUstream_st>(stream);
  launch(bad_pos, s);
  raise_if_bad_slot(bad_pos, slot_mapping, slot_elem_size, num_slots, s);
}
#else
// What a copy of a CUDA cache does in a build without CUDA kernels: `op` names the binding.
[[noreturn]] inline void throw_no_cuda(const char* op, int64_t stream, int64_t scratch) {
  (void)stream;
  (void)scratch;
  throw std::invalid_argument(
      detail::concat(op, ": CUDA cache passed to a build without CUDA kernels (LMC_CUDA=OFF)"));
}
#endif

}  // namespace copy_binding
}  // namespace lmc
