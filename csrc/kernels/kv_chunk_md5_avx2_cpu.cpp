// 8-lane multi-buffer MD5 transform with AVX2 (one message per 32-bit lane).
//
// Compiled for every x86-64 target with a per-function target attribute (no -march flag), so
// one binary runs everywhere; kv_chunk_md5_cpu.cpp calls it only after
// __builtin_cpu_supports("avx2").
#include "kernels/kv_chunk_md5.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include "kernels/md5.h"
#include "kernels/transpose_avx2.h"

namespace lmc::md5_simd {
namespace {

// NOTE: helpers, not lambdas: a lambda does not inherit the target attribute.
LMC_TARGET_AVX2 inline __m256i load8(const uint32_t* p) {
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
}
LMC_TARGET_AVX2 inline void store8(uint32_t* p, __m256i v) {
  _mm256_store_si256(reinterpret_cast<__m256i*>(p), v);
}

LMC_TARGET_AVX2 inline __m256i rotl8(__m256i x, int s) {
  return _mm256_or_si256(_mm256_slli_epi32(x, s), _mm256_srli_epi32(x, 32 - s));
}
LMC_TARGET_AVX2 inline __m256i f8(__m256i b, __m256i c, __m256i d) {
  return _mm256_xor_si256(d, _mm256_and_si256(b, _mm256_xor_si256(c, d)));
}
LMC_TARGET_AVX2 inline __m256i g8(__m256i b, __m256i c, __m256i d) {
  return _mm256_xor_si256(c, _mm256_and_si256(d, _mm256_xor_si256(b, c)));
}
LMC_TARGET_AVX2 inline __m256i h8(__m256i b, __m256i c, __m256i d) {
  return _mm256_xor_si256(_mm256_xor_si256(b, c), d);
}
// c ^ (b | ~d) == ~c ^ (~b & d)
LMC_TARGET_AVX2 inline __m256i i8(__m256i b, __m256i c, __m256i d) {
  return _mm256_xor_si256(_mm256_andnot_si256(b, d), _mm256_xor_si256(c, _mm256_set1_epi32(-1)));
}

}  // namespace

#define LMC_STEP8(fn, a, b, c, d, i)                                                    \
  a = _mm256_add_epi32(                                                                 \
      a, _mm256_add_epi32(m[kMd5G[i]], _mm256_set1_epi32(static_cast<int>(kMd5K[i])))); \
  a = _mm256_add_epi32(a, fn(b, c, d));                                                 \
  a = _mm256_add_epi32(rotl8(a, kMd5S[i]), b);

#define LMC_ROUND8(fn, i0) LMC_MD5_ROUND4(LMC_STEP8, fn, i0)

LMC_TARGET_AVX2 void md5_x8_avx2(uint32_t* state, const uint8_t* const* blocks,
                                 int64_t num_blocks) {
  __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(state + 0));
  __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(state + 8));
  __m256i c = _mm256_load_si256(reinterpret_cast<const __m256i*>(state + 16));
  __m256i d = _mm256_load_si256(reinterpret_cast<const __m256i*>(state + 24));
  for (int64_t blk = 0; blk < num_blocks; ++blk) {
    const uint8_t* const* p = blocks + blk * 8;
    __m256i m[16];
    for (int lane = 0; lane < 8; ++lane) {
      m[lane] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[lane]));
      m[8 + lane] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[lane] + 32));
    }
    // Lane-major rows -> word-major: m[i] holds word i of all 8 lanes.
    transpose8x8_u32_regs(m);
    transpose8x8_u32_regs(m + 8);
    const __m256i a0 = a, b0 = b, c0 = c, d0 = d;
    LMC_MD5_ROUNDS(LMC_ROUND8, f8, g8, h8, i8)
    a = _mm256_add_epi32(a, a0);
    b = _mm256_add_epi32(b, b0);
    c = _mm256_add_epi32(c, c0);
    d = _mm256_add_epi32(d, d0);
  }
  _mm256_store_si256(reinterpret_cast<__m256i*>(state + 0), a);
  _mm256_store_si256(reinterpret_cast<__m256i*>(state + 8), b);
  _mm256_store_si256(reinterpret_cast<__m256i*>(state + 16), c);
  _mm256_store_si256(reinterpret_cast<__m256i*>(state + 24), d);
}

#undef LMC_ROUND8
#undef LMC_STEP8

// Two independent 8-lane sets, step by step interleaved, so one set's latency chain (about
// seven instructions per step without AVX-512's rotate and ternary logic) overlaps the other.
#define LMC_STEP16X2(fn, a, b, c, d, i)                               \
  {                                                                   \
    const __m256i k = _mm256_set1_epi32(static_cast<int>(kMd5K[i]));  \
    a##0 = _mm256_add_epi32(a##0, _mm256_add_epi32(m0[kMd5G[i]], k)); \
    a##1 = _mm256_add_epi32(a##1, _mm256_add_epi32(m1[kMd5G[i]], k)); \
    a##0 = _mm256_add_epi32(a##0, fn(b##0, c##0, d##0));              \
    a##1 = _mm256_add_epi32(a##1, fn(b##1, c##1, d##1));              \
    a##0 = _mm256_add_epi32(rotl8(a##0, kMd5S[i]), b##0);             \
    a##1 = _mm256_add_epi32(rotl8(a##1, kMd5S[i]), b##1);             \
  }

#define LMC_ROUND16X2(fn, i0) LMC_MD5_ROUND4(LMC_STEP16X2, fn, i0)

LMC_TARGET_AVX2 void md5_x16_avx2(uint32_t* state, const uint8_t* const* blocks,
                                  int64_t num_blocks) {
  LMC_MD5_LOAD2(__m256i, load8, 8)
  for (int64_t blk = 0; blk < num_blocks; ++blk) {
    const uint8_t* const* p = blocks + blk * 16;
    __m256i m0[16], m1[16];
    for (int lane = 0; lane < 8; ++lane) {
      m0[lane] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[lane]));
      m0[8 + lane] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[lane] + 32));
      m1[lane] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[8 + lane]));
      m1[8 + lane] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[8 + lane] + 32));
    }
    transpose8x8_u32_regs(m0);
    transpose8x8_u32_regs(m0 + 8);
    transpose8x8_u32_regs(m1);
    transpose8x8_u32_regs(m1 + 8);
    LMC_MD5_SAVE2(__m256i)
    LMC_MD5_ROUNDS(LMC_ROUND16X2, f8, g8, h8, i8)
    LMC_MD5_FEED_FORWARD2(_mm256_add_epi32)
  }
  LMC_MD5_STORE2(store8, 8)
}

#undef LMC_ROUND16X2
#undef LMC_STEP16X2

}  // namespace lmc::md5_simd

#else  // not x86: never selected (md5_isa_supported is false), defined for the linker.

#include <cstdlib>

namespace lmc::md5_simd {
void md5_x8_avx2(uint32_t*, const uint8_t* const*, int64_t) { std::abort(); }
void md5_x16_avx2(uint32_t*, const uint8_t* const*, int64_t) { std::abort(); }
}  // namespace lmc::md5_simd

#endif
