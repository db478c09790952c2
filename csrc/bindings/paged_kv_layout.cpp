// Binding of PagedKVLayout (kernels/paged_kv_layout.h): the paged-KV layout crosses into every
// kernel binding as this class, built by name in lmcache_native.ops._layout and checked once,
// when it is built. Its fields are read-only from Python.
#include "kernels/paged_kv_layout.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>
#include <utility>

#include "bindings/common.h"

namespace py = pybind11;

namespace lmc {

void check_layout(const PagedKVLayout& l) {
  LMC_CHECK_ARG(l.num_kv == 1 || l.num_kv == 2, "layout num_kv must be 1 or 2, got ", l.num_kv);
  LMC_CHECK_ARG(l.num_blocks >= 0, "layout num_blocks must be >= 0, got ", l.num_blocks);
  LMC_CHECK_ARG(l.block_size > 0, "layout block_size must be > 0, got ", l.block_size);
  LMC_CHECK_ARG(l.num_heads > 0, "layout num_heads must be > 0, got ", l.num_heads);
  LMC_CHECK_ARG(l.head_size > 0, "layout head_size must be > 0, got ", l.head_size);
  LMC_CHECK_ARG(l.elem_size == 1 || l.elem_size == 2 || l.elem_size == 4 || l.elem_size == 8,
                "layout elem_size must be 1, 2, 4 or 8 bytes, got ", l.elem_size);
  for (int kv = 0; kv < 2; ++kv) {
    LMC_CHECK_ARG(l.token_group[kv] >= 1 && l.dim_group[kv] >= 1,
                  "layout token/dim groups must be >= 1, got ", l.token_group[kv], "/",
                  l.dim_group[kv]);
  }
  LMC_CHECK_ARG(!l.any_packed() || (l.block_size % l.token_group[0] == 0 &&
                                    l.block_size % l.token_group[l.num_kv - 1] == 0 &&
                                    l.head_size % l.dim_group[0] == 0 &&
                                    l.head_size % l.dim_group[l.num_kv - 1] == 0),
                "a packed layout's groups must divide block_size and head_size");
}

namespace {

using Pair = std::array<int64_t, 2>;

void set_pair(int64_t (&field)[2], const Pair& v) {
  field[0] = v[0];
  field[1] = v[1];
}

py::tuple get_pair(const int64_t (&field)[2]) { return py::make_tuple(field[0], field[1]); }

PagedKVLayout make_layout(int64_t num_kv, int64_t num_blocks, int64_t block_size, int64_t num_heads,
                          int64_t head_size, int64_t elem_size, const Pair& kv_offset,
                          const Pair& block_stride, const Pair& token_stride,
                          const Pair& head_stride, const Pair& dim_stride, const Pair& token_group,
                          const Pair& token_inner, const Pair& dim_group, const Pair& dim_inner) {
  PagedKVLayout l{};
  l.num_kv = num_kv;
  l.num_blocks = num_blocks;
  l.block_size = block_size;
  l.num_heads = num_heads;
  l.head_size = head_size;
  l.elem_size = elem_size;
  set_pair(l.kv_offset, kv_offset);
  set_pair(l.block_stride, block_stride);
  set_pair(l.token_stride, token_stride);
  set_pair(l.head_stride, head_stride);
  set_pair(l.dim_stride, dim_stride);
  set_pair(l.token_group, token_group);
  set_pair(l.token_inner, token_inner);
  set_pair(l.dim_group, dim_group);
  set_pair(l.dim_inner, dim_inner);
  check_layout(l);
  return l;
}

// The (K, V) pair fields, in struct order: one table for the accessors and the repr.
using PairField = int64_t (PagedKVLayout::*)[2];
constexpr std::pair<const char*, PairField> kPairFields[] = {
    {"kv_offset", &PagedKVLayout::kv_offset},       {"block_stride", &PagedKVLayout::block_stride},
    {"token_stride", &PagedKVLayout::token_stride}, {"head_stride", &PagedKVLayout::head_stride},
    {"dim_stride", &PagedKVLayout::dim_stride},     {"token_group", &PagedKVLayout::token_group},
    {"token_inner", &PagedKVLayout::token_inner},   {"dim_group", &PagedKVLayout::dim_group},
    {"dim_inner", &PagedKVLayout::dim_inner},
};

std::string layout_repr(const PagedKVLayout& l) {
  std::string out = detail::concat("PagedKVLayout(num_kv=", l.num_kv, ", num_blocks=", l.num_blocks,
                                   ", block_size=", l.block_size, ", num_heads=", l.num_heads,
                                   ", head_size=", l.head_size, ", elem_size=", l.elem_size);
  for (const auto& [name, field] : kPairFields) {
    out += detail::concat(", ", name, "=(", (l.*field)[0], ", ", (l.*field)[1], ")");
  }
  return out + ")";
}

}  // namespace

void register_paged_kv_layout(py::module_& m) {
  py::class_<PagedKVLayout> cls(
      m, "PagedKVLayout",
      "Geometry and element strides of one layer's paged KV cache (kernels/paged_kv_layout.h). "
      "Built by keyword; ValueError names a bad field. Pairs are (K, V); MLA uses index 0.");
  cls.def(py::init(&make_layout), py::kw_only(), py::arg("num_kv"), py::arg("num_blocks"),
          py::arg("block_size"), py::arg("num_heads"), py::arg("head_size"), py::arg("elem_size"),
          py::arg("kv_offset"), py::arg("block_stride"), py::arg("token_stride"),
          py::arg("head_stride"), py::arg("dim_stride"), py::arg("token_group") = Pair{1, 1},
          py::arg("token_inner") = Pair{0, 0}, py::arg("dim_group") = Pair{1, 1},
          py::arg("dim_inner") = Pair{0, 0});
  cls.def_readonly("num_kv", &PagedKVLayout::num_kv)
      .def_readonly("num_blocks", &PagedKVLayout::num_blocks)
      .def_readonly("block_size", &PagedKVLayout::block_size)
      .def_readonly("num_heads", &PagedKVLayout::num_heads)
      .def_readonly("head_size", &PagedKVLayout::head_size)
      .def_readonly("elem_size", &PagedKVLayout::elem_size);
  for (const auto& [name, field] : kPairFields) {
    cls.def_property_readonly(
        name, [field = field](const PagedKVLayout& l) { return get_pair(l.*field); });
  }
  cls.def_property_readonly("num_slots", &PagedKVLayout::num_slots, "num_blocks * block_size")
      .def_property_readonly("row_elems", &PagedKVLayout::row_elems, "num_heads * head_size")
      .def_property_readonly("packed", &PagedKVLayout::any_packed,
                             "True when a kv side is tiled in two levels (vllm_cpu_amx)")
      .def("__repr__", &layout_repr);
}

}  // namespace lmc
