// AVX2 register transposes shared by the copy, the tile transposes and the multi-buffer MD5
// (internal header, x86 only). Every function carries a per-function target attribute (no
// -march): callers run them only after __builtin_cpu_supports("avx2").
#pragma once

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <cstdint>

#define LMC_TARGET_AVX2 __attribute__((target("avx2")))

namespace lmc {

// In-place 8x8 transpose of 32-bit words: r[i] holds row i on entry, column i on exit.
LMC_TARGET_AVX2 inline void transpose8x8_u32_regs(__m256i r[8]) {
  __m256i t[8], u[8];
  for (int p = 0; p < 4; ++p) {
    t[2 * p] = _mm256_unpacklo_epi32(r[2 * p], r[2 * p + 1]);
    t[2 * p + 1] = _mm256_unpackhi_epi32(r[2 * p], r[2 * p + 1]);
  }
  // u[4h + m]: rows 4h..4h+3 of columns m (and m + 4 in the high lane), m = 0..3.
  for (int h = 0; h < 2; ++h) {
    u[4 * h + 0] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
    u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
    u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
    u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2x128_si256(u[m], u[4 + m], 0x20);
    r[m + 4] = _mm256_permute2x128_si256(u[m], u[4 + m], 0x31);
  }
}

// dst[c * ds + r] = src[r * ss + c] for an 8x8 tile of 4-byte words.
LMC_TARGET_AVX2 inline void transpose8x8_u32_avx2(const uint32_t* src, int64_t ss, uint32_t* dst,
                                                  int64_t ds) {
  __m256i a[8];
  for (int i = 0; i < 8; ++i) {
    a[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i * ss));
  }
  transpose8x8_u32_regs(a);
  for (int m = 0; m < 8; ++m) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + m * ds), a[m]);
}

// dst[c * ds + r] = src[r * ss + c] for a 16x16 tile of 2-byte words; streaming stores need
// every dst row 32-byte aligned.
template <bool kStream>
LMC_TARGET_AVX2 inline void transpose16x16_u16_avx2(const uint16_t* src, int64_t ss, uint16_t* dst,
                                                    int64_t ds) {
  __m256i a[16], t[16], u[16], v[16];
  for (int i = 0; i < 16; ++i) {
    a[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i * ss));
  }
  // Rows (2p, 2p + 1) interleaved by 16 bits: per 128-bit lane, columns 0-3 / 4-7 of the lane.
  for (int p = 0; p < 8; ++p) {
    t[2 * p] = _mm256_unpacklo_epi16(a[2 * p], a[2 * p + 1]);
    t[2 * p + 1] = _mm256_unpackhi_epi16(a[2 * p], a[2 * p + 1]);
  }
  // Rows 4q..4q+3 by 32 bits: two columns each.
  for (int q = 0; q < 4; ++q) {
    u[4 * q] = _mm256_unpacklo_epi32(t[4 * q], t[4 * q + 2]);
    u[4 * q + 1] = _mm256_unpackhi_epi32(t[4 * q], t[4 * q + 2]);
    u[4 * q + 2] = _mm256_unpacklo_epi32(t[4 * q + 1], t[4 * q + 3]);
    u[4 * q + 3] = _mm256_unpackhi_epi32(t[4 * q + 1], t[4 * q + 3]);
  }
  // Rows 8h..8h+7 by 64 bits: v[8h + m] holds column m (low lane) and 8 + m (high lane).
  for (int h = 0; h < 2; ++h) {
    for (int k = 0; k < 4; ++k) {
      v[8 * h + 2 * k] = _mm256_unpacklo_epi64(u[8 * h + k], u[8 * h + 4 + k]);
      v[8 * h + 2 * k + 1] = _mm256_unpackhi_epi64(u[8 * h + k], u[8 * h + 4 + k]);
    }
  }
  // Column m = rows 0-7 (v[m]) then rows 8-15 (v[8 + m]), same lane of each.
  for (int m = 0; m < 8; ++m) {
    const __m256i lo = _mm256_permute2x128_si256(v[m], v[8 + m], 0x20);
    const __m256i hi = _mm256_permute2x128_si256(v[m], v[8 + m], 0x31);
    __m256i* d_lo = reinterpret_cast<__m256i*>(dst + m * ds);
    __m256i* d_hi = reinterpret_cast<__m256i*>(dst + (8 + m) * ds);
    if (kStream) {
      _mm256_stream_si256(d_lo, lo);
      _mm256_stream_si256(d_hi, hi);
    } else {
      _mm256_storeu_si256(d_lo, lo);
      _mm256_storeu_si256(d_hi, hi);
    }
  }
}

}  // namespace lmc

#endif  // x86
