// Tile transposes shared by the CPU copy twins and the CPU MD5 twin (internal header).
//
//   transpose<Word>(src, ss, dst, ds, rows, cols): dst[c * ds + r] = src[r * ss + c] for
//   r < rows, c < cols, strides in Words. SSE2 8x8 (2-byte) and 4x4 (4-byte) register tiles
//   with scalar edges; plain loops for other sizes.
//   transpose_u16_avx2 / transpose_u32_avx2: the same with AVX2 16x16 / 8x8 register tiles
//   (tile_transpose_avx2_cpu.cpp); they return false, writing nothing, unless rows and cols are
//   multiples of the tile. The caller checks __builtin_cpu_supports("avx2") first.
//   transpose_any<Word>(..., avx2): the AVX2 tiles when asked for and the shape allows, else
//   transpose<Word>.
//
// Used for vllm_cpu's K ([head_size, block_size] per (block, head)) and vllm_cpu_amx's K words.
#pragma once

#include <cstdint>

#include "common/host_device.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace lmc {

bool transpose_u16_avx2(const uint16_t* src, int64_t ss, uint16_t* dst, int64_t ds, int64_t rows,
                        int64_t cols);
bool transpose_u32_avx2(const uint32_t* src, int64_t ss, uint32_t* dst, int64_t ds, int64_t rows,
                        int64_t cols);

template <typename Word>
void transpose(const Word* LMC_RESTRICT src, int64_t ss, Word* LMC_RESTRICT dst, int64_t ds,
               int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * ds + r] = src[r * ss + c];
  }
}

#if defined(__SSE2__)
// Row i of a tile (16 bytes at p + i * stride, in Words), loaded / stored unaligned.
template <typename T>
inline __m128i load_row(const T* p, int64_t i, int64_t stride) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i * stride));
}
template <typename T>
inline void store_row(T* p, int64_t i, int64_t stride, __m128i v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p + i * stride), v);
}

// 8x8 tiles of 2-byte words: 8 row loads, three rounds of unpacks, 8 column stores.
inline void transpose8x8_u16(const uint16_t* src, int64_t ss, uint16_t* dst, int64_t ds) {
  const __m128i r0 = load_row(src, 0, ss), r1 = load_row(src, 1, ss), r2 = load_row(src, 2, ss),
                r3 = load_row(src, 3, ss);
  const __m128i r4 = load_row(src, 4, ss), r5 = load_row(src, 5, ss), r6 = load_row(src, 6, ss),
                r7 = load_row(src, 7, ss);
  const __m128i t0 = _mm_unpacklo_epi16(r0, r1), t1 = _mm_unpackhi_epi16(r0, r1);
  const __m128i t2 = _mm_unpacklo_epi16(r2, r3), t3 = _mm_unpackhi_epi16(r2, r3);
  const __m128i t4 = _mm_unpacklo_epi16(r4, r5), t5 = _mm_unpackhi_epi16(r4, r5);
  const __m128i t6 = _mm_unpacklo_epi16(r6, r7), t7 = _mm_unpackhi_epi16(r6, r7);
  const __m128i u0 = _mm_unpacklo_epi32(t0, t2), u1 = _mm_unpackhi_epi32(t0, t2);
  const __m128i u2 = _mm_unpacklo_epi32(t1, t3), u3 = _mm_unpackhi_epi32(t1, t3);
  const __m128i u4 = _mm_unpacklo_epi32(t4, t6), u5 = _mm_unpackhi_epi32(t4, t6);
  const __m128i u6 = _mm_unpacklo_epi32(t5, t7), u7 = _mm_unpackhi_epi32(t5, t7);
  store_row(dst, 0, ds, _mm_unpacklo_epi64(u0, u4));
  store_row(dst, 1, ds, _mm_unpackhi_epi64(u0, u4));
  store_row(dst, 2, ds, _mm_unpacklo_epi64(u1, u5));
  store_row(dst, 3, ds, _mm_unpackhi_epi64(u1, u5));
  store_row(dst, 4, ds, _mm_unpacklo_epi64(u2, u6));
  store_row(dst, 5, ds, _mm_unpackhi_epi64(u2, u6));
  store_row(dst, 6, ds, _mm_unpacklo_epi64(u3, u7));
  store_row(dst, 7, ds, _mm_unpackhi_epi64(u3, u7));
}

