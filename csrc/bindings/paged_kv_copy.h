// Binding helpers shared by paged_kv_gather.cpp and paged_kv_scatter.cpp: the checked form of a
// copy's arguments, the CUDA target of a copy, and the read-back of the device-side slot check.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "common/check.h"

#ifdef LMC_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lmc {
namespace copy_binding {

// The message of the IndexError for slot_mapping[position] = value outside a cache of num_slots
// slots (the CPU twins' message; the non-blocking CUDA path forms it in Python through
// _C.paged_kv_bad_slot_message).
inline std::string bad_slot_message(int64_t position, int64_t value, int64_t num_slots) {
  return detail::concat("slot_mapping[", position, "] = ", value,
                        " is out of range: slots must be -1 (padding) or in [0, ", num_slots,
                        ") (num_blocks * block_size); nothing was written");
}

// One paged copy's arguments as addresses, checked: the layers, the slots and the chunk
// buffers (one for the single-buffer ops) with the tokens of each.
struct CopyArgs {
  std::vector<void*> layers;
  PagedKVLayout layout;
  const void* slots;
  int64_t slot_elem_size;
  int64_t num_tokens;
  std::vector<void*> buffers;
  std::vector<int64_t> buffer_tokens;

  int64_t num_layers() const { return static_cast<int64_t>(layers.size()); }
  int64_t num_buffers() const { return static_cast<int64_t>(buffers.size()); }
};

// Checks what the kernels cannot (counts, null pointers, slot width; one token count per
// buffer, none negative, adding up to num_tokens) and converts the addresses. `buffers_name`
// names the buffers in errors ("out", "outs", "chunk", "chunks").
inline CopyArgs copy_args(const std::vector<int64_t>& layer_ptrs, const PagedKVLayout& layout,
                          int64_t slot_mapping, int64_t num_tokens, int64_t slot_elem_size,
                          const std::vector<int64_t>& buffer_ptrs,
                          const std::vector<int64_t>& buffer_tokens, const char* buffers_name) {
  LMC_CHECK_ARG(!layer_ptrs.empty(), "kv_caches must hold at least one layer");
  LMC_CHECK_ARG(num_tokens >= 0, "num_tokens must be >= 0, got ", num_tokens);
  LMC_CHECK_ARG(slot_elem_size == 4 || slot_elem_size == 8,
                "slot_mapping must be int32 or int64 (element size 4 or 8), got element size ",
                slot_elem_size);
  if (num_tokens > 0) {
    for (size_t i = 0; i < layer_ptrs.size(); ++i) {
      LMC_CHECK_ARG(layer_ptrs[i] != 0, "kv_caches[", i, "] has a null data pointer");
    }
    LMC_CHECK_ARG(slot_mapping != 0, "slot_mapping has a null data pointer");
  }
  LMC_CHECK_ARG(buffer_ptrs.size() == buffer_tokens.size(), buffers_name, ": ", buffer_ptrs.size(),
                " addresses but ", buffer_tokens.size(), " token counts");
  int64_t total = 0;
  for (size_t c = 0; c < buffer_tokens.size(); ++c) {
    LMC_CHECK_ARG(buffer_tokens[c] >= 0, buffers_name, "[", c, "] has ", buffer_tokens[c],
                  " tokens");
    LMC_CHECK_ARG(buffer_tokens[c] == 0 || buffer_ptrs[c] != 0, buffers_name, "[", c,
                  "] has a null data pointer");
    total += buffer_tokens[c];
  }
  LMC_CHECK_ARG(total == num_tokens, buffers_name, " hold ", total,
                " tokens in all, but slot_mapping has ", num_tokens);
  CopyArgs a{{}, layout,       as_ptr<const void>(slot_mapping), slot_elem_size, num_tokens,
             {}, buffer_tokens};
  for (int64_t p : layer_ptrs) a.layers.push_back(as_ptr<void>(p));
  for (int64_t p : buffer_ptrs) a.buffers.push_back(as_ptr<void>(p));
  return a;
}

// Where a CUDA copy runs: the device, the caller's stream, an 8-byte device word for the slot
// check, and whether the call waits for the copy (and raises for a bad slot) before returning.
struct CudaTarget {
  int64_t device;
  int64_t stream;
  int64_t bad_pos;
  bool blocking;
};

inline void check_target(const CudaTarget& t, const PagedKVLayout& layout, const char* op) {
  require_plain_layout(layout, op);
  LMC_CHECK_ARG(t.device >= 0, op, ": device must be a CUDA device index >= 0, got ", t.device);
  LMC_CHECK_ARG(t.bad_pos != 0, op, ": bad_pos (device slot-check word) must not be null");
}

#ifdef LMC_WITH_CUDA
// Waits for `stream`, then throws std::out_of_range when the validation kernel flagged a slot.
// NOTE: this is the one host wait of a blocking CUDA copy; it is what lets an out-of-range slot
// raise IndexError from the call that passed it. A non-blocking copy skips it: the caller reads
// the flag back after an event (lmcache_native.ops.CopyHandle.wait).
inline void raise_if_bad_slot(const unsigned long long* bad_pos, const CopyArgs& a,
                              cudaStream_t stream) {
  unsigned long long bad = 0;
  LMC_CHECK_CUDA(cudaMemcpyAsync(&bad, bad_pos, sizeof(bad), cudaMemcpyDeviceToHost, stream));
  LMC_CHECK_CUDA(cudaStreamSynchronize(stream));
  if (bad == ~0ULL) return;
  int64_t value = 0;
  const char* src =
      static_cast<const char*>(a.slots) + static_cast<int64_t>(bad) * a.slot_elem_size;
  if (a.slot_elem_size == 8) {
    LMC_CHECK_CUDA(cudaMemcpy(&value, src, 8, cudaMemcpyDeviceToHost));
  } else {
    int32_t v32 = 0;
    LMC_CHECK_CUDA(cudaMemcpy(&v32, src, 4, cudaMemcpyDeviceToHost));
    value = v32;
  }
  throw std::out_of_range(bad_slot_message(static_cast<int64_t>(bad), value, a.layout.num_slots()));
}

// Runs a checked copy on its target: releases the GIL, makes the device current, calls
// `launch(bad_pos, stream)` (which enqueues the slot validation into the bad_pos word and the
// copy, and returns the launch error), then, when blocking, raises for a flagged slot.
template <class Launch>
void run_cuda(const CopyArgs& a, const CudaTarget& t, Launch&& launch) {
  if (a.num_tokens == 0) return;
  pybind11::gil_scoped_release release;
  DeviceGuard guard(static_cast<int>(t.device));
  auto* bad_pos = as_ptr<unsigned long long>(t.bad_pos);
  const cudaStream_t s = as_stream(t.stream);
  LMC_CHECK_CUDA(launch(bad_pos, s));
  if (t.blocking) raise_if_bad_slot(bad_pos, a, s);
}
#endif

// Registers what every copy direction shares: the bad-slot message of the non-blocking path.
inline void register_copy_common(pybind11::module_& m) {
  m.def("paged_kv_bad_slot_message", &bad_slot_message, pybind11::arg("position"),
        pybind11::arg("value"), pybind11::arg("num_slots"),
        "The IndexError message for slot_mapping[position] = value outside num_slots slots.");
}

// Registers the four entry points of one copy direction, `<name>_cpu`, `<name>_cuda`,
// `<name>_chunks_cpu` and `<name>_chunks_cuda`, all taking the caches, the slots, then the
// chunk buffers (`buf`: one address; `bufs`: a list with `chunk_tokens`). Kernels K supplies
// cpu / cpu_chunks (const CopyArgs&) and, with CUDA, cuda / cuda_chunks (const CopyArgs&,
// unsigned long long* bad_pos, cudaStream_t) returning the launch error.
template <class K>
void register_copy(pybind11::module_& m, const std::string& name, const char* buf, const char* bufs,
                   const std::string& doc, const std::string& chunks_doc) {
  namespace py = pybind11;
  using Ptrs = std::vector<int64_t>;
  const std::string chunks_name = name + "_chunks";
  // NOTE: pybind11 copies the names and docs; the strings only need to outlive each def.
  m.def(
      (name + "_cpu").c_str(),
      [name, buf](const Ptrs& layers, const PagedKVLayout& layout, int64_t slots, int64_t n,
                  int64_t slot_elem_size, int64_t buffer) {
        const CopyArgs a = copy_args(layers, layout, slots, n, slot_elem_size, {buffer}, {n}, buf);
        if (a.num_tokens == 0) return;
        py::gil_scoped_release release;
        K::cpu(a);
      },
      py::arg("layer_ptrs"), py::arg("layout"), py::arg("slot_mapping"), py::arg("num_tokens"),
      py::arg("slot_elem_size"), py::arg(buf),
      (doc + " CPU twin; IndexError for a slot outside [-1, num_slots), nothing written.").c_str());
  m.def(
      (name + "_cuda").c_str(),
      [name, buf](const Ptrs& layers, const PagedKVLayout& layout, int64_t slots, int64_t n,
                  int64_t slot_elem_size, int64_t buffer, int64_t device, int64_t stream,
                  int64_t bad_pos, bool blocking) {
        const CopyArgs a = copy_args(layers, layout, slots, n, slot_elem_size, {buffer}, {n}, buf);
        const CudaTarget t{device, stream, bad_pos, blocking};
        check_target(t, a.layout, name.c_str());
#ifdef LMC_WITH_CUDA
        run_cuda(a, t, [&](unsigned long long* bad, cudaStream_t s) { return K::cuda(a, bad, s); });
#else
        throw_no_cuda(name.c_str());
#endif
      },
      py::arg("layer_ptrs"), py::arg("layout"), py::arg("slot_mapping"), py::arg("num_tokens"),
      py::arg("slot_elem_size"), py::arg(buf), py::arg("device"), py::arg("stream"),
      py::arg("bad_pos"), py::arg("blocking"),
      (doc + " CUDA kernels on `stream`; the slot check writes the first bad position (or all "
             "ones) to the 8-byte device word bad_pos. blocking: wait for the copy and raise "
             "IndexError for a bad slot; else only enqueue.")
          .c_str());
  m.def(
      (chunks_name + "_cpu").c_str(),
      [bufs](const Ptrs& layers, const PagedKVLayout& layout, int64_t slots, int64_t n,
             int64_t slot_elem_size, const Ptrs& buffers, const Ptrs& chunk_tokens) {
        const CopyArgs a =
            copy_args(layers, layout, slots, n, slot_elem_size, buffers, chunk_tokens, bufs);
        if (a.num_tokens == 0) return;
        py::gil_scoped_release release;
        K::cpu_chunks(a);
      },
      py::arg("layer_ptrs"), py::arg("layout"), py::arg("slot_mapping"), py::arg("num_tokens"),
      py::arg("slot_elem_size"), py::arg(bufs), py::arg("chunk_tokens"),
      (chunks_doc + " CPU twin; ValueError when the counts do not add up to num_tokens.").c_str());
  m.def(
      (chunks_name + "_cuda").c_str(),
      [chunks_name, bufs](const Ptrs& layers, const PagedKVLayout& layout, int64_t slots, int64_t n,
                          int64_t slot_elem_size, const Ptrs& buffers, const Ptrs& chunk_tokens,
                          int64_t device, int64_t stream, int64_t bad_pos, bool blocking) {
        const CopyArgs a =
            copy_args(layers, layout, slots, n, slot_elem_size, buffers, chunk_tokens, bufs);
        const CudaTarget t{device, stream, bad_pos, blocking};
        check_target(t, a.layout, chunks_name.c_str());
#ifdef LMC_WITH_CUDA
        run_cuda(a, t, [&](unsigned long long* bad, cudaStream_t s) {
          return K::cuda_chunks(a, bad, s);
        });
#else
        throw_no_cuda(chunks_name.c_str());
#endif
      },
      py::arg("layer_ptrs"), py::arg("layout"), py::arg("slot_mapping"), py::arg("num_tokens"),
      py::arg("slot_elem_size"), py::arg(bufs), py::arg("chunk_tokens"), py::arg("device"),
      py::arg("stream"), py::arg("bad_pos"), py::arg("blocking"),
      (chunks_doc + " CUDA kernels on `stream`, as " + name + "_cuda.").c_str());
}

}  // namespace copy_binding
}  // namespace lmc
