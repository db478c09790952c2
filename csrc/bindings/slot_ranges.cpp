// Bindings of slot_ranges: parse (to slots or to ranges), compress (runs -> Python list, or an
// int64 run table), expand (CPU twin, CUDA launcher).
#include "kernels/slot_ranges.h"

#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "bindings/common.h"

namespace py = pybind11;

namespace lmc {
namespace {

// UTF-8 bytes of a str without copying (CPython caches them; ASCII strings are used as-is).
std::pair<const char*, int64_t> utf8_of(const py::str& text) {
  Py_ssize_t len = 0;
  const char* p = PyUnicode_AsUTF8AndSize(text.ptr(), &len);
  if (p == nullptr) throw py::error_already_set();
  return {p, static_cast<int64_t>(len)};
}

// Parses text into an int64 numpy array: the slots, or (as_ranges) one (start, end) row per
// item. The whole text is validated and counted before the slot array is allocated.
py::array_t<int64_t> parse_py(const py::str& text, int64_t max_slots, bool as_ranges) {
  auto [s, n] = utf8_of(text);
  std::vector<int64_t> ranges;
  int64_t num_slots = 0;
  {
    py::gil_scoped_release release;
    num_slots = slot_ranges_parse(s, n, max_slots, ranges);
  }
  const int64_t num_items = static_cast<int64_t>(ranges.size() / 2);
  if (as_ranges) {
    py::array_t<int64_t> out({static_cast<py::ssize_t>(num_items), py::ssize_t{2}});
    if (num_items > 0) {
      std::memcpy(out.mutable_data(), ranges.data(), ranges.size() * sizeof(int64_t));
    }
    return out;
  }
  py::array_t<int64_t> out(static_cast<py::ssize_t>(num_slots));
  int64_t* dst = out.mutable_data();
  py::gil_scoped_release release;
  slot_ranges_expand_cpu(ranges.data(), num_items, dst, num_slots);
  return out;
}

// Pauses Python's cyclic garbage collector for its lifetime (if it was running).
class GcPause {
 public:
  GcPause() : was_enabled_(PyGC_Disable() != 0) {}
  ~GcPause() {
    if (was_enabled_) PyGC_Enable();
  }
  GcPause(const GcPause&) = delete;
  GcPause& operator=(const GcPause&) = delete;

