// AVX2 tile transposes of tile_transpose.h: 16x16 tiles of 2-byte words, 8x8 of 4-byte words.
#include "kernels/tile_transpose.h"
#include "kernels/transpose_avx2.h"

namespace lmc {

#if defined(__x86_64__) || defined(__i386__)
LMC_TARGET_AVX2 bool transpose_u16_avx2(const uint16_t* src, int64_t ss, uint16_t* dst, int64_t ds,
                                        int64_t rows, int64_t cols) {
  if (rows % 16 != 0 || cols % 16 != 0) return false;
  for (int64_t r = 0; r < rows; r += 16) {
    for (int64_t c = 0; c < cols; c += 16) {
      transpose16x16_u16_avx2<false>(src + r * ss + c, ss, dst + c * ds + r, ds);
    }
  }
  return true;
}

LMC_TARGET_AVX2 bool transpose_u32_avx2(const uint32_t* src, int64_t ss, uint32_t* dst, int64_t ds,
                                        int64_t rows, int64_t cols) {
  if (rows % 8 != 0 || cols % 8 != 0) return false;
  for (int64_t r = 0; r < rows; r += 8) {
    for (int64_t c = 0; c < cols; c += 8) {
      transpose8x8_u32_avx2(src + r * ss + c, ss, dst + c * ds + r, ds);
    }
  }
  return true;
}
#else
bool transpose_u16_avx2(const uint16_t*, int64_t, uint16_t*, int64_t, int64_t, int64_t) {
  return false;
}
bool transpose_u32_avx2(const uint32_t*, int64_t, uint32_t*, int64_t, int64_t, int64_t) {
  return false;
}
#endif

}  // namespace lmc
