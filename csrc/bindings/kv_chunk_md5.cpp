// Bindings of kv_chunk_md5 (CPU twin, CUDA launcher) and of the raw multi-buffer MD5 used by
// tests and benchmarks. Validation of tensors happens in python/lmcache_native/ops/; these
// functions check what they can from plain values, release the GIL and call into kernels/.
#include "kernels/kv_chunk_md5.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "bindings/common.h"
#include "kernels/md5.h"

namespace py = pybind11;

namespace lmc {
namespace {

using Digests = std::pair<std::vector<std::vector<py::str>>, std::vector<py::str>>;

py::str hex_str(const uint8_t* digest) {
  char hex[32];
  md5_hex(digest, hex);
  return py::str(hex, 32);
}

// (per_layer[layer][chunk], combined[chunk]) hex strings from host digests.
Digests to_hex(const uint8_t* per_layer, int64_t num_layers, int64_t num_chunks) {
  std::vector<uint8_t> combined(static_cast<size_t>(num_chunks) * kMd5DigestBytes);
  kv_chunk_md5_combine(per_layer, num_layers, num_chunks, combined.data());
  Digests out;
  out.first.resize(static_cast<size_t>(num_layers));
  for (int64_t l = 0; l < num_layers; ++l) {
    out.first[l].reserve(static_cast<size_t>(num_chunks));
    for (int64_t c = 0; c < num_chunks; ++c) {
      out.first[l].push_back(hex_str(per_layer + (l * num_chunks + c) * kMd5DigestBytes));
    }
  }
  out.second.reserve(static_cast<size_t>(num_chunks));
  for (int64_t c = 0; c < num_chunks; ++c) {
    out.second.push_back(hex_str(combined.data() + c * kMd5DigestBytes));
  }
  return out;
}

void check_counts(int64_t num_tokens, int64_t chunk_size) {
  LMC_CHECK_ARG(chunk_size >= 1, "chunk_size must be >= 1, got ", chunk_size);
  LMC_CHECK_ARG(num_tokens >= 0, "num_tokens must be >= 0, got ", num_tokens);
}

Digests kv_chunk_md5_cpu_py(const std::vector<int64_t>& layer_ptrs, const PagedKVLayout& layout,
                            int64_t slot_mapping, int64_t num_tokens, int64_t chunk_size) {
  check_counts(num_tokens, chunk_size);
  const int64_t num_layers = static_cast<int64_t>(layer_ptrs.size());
  const int64_t num_chunks = kv_chunk_md5_num_chunks(num_tokens, chunk_size);
  std::vector<const uint8_t*> ptrs(layer_ptrs.size());
  for (size_t i = 0; i < ptrs.size(); ++i) ptrs[i] = as_ptr<const uint8_t>(layer_ptrs[i]);
  std::vector<uint8_t> per_layer(static_cast<size_t>(num_layers * num_chunks) * kMd5DigestBytes);
  {
    py::gil_scoped_release release;
    kv_chunk_md5_cpu(ptrs.data(), num_layers, layout, as_ptr<const int64_t>(slot_mapping),
                     num_tokens, chunk_size, per_layer.data());
  }
  return to_hex(per_layer.data(), num_layers, num_chunks);
}

Digests kv_chunk_md5_finish_py(int64_t per_layer, int64_t num_layers, int64_t num_chunks) {
  LMC_CHECK_ARG(num_layers >= 0 && num_chunks >= 0, "num_layers and num_chunks must be >= 0");
  return to_hex(as_ptr<const uint8_t>(per_layer), num_layers, num_chunks);
}

void kv_chunk_md5_cuda_py(const std::vector<int64_t>& layer_ptrs, int64_t layer_ptrs_device,
                          const PagedKVLayout& layout, int64_t slot_mapping, int64_t num_tokens,
                          int64_t chunk_size, int64_t workspace, int64_t per_layer, int64_t error,
                          int64_t stream) {
  check_counts(num_tokens, chunk_size);
  require_plain_layout(layout, "kv_chunk_md5");
#ifdef LMC_WITH_CUDA
  const int64_t num_layers = static_cast<int64_t>(layer_ptrs.size());
  std::vector<uint64_t> host_ptrs(layer_ptrs.begin(), layer_ptrs.end());
  const bool vectorized = kv_chunk_md5_cuda_vectorizable(layout, host_ptrs.data(), num_layers);
  py::gil_scoped_release release;
  LMC_CHECK_CUDA(launch_kv_chunk_md5(as_ptr<const uint64_t>(layer_ptrs_device), num_layers, layout,
                                     as_ptr<const int64_t>(slot_mapping), num_tokens, chunk_size,
                                     as_ptr<int64_t>(workspace), as_ptr<uint8_t>(per_layer),
                                     as_ptr<int64_t>(error), vectorized, as_stream(stream)));
#else
  (void)layer_ptrs, (void)layer_ptrs_device, (void)slot_mapping, (void)workspace;
  (void)per_layer, (void)error, (void)stream;
  throw_no_cuda("kv_chunk_md5");
#endif
}

// Contiguous bytes of a Python buffer (bytes, bytearray, memoryview, contiguous arrays).
std::pair<const uint8_t*, int64_t> buffer_bytes(const py::buffer& b, py::buffer_info& keep) {
  keep = b.request();
  LMC_CHECK_ARG(keep.ndim <= 1 || keep.strides.back() == keep.itemsize,
                "md5: buffers must be C-contiguous");
  return {static_cast<const uint8_t*>(keep.ptr), keep.size * keep.itemsize};
}

std::vector<py::str> md5_many_py(const std::vector<py::buffer>& buffers) {
  const size_t n = buffers.size();
  std::vector<py::buffer_info> infos(n);
  std::vector<const uint8_t*> ptrs(n);
  std::vector<int64_t> lens(n);
  for (size_t i = 0; i < n; ++i) {
    auto [p, len] = buffer_bytes(buffers[i], infos[i]);
    ptrs[i] = p;
    lens[i] = len;
  }
  std::vector<uint8_t> digests(n * kMd5DigestBytes);
  {
    py::gil_scoped_release release;
    md5_many_cpu(ptrs.data(), lens.data(), static_cast<int64_t>(n), digests.data());
  }
  std::vector<py::str> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(hex_str(digests.data() + i * kMd5DigestBytes));
  return out;
}

}  // namespace

void register_kv_chunk_md5(py::module_& m) {
  m.def("kv_chunk_md5_cpu", &kv_chunk_md5_cpu_py, py::arg("layer_ptrs"), py::arg("layout"),
        py::arg("slot_mapping"), py::arg("num_tokens"), py::arg("chunk_size"),
        "MD5 of every (chunk, layer) read from host paged caches; returns (per_layer, combined) "
        "lowercase hex. slot_mapping is the address of num_tokens int64 values.");
  m.def("kv_chunk_md5_finish", &kv_chunk_md5_finish_py, py::arg("per_layer"), py::arg("num_layers"),
        py::arg("num_chunks"),
        "Hex strings and combined digests from host digests [num_layers, num_chunks, 16].");
  m.def("kv_chunk_md5_cuda", &kv_chunk_md5_cuda_py, py::arg("layer_ptrs"),
        py::arg("layer_ptrs_device"), py::arg("layout"), py::arg("slot_mapping"),
        py::arg("num_tokens"), py::arg("chunk_size"), py::arg("workspace"), py::arg("per_layer"),
        py::arg("error"), py::arg("stream"),
        "Launches kv_chunk_md5 on stream; digests land in per_layer [num_layers, num_chunks, 16] "
        "(device), the first bad token index (or -1) in error [1] (device, pre-set to -1).");
  m.def(
      "md5",
      [](const py::buffer& data) {
        py::buffer_info keep;
        auto [p, len] = buffer_bytes(data, keep);
        uint8_t digest[kMd5DigestBytes];
        {
          py::gil_scoped_release release;
          md5_many_cpu(&p, &len, 1, digest);
        }
        return hex_str(digest);
      },
      py::arg("data"), "MD5 of one contiguous buffer, lowercase hex.");
  m.def("md5_many", &md5_many_py, py::arg("buffers"),
        "MD5 of many contiguous buffers (multi-buffer SIMD across equal lengths), lowercase hex.");
  m.def(
      "md5_isa", [] { return std::string(md5_isa_name(md5_isa())); },
      "The instruction set the CPU MD5 uses: 'scalar', 'avx2' or 'avx512'.");
  m.def(
      "md5_set_isa", [](const std::string& name) { md5_set_isa(md5_isa_from_name(name.c_str())); },
      py::arg("isa"), "Forces the CPU MD5 instruction set (ValueError when unsupported here).");
  m.def(
      "md5_supported_isas",
      [] {
        std::vector<std::string> out;
        for (Md5Isa isa : {Md5Isa::kScalar, Md5Isa::kAvx2, Md5Isa::kAvx512}) {
          if (md5_isa_supported(isa)) out.emplace_back(md5_isa_name(isa));
        }
        return out;
      },
      "Instruction sets of the CPU MD5 this machine can run, best last.");
}

}  // namespace lmc
