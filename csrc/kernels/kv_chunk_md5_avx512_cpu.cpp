// 16-lane multi-buffer MD5 transform with AVX-512F (one message per 32-bit lane).
//
// Compiled for every x86-64 target with a per-function target attribute (no -march flag), so
// one binary runs everywhere; kv_chunk_md5_cpu.cpp calls it only after
// __builtin_cpu_supports("avx512f").
#include "kernels/kv_chunk_md5.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include "kernels/md5.h"

#define LMC_TARGET_AVX512 __attribute__((target("avx512f")))

namespace lmc::md5_simd {
namespace {

// In-place 16x16 transpose of 32-bit words: r[lane] holds lane's 16 block words on entry,
// r[i] holds word i of all 16 lanes on exit.
LMC_TARGET_AVX512 inline void transpose16(__m512i r[16]) {
  __m512i q[16];
  for (int g = 0; g < 4; ++g) {
    // Rows 4g..4g+3: within each 128-bit lane k, q[4g + w] = (row 4g..4g+3)[4k + w].
    const __m512i t0 = _mm512_unpacklo_epi32(r[4 * g + 0], r[4 * g + 1]);
    const __m512i t1 = _mm512_unpackhi_epi32(r[4 * g + 0], r[4 * g + 1]);
    const __m512i t2 = _mm512_unpacklo_epi32(r[4 * g + 2], r[4 * g + 3]);
    const __m512i t3 = _mm512_unpackhi_epi32(r[4 * g + 2], r[4 * g + 3]);
    q[4 * g + 0] = _mm512_unpacklo_epi64(t0, t2);
    q[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
    q[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
    q[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
  }
  for (int w = 0; w < 4; ++w) {
    // 4x4 transpose of 128-bit lanes across the four row groups.
    const __m512i s0 = _mm512_shuffle_i32x4(q[w], q[4 + w], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i s1 = _mm512_shuffle_i32x4(q[w], q[4 + w], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512i s2 = _mm512_shuffle_i32x4(q[8 + w], q[12 + w], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i s3 = _mm512_shuffle_i32x4(q[8 + w], q[12 + w], _MM_SHUFFLE(3, 2, 3, 2));
    r[0 + w] = _mm512_shuffle_i32x4(s0, s2, _MM_SHUFFLE(2, 0, 2, 0));
    r[4 + w] = _mm512_shuffle_i32x4(s0, s2, _MM_SHUFFLE(3, 1, 3, 1));
    r[8 + w] = _mm512_shuffle_i32x4(s1, s3, _MM_SHUFFLE(2, 0, 2, 0));
    r[12 + w] = _mm512_shuffle_i32x4(s1, s3, _MM_SHUFFLE(3, 1, 3, 1));
  }
}

}  // namespace

// Round functions as vpternlogd truth tables over (b, c, d):
//   F = b ? c : d -> 0xca,  G = d ? b : c -> 0xe4,
//   H = b ^ c ^ d -> 0x96,  I = c ^ (b | ~d) -> 0x39.
#define LMC_STEP16(imm, a, b, c, d, i)                                                  \
  a = _mm512_add_epi32(                                                                 \
      a, _mm512_add_epi32(m[kMd5G[i]], _mm512_set1_epi32(static_cast<int>(kMd5K[i])))); \
  a = _mm512_add_epi32(a, _mm512_ternarylogic_epi32(b, c, d, imm));                     \
  a = _mm512_add_epi32(_mm512_rol_epi32(a, kMd5S[i]), b);

#define LMC_ROUND16(imm, i0) LMC_MD5_ROUND4(LMC_STEP16, imm, i0)

LMC_TARGET_AVX512 void md5_x16_avx512(uint32_t* state, const uint8_t* const* blocks,
                                      int64_t num_blocks) {
  __m512i a = _mm512_load_si512(state + 0);
  __m512i b = _mm512_load_si512(state + 16);
  __m512i c = _mm512_load_si512(state + 32);
  __m512i d = _mm512_load_si512(state + 48);
  for (int64_t blk = 0; blk < num_blocks; ++blk) {
    const uint8_t* const* p = blocks + blk * 16;
    __m512i m[16];
    for (int lane = 0; lane < 16; ++lane) m[lane] = _mm512_loadu_si512(p[lane]);
    transpose16(m);
    const __m512i a0 = a, b0 = b, c0 = c, d0 = d;
    LMC_MD5_ROUNDS(LMC_ROUND16, 0xca, 0xe4, 0x96, 0x39)
    a = _mm512_add_epi32(a, a0);
    b = _mm512_add_epi32(b, b0);
    c = _mm512_add_epi32(c, c0);
    d = _mm512_add_epi32(d, d0);
  }
  _mm512_store_si512(state + 0, a);
  _mm512_store_si512(state + 16, b);
  _mm512_store_si512(state + 32, c);
  _mm512_store_si512(state + 48, d);
}

#undef LMC_ROUND16
#undef LMC_STEP16

// Two independent 16-lane sets, step by step interleaved: one set's dependency chain (about
// five instructions per step) leaves the vector units idle half the time; two sets fill them.
#define LMC_STEP32(imm, a, b, c, d, i)                                               \
  {                                                                                  \
    const __m512i k = _mm512_set1_epi32(static_cast<int>(kMd5K[i]));                 \
    a##0 = _mm512_add_epi32(a##0, _mm512_add_epi32(m0[kMd5G[i]], k));                \
    a##1 = _mm512_add_epi32(a##1, _mm512_add_epi32(m1[kMd5G[i]], k));                \
    a##0 = _mm512_add_epi32(a##0, _mm512_ternarylogic_epi32(b##0, c##0, d##0, imm)); \
    a##1 = _mm512_add_epi32(a##1, _mm512_ternarylogic_epi32(b##1, c##1, d##1, imm)); \
    a##0 = _mm512_add_epi32(_mm512_rol_epi32(a##0, kMd5S[i]), b##0);                 \
    a##1 = _mm512_add_epi32(_mm512_rol_epi32(a##1, kMd5S[i]), b##1);                 \
  }

#define LMC_ROUND32(imm, i0) LMC_MD5_ROUND4(LMC_STEP32, imm, i0)

LMC_TARGET_AVX512 void md5_x32_avx512(uint32_t* state, const uint8_t* const* blocks,
                                      int64_t num_blocks) {
  LMC_MD5_LOAD2(__m512i, _mm512_load_si512, 16)
  for (int64_t blk = 0; blk < num_blocks; ++blk) {
    const uint8_t* const* p = blocks + blk * 32;
    __m512i m0[16], m1[16];
    for (int lane = 0; lane < 16; ++lane) {
      m0[lane] = _mm512_loadu_si512(p[lane]);
      m1[lane] = _mm512_loadu_si512(p[16 + lane]);
    }
    transpose16(m0);
    transpose16(m1);
    LMC_MD5_SAVE2(__m512i)
    LMC_MD5_ROUNDS(LMC_ROUND32, 0xca, 0xe4, 0x96, 0x39)
    LMC_MD5_FEED_FORWARD2(_mm512_add_epi32)
  }
  LMC_MD5_STORE2(_mm512_store_si512, 16)
}

#undef LMC_ROUND32
#undef LMC_STEP32

}  // namespace lmc::md5_simd

#else  // not x86: never selected (md5_isa_supported is false), defined for the linker.

#include <cstdlib>

namespace lmc::md5_simd {
void md5_x16_avx512(uint32_t*, const uint8_t* const*, int64_t) { std::abort(); }
void md5_x32_avx512(uint32_t*, const uint8_t* const*, int64_t) { std::abort(); }
}  // namespace lmc::md5_simd

#endif
