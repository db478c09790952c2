// Dispatch on element byte width, not on floating-point dtype: a copy or a hash only moves
// bytes, so fp32/fp16/bf16/fp8 share the 4/2/2/1-byte instantiations.
#pragma once

#include <cstdint>

#include "common/check.h"

namespace lmc {

// A 16-byte word for vectorised moves (alignment checked by the caller).
struct alignas(16) Word16 {
  uint64_t lo, hi;
};

// Calls fn.template operator()<Word>() with Word matching elem_size (1, 2, 4, 8 or 16 bytes).
template <typename Fn>
decltype(auto) dispatch_word(int64_t elem_size, Fn&& fn) {
  switch (elem_size) {
    case 1: return fn.template operator()<uint8_t>();
    case 2: return fn.template operator()<uint16_t>();
    case 4: return fn.template operator()<uint32_t>();
    case 8: return fn.template operator()<uint64_t>();
    case 16: return fn.template operator()<Word16>();
    default:
      throw std::invalid_argument(
          detail::concat("element size must be 1, 2, 4, 8 or 16 bytes, got ", elem_size));
  }
}

}  // namespace lmc