// 4x4 tiles of 4-byte words.
inline void transpose4x4_u32(const uint32_t* src, int64_t ss, uint32_t* dst, int64_t ds) {
  const __m128i r0 = load_row(src, 0, ss), r1 = load_row(src, 1, ss), r2 = load_row(src, 2, ss),
                r3 = load_row(src, 3, ss);
  const __m128i t0 = _mm_unpacklo_epi32(r0, r1), t1 = _mm_unpackhi_epi32(r0, r1);
  const __m128i t2 = _mm_unpacklo_epi32(r2, r3), t3 = _mm_unpackhi_epi32(r2, r3);
  store_row(dst, 0, ds, _mm_unpacklo_epi64(t0, t2));
  store_row(dst, 1, ds, _mm_unpackhi_epi64(t0, t2));
  store_row(dst, 2, ds, _mm_unpacklo_epi64(t1, t3));
  store_row(dst, 3, ds, _mm_unpackhi_epi64(t1, t3));
}

// Tiles of kTile x kTile through `tile_fn`, scalar edges.
template <int kTile, typename Word, typename TileFn>
void transpose_tiled(const Word* LMC_RESTRICT src, int64_t ss, Word* LMC_RESTRICT dst, int64_t ds,
                     int64_t rows, int64_t cols, TileFn tile_fn) {
  const int64_t rows_t = rows - rows % kTile;
  const int64_t cols_t = cols - cols % kTile;
  for (int64_t r = 0; r < rows_t; r += kTile) {
    for (int64_t c = 0; c < cols_t; c += kTile) tile_fn(src + r * ss + c, ss, dst + c * ds + r, ds);
    for (int64_t c = cols_t; c < cols; ++c) {
      for (int64_t k = 0; k < kTile; ++k) dst[c * ds + r + k] = src[(r + k) * ss + c];
    }
  }
  for (int64_t r = rows_t; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * ds + r] = src[r * ss + c];
  }
}

template <>
inline void transpose<uint16_t>(const uint16_t* LMC_RESTRICT src, int64_t ss,
                                uint16_t* LMC_RESTRICT dst, int64_t ds, int64_t rows,
                                int64_t cols) {
  transpose_tiled<8>(src, ss, dst, ds, rows, cols, transpose8x8_u16);
}

template <>
inline void transpose<uint32_t>(const uint32_t* LMC_RESTRICT src, int64_t ss,
                                uint32_t* LMC_RESTRICT dst, int64_t ds, int64_t rows,
                                int64_t cols) {
  transpose_tiled<4>(src, ss, dst, ds, rows, cols, transpose4x4_u32);
}
#endif  // __SSE2__

template <typename Word>
void transpose_any(const Word* src, int64_t ss, Word* dst, int64_t ds, int64_t rows, int64_t cols,
                   bool avx2) {
  if constexpr (sizeof(Word) == 2) {
    if (avx2 && transpose_u16_avx2(reinterpret_cast<const uint16_t*>(src), ss,
                                   reinterpret_cast<uint16_t*>(dst), ds, rows, cols)) {
      return;
    }
  } else if constexpr (sizeof(Word) == 4) {
    if (avx2 && transpose_u32_avx2(reinterpret_cast<const uint32_t*>(src), ss,
                                   reinterpret_cast<uint32_t*>(dst), ds, rows, cols)) {
      return;
    }
  }
  transpose<Word>(src, ss, dst, ds, rows, cols);
}

}  // namespace lmc