 private:
  bool was_enabled_;
};

// Visits the items of the compressed form of n contiguous int64 slots at address slots, in
// order, as inclusive (first, last): a run of >= 3 consecutive values is one item, each value
// of a shorter run an item (v, v). Returns the item count.
// NOTE: a run's last value is start + (length - 1), never (start + length) - 1: a run ending at
// INT64_MAX would overflow the latter.
template <typename Visit>
int64_t for_each_item(const int64_t* slots, int64_t n, Visit&& visit) {
  return slot_ranges_runs(slots, n, [&](int64_t start, int64_t length) {
    if (length >= 3) {
      visit(start, start + (length - 1));
    } else {
      for (int64_t t = 0; t < length; ++t) visit(start + t, start + t);
    }
  });
}

int64_t count_items(const int64_t* slots, int64_t n) {
  LMC_CHECK_ARG(n >= 0, "n must be >= 0, got ", n);
  py::gil_scoped_release release;
  return slot_ranges_runs(slots, n, [](int64_t, int64_t) {});
}

// Builds [int | [start, end]] from n contiguous int64 slots at address slots: one scan counts
// the items, a second creates them (no buffer of runs in between).
py::list compress_py(int64_t slots, int64_t n) {
  const int64_t* v = as_ptr<const int64_t>(slots);
  const int64_t num_items = count_items(v, n);
  // NOTE: filled through the C API (PyList_SET_ITEM steals each reference); one list
  // allocation and one int object per item is the least Python work the result needs. The
  // cyclic GC is paused meanwhile: the new [start, end] lists would otherwise trigger
  // collections over every object of the process, many times (several times the whole cost).
  GcPause pause;
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(num_items));
  if (list == nullptr) throw py::error_already_set();
  py::list out = py::reinterpret_steal<py::list>(list);
  auto new_int = [](int64_t x) {
    PyObject* o = PyLong_FromLongLong(x);
    if (o == nullptr) throw py::error_already_set();
    return o;
  };
  Py_ssize_t k = 0;
  for_each_item(v, n, [&](int64_t first, int64_t last) {
    if (first == last) {
      PyList_SET_ITEM(list, k++, new_int(first));
      return;
    }
    PyObject* pair = PyList_New(2);
    if (pair == nullptr) throw py::error_already_set();
    PyList_SET_ITEM(list, k++, pair);
    PyList_SET_ITEM(pair, 0, new_int(first));
    PyList_SET_ITEM(pair, 1, new_int(last));
  });
  return out;
}

// The same items as compress_py as an int64 array [num_items, 2] of inclusive (start, end), a
// plain value v as (v, v). No Python object per item, so the cost is two scans of the slots.
py::array_t<int64_t> compress_ranges_py(int64_t slots, int64_t n) {
  const int64_t* v = as_ptr<const int64_t>(slots);
  const int64_t num_items = count_items(v, n);
  py::array_t<int64_t> out({static_cast<py::ssize_t>(num_items), py::ssize_t{2}});
  int64_t* dst = out.mutable_data();
  py::gil_scoped_release release;
  for_each_item(v, n, [&](int64_t first, int64_t last) {
    dst[0] = first;
    dst[1] = last;
    dst += 2;
  });
  return out;
}

void expand_cpu_py(int64_t ranges, int64_t num_ranges, int64_t slots, int64_t num_slots) {
  py::gil_scoped_release release;
  slot_ranges_expand_cpu(as_ptr<const int64_t>(ranges), num_ranges, as_ptr<int64_t>(slots),
                         num_slots);
}

void expand_cuda_py(int64_t ranges, int64_t offsets, int64_t num_ranges, int64_t slots,
                    int64_t num_slots, int64_t stream) {
  LMC_CHECK_ARG(num_ranges >= 0 && num_slots >= 0, "num_ranges and num_slots must be >= 0");
#ifdef LMC_WITH_CUDA
  py::gil_scoped_release release;
  LMC_CHECK_CUDA(launch_slot_ranges_expand(as_ptr<const int64_t>(ranges),
                                           as_ptr<const int64_t>(offsets), num_ranges,
                                           as_ptr<int64_t>(slots), num_slots, as_stream(stream)));
#else
  (void)ranges, (void)offsets, (void)slots, (void)stream;
  throw_no_cuda("slot_ranges_expand");
#endif
}

}  // namespace

void register_slot_ranges(py::module_& m) {
  m.def(
      "parse_slot_mapping",
      [](const py::str& text, int64_t max_slots) { return parse_py(text, max_slots, false); },
      py::arg("text"), py::arg("max_slots"),
      "Parses a slot string into an int64 array of slots (ValueError naming the position).");
  m.def(
      "parse_slot_ranges",
      [](const py::str& text, int64_t max_slots) { return parse_py(text, max_slots, true); },
      py::arg("text"), py::arg("max_slots"),
      "Parses a slot string into an int64 array [num_items, 2] of inclusive (start, end).");
  m.def("compress_slot_mapping", &compress_py, py::arg("slots"), py::arg("n"),
        "Compresses n contiguous int64 slots at address slots: runs of >= 3 consecutive "
        "values become [start, end], shorter runs stay ints, order kept.");
  m.def("compress_slot_ranges", &compress_ranges_py, py::arg("slots"), py::arg("n"),
        "Compresses n contiguous int64 slots at address slots into an int64 array "
        "[num_items, 2] of inclusive (start, end): the items of compress_slot_mapping, a "
        "plain value v as (v, v).");
  m.def("slot_ranges_expand_cpu", &expand_cpu_py, py::arg("ranges"), py::arg("num_ranges"),
        py::arg("slots"), py::arg("num_slots"),
        "Expands [num_ranges, 2] inclusive ranges (host) into num_slots slots (host).");
  m.def("slot_ranges_expand_cuda", &expand_cuda_py, py::arg("ranges"), py::arg("offsets"),
        py::arg("num_ranges"), py::arg("slots"), py::arg("num_slots"), py::arg("stream"),
        "Launches the expansion of [num_ranges, 2] ranges with exclusive offsets (device) into "
        "num_slots slots (device) on stream.");
}

}  // namespace lmc
