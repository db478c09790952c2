// The MD5 transform (RFC 1321), shared by the CPU twin and the CUDA kernel.
//
// md5_init() sets the initial state and md5_pad() builds the final block(s) (0x80, zeros, bit
// length): every path (Md5Stream, the CPU multi-buffer lanes, the CUDA kernel) starts and ends a
// message through them. md5_transform() compresses one 64-byte block into the 4-word state;
// Md5Stream adds the byte-stream bookkeeping (buffering) on top. Both compile for the host (g++)
// and the device (nvcc) through LMC_HOST_DEVICE. The multi-buffer SIMD transforms of the CPU
// twin (kv_chunk_md5_avx2_cpu.cpp, kv_chunk_md5_avx512_cpu.cpp) use the round tables below so
// every path shares one set of constants.
//
// NOTE: MD5 is little-endian; both x86 and NVIDIA GPUs are, so block words are loaded as-is.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/host_device.h"

namespace lmc {

constexpr int kMd5BlockBytes = 64;
constexpr int kMd5DigestBytes = 16;

// Sets the initial state words A, B, C, D.
LMC_HOST_DEVICE LMC_INLINE void md5_init(uint32_t state[4]) {
  state[0] = 0x67452301u;
  state[1] = 0xefcdab89u;
  state[2] = 0x98badcfeu;
  state[3] = 0x10325476u;
}

// Pads a message of total_bytes whose last rem (< 64) bytes are at tail[0, rem): appends 0x80,
// zeros and the bit length in place (tail has room for two blocks). Returns the number of
// blocks of tail to compress (1, or 2 when rem + 9 > 64).
LMC_HOST_DEVICE LMC_INLINE int md5_pad(uint8_t* tail, int64_t rem, uint64_t total_bytes) {
  const int blocks = rem + 9 > kMd5BlockBytes ? 2 : 1;
  const uint64_t bits = total_bytes * 8;
  tail[rem] = 0x80;
  memset(tail + rem + 1, 0, static_cast<size_t>(blocks * kMd5BlockBytes - 8 - rem - 1));
  memcpy(tail + blocks * kMd5BlockBytes - 8, &bits, 8);
  return blocks;
}

// Round constants K[i] = floor(abs(sin(i + 1)) * 2^32).
constexpr uint32_t kMd5K[64] = {
    0xd76aa478u, 0xe8c7b756u, 0x242070dbu, 0xc1bdceeeu, 0xf57c0fafu, 0x4787c62au, 0xa8304613u,
    0xfd469501u, 0x698098d8u, 0x8b44f7afu, 0xffff5bb1u, 0x895cd7beu, 0x6b901122u, 0xfd987193u,
    0xa679438eu, 0x49b40821u, 0xf61e2562u, 0xc040b340u, 0x265e5a51u, 0xe9b6c7aau, 0xd62f105du,
    0x02441453u, 0xd8a1e681u, 0xe7d3fbc8u, 0x21e1cde6u, 0xc33707d6u, 0xf4d50d87u, 0x455a14edu,
    0xa9e3e905u, 0xfcefa3f8u, 0x676f02d9u, 0x8d2a4c8au, 0xfffa3942u, 0x8771f681u, 0x6d9d6122u,
    0xfde5380cu, 0xa4beea44u, 0x4bdecfa9u, 0xf6bb4b60u, 0xbebfbc70u, 0x289b7ec6u, 0xeaa127fau,
    0xd4ef3085u, 0x04881d05u, 0xd9d4d039u, 0xe6db99e5u, 0x1fa27cf8u, 0xc4ac5665u, 0xf4292244u,
    0x432aff97u, 0xab9423a7u, 0xfc93a039u, 0x655b59c3u, 0x8f0ccc92u, 0xffeff47du, 0x85845dd1u,
    0x6fa87e4fu, 0xfe2ce6e0u, 0xa3014314u, 0x4e0811a1u, 0xf7537e82u, 0xbd3af235u, 0x2ad7d2bbu,
    0xeb86d391u};

// Left-rotate amounts per step.
constexpr int kMd5S[64] = {7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
                           5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20,
                           4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
                           6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21};

// Message word used by each step.
constexpr int kMd5G[64] = {0, 1, 2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                           1, 6, 11, 0,  5,  10, 15, 4,  9,  14, 3,  8,  13, 2,  7,  12,
                           5, 8, 11, 14, 1,  4,  7,  10, 13, 0,  3,  6,  9,  12, 15, 2,
                           0, 7, 14, 5,  12, 3,  10, 1,  8,  15, 6,  13, 4,  11, 2,  9};

// ---- shared by the multi-buffer SIMD transforms (kv_chunk_md5_{avx2,avx512}_cpu.cpp) --------

// The 64 steps as 16 groups of four: ROUND(fn, first step), fn the round function F, G, H or I
// in the transform's own form (SIMD functions, or vpternlogd truth tables).
// clang-format off
#define LMC_MD5_ROUNDS(ROUND, F, G, H, I)                                                    \
  ROUND(F, 0) ROUND(F, 4) ROUND(F, 8) ROUND(F, 12) ROUND(G, 16) ROUND(G, 20) ROUND(G, 24)  \
  ROUND(G, 28) ROUND(H, 32) ROUND(H, 36) ROUND(H, 40) ROUND(H, 44) ROUND(I, 48) ROUND(I, 52) \
  ROUND(I, 56) ROUND(I, 60)
// clang-format on

// One group of four steps from step i0, the state words rotating through a, b, c, d:
// STEP(fn, a, b, c, d, step) updates a.
#define LMC_MD5_ROUND4(STEP, fn, i0) \
  STEP(fn, a, b, c, d, (i0) + 0)     \
  STEP(fn, d, a, b, c, (i0) + 1)     \
  STEP(fn, c, d, a, b, (i0) + 2)     \
  STEP(fn, b, c, d, a, (i0) + 3)

// Two interleaved sets of state words a0..d0 and a1..d1 (vector type T, W lanes each) in the
// [4][2 * W] state array: loaded, saved before a block (sa0..sd1), fed forward after it
// (ADD(x, sx)), stored back.
#define LMC_MD5_LOAD2(T, LOAD, W)                                                       \
  T a0 = LOAD(state + 0 * (W)), a1 = LOAD(state + 1 * (W)), b0 = LOAD(state + 2 * (W)), \
    b1 = LOAD(state + 3 * (W)), c0 = LOAD(state + 4 * (W)), c1 = LOAD(state + 5 * (W)), \
    d0 = LOAD(state + 6 * (W)), d1 = LOAD(state + 7 * (W));
#define LMC_MD5_SAVE2(T) \
  const T sa0 = a0, sb0 = b0, sc0 = c0, sd0 = d0, sa1 = a1, sb1 = b1, sc1 = c1, sd1 = d1;
#define LMC_MD5_FEED_FORWARD2(ADD)                                            \
  a0 = ADD(a0, sa0), b0 = ADD(b0, sb0), c0 = ADD(c0, sc0), d0 = ADD(d0, sd0); \
  a1 = ADD(a1, sa1), b1 = ADD(b1, sb1), c1 = ADD(c1, sc1), d1 = ADD(d1, sd1);
#define LMC_MD5_STORE2(STORE, W)                                                          \
  STORE(state + 0 * (W), a0), STORE(state + 1 * (W), a1), STORE(state + 2 * (W), b0),     \
      STORE(state + 3 * (W), b1), STORE(state + 4 * (W), c0), STORE(state + 5 * (W), c1), \
      STORE(state + 6 * (W), d0), STORE(state + 7 * (W), d1);

LMC_HOST_DEVICE LMC_INLINE uint32_t md5_rotl(uint32_t x, int s) {
  return (x << s) | (x >> (32 - s));
}

// NOTE: the 64 steps are spelled out with literal constants (not a loop over the tables) so
// device code needs no constant-memory lookups and the host compiler folds everything.
#define LMC_MD5_STEP(f, a, b, c, d, x, k, s) \
  a += f(b, c, d) + (x) + (k);               \
  a = md5_rotl(a, s) + (b);
#define LMC_MD5_F(b, c, d) ((d) ^ ((b) & ((c) ^ (d))))
#define LMC_MD5_G(b, c, d) ((c) ^ ((d) & ((b) ^ (c))))
#define LMC_MD5_H(b, c, d) ((b) ^ (c) ^ (d))
#define LMC_MD5_I(b, c, d) ((c) ^ ((b) | ~(d)))

// Compresses one 64-byte block, given as 16 little-endian words, into state[4].
LMC_HOST_DEVICE LMC_INLINE void md5_transform(uint32_t state[4], const uint32_t m[16]) {
  uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
  LMC_MD5_STEP(LMC_MD5_F, a, b, c, d, m[0], 0xd76aa478u, 7)
  LMC_MD5_STEP(LMC_MD5_F, d, a, b, c, m[1], 0xe8c7b756u, 12)
  LMC_MD5_STEP(LMC_MD5_F, c, d, a, b, m[2], 0x242070dbu, 17)
  LMC_MD5_STEP(LMC_MD5_F, b, c, d, a, m[3], 0xc1bdceeeu, 22)
  LMC_MD5_STEP(LMC_MD5_F, a, b, c, d, m[4], 0xf57c0fafu, 7)
  LMC_MD5_STEP(LMC_MD5_F, d, a, b, c, m[5], 0x4787c62au, 12)
  LMC_MD5_STEP(LMC_MD5_F, c, d, a, b, m[6], 0xa8304613u, 17)
  LMC_MD5_STEP(LMC_MD5_F, b, c, d, a, m[7], 0xfd469501u, 22)
  LMC_MD5_STEP(LMC_MD5_F, a, b, c, d, m[8], 0x698098d8u, 7)
  LMC_MD5_STEP(LMC_MD5_F, d, a, b, c, m[9], 0x8b44f7afu, 12)
  LMC_MD5_STEP(LMC_MD5_F, c, d, a, b, m[10], 0xffff5bb1u, 17)
  LMC_MD5_STEP(LMC_MD5_F, b, c, d, a, m[11], 0x895cd7beu, 22)
  LMC_MD5_STEP(LMC_MD5_F, a, b, c, d, m[12], 0x6b901122u, 7)
  LMC_MD5_STEP(LMC_MD5_F, d, a, b, c, m[13], 0xfd987193u, 12)
  LMC_MD5_STEP(LMC_MD5_F, c, d, a, b, m[14], 0xa679438eu, 17)
  LMC_MD5_STEP(LMC_MD5_F, b, c, d, a, m[15], 0x49b40821u, 22)

  LMC_MD5_STEP(LMC_MD5_G, a, b, c, d, m[1], 0xf61e2562u, 5)
  LMC_MD5_STEP(LMC_MD5_G, d, a, b, c, m[6], 0xc040b340u, 9)
  LMC_MD5_STEP(LMC_MD5_G, c, d, a, b, m[11], 0x265e5a51u, 14)
  LMC_MD5_STEP(LMC_MD5_G, b, c, d, a, m[0], 0xe9b6c7aau, 20)
  LMC_MD5_STEP(LMC_MD5_G, a, b, c, d, m[5], 0xd62f105du, 5)
  LMC_MD5_STEP(LMC_MD5_G, d, a, b, c, m[10], 0x02441453u, 9)
  LMC_MD5_STEP(LMC_MD5_G, c, d, a, b, m[15], 0xd8a1e681u, 14)
  LMC_MD5_STEP(LMC_MD5_G, b, c, d, a, m[4], 0xe7d3fbc8u, 20)
  LMC_MD5_STEP(LMC_MD5_G, a, b, c, d, m[9], 0x21e1cde6u, 5)
  LMC_MD5_STEP(LMC_MD5_G, d, a, b, c, m[14], 0xc33707d6u, 9)
  LMC_MD5_STEP(LMC_MD5_G, c, d, a, b, m[3], 0xf4d50d87u, 14)
  LMC_MD5_STEP(LMC_MD5_G, b, c, d, a, m[8], 0x455a14edu, 20)
  LMC_MD5_STEP(LMC_MD5_G, a, b, c, d, m[13], 0xa9e3e905u, 5)
  LMC_MD5_STEP(LMC_MD5_G, d, a, b, c, m[2], 0xfcefa3f8u, 9)
  LMC_MD5_STEP(LMC_MD5_G, c, d, a, b, m[7], 0x676f02d9u, 14)
  LMC_MD5_STEP(LMC_MD5_G, b, c, d, a, m[12], 0x8d2a4c8au, 20)

  LMC_MD5_STEP(LMC_MD5_H, a, b, c, d, m[5], 0xfffa3942u, 4)
  LMC_MD5_STEP(LMC_MD5_H, d, a, b, c, m[8], 0x8771f681u, 11)
  LMC_MD5_STEP(LMC_MD5_H, c, d, a, b, m[11], 0x6d9d6122u, 16)
  LMC_MD5_STEP(LMC_MD5_H, b, c, d, a, m[14], 0xfde5380cu, 23)
  LMC_MD5_STEP(LMC_MD5_H, a, b, c, d, m[1], 0xa4beea44u, 4)
  LMC_MD5_STEP(LMC_MD5_H, d, a, b, c, m[4], 0x4bdecfa9u, 11)
  LMC_MD5_STEP(LMC_MD5_H, c, d, a, b, m[7], 0xf6bb4b60u, 16)
  LMC_MD5_STEP(LMC_MD5_H, b, c, d, a, m[10], 0xbebfbc70u, 23)
  LMC_MD5_STEP(LMC_MD5_H, a, b, c, d, m[13], 0x289b7ec6u, 4)
  LMC_MD5_STEP(LMC_MD5_H, d, a, b, c, m[0], 0xeaa127fau, 11)
  LMC_MD5_STEP(LMC_MD5_H, c, d, a, b, m[3], 0xd4ef3085u, 16)
  LMC_MD5_STEP(LMC_MD5_H, b, c, d, a, m[6], 0x04881d05u, 23)
  LMC_MD5_STEP(LMC_MD5_H, a, b, c, d, m[9], 0xd9d4d039u, 4)
  LMC_MD5_STEP(LMC_MD5_H, d, a, b, c, m[12], 0xe6db99e5u, 11)
  LMC_MD5_STEP(LMC_MD5_H, c, d, a, b, m[15], 0x1fa27cf8u, 16)
  LMC_MD5_STEP(LMC_MD5_H, b, c, d, a, m[2], 0xc4ac5665u, 23)

  LMC_MD5_STEP(LMC_MD5_I, a, b, c, d, m[0], 0xf4292244u, 6)
  LMC_MD5_STEP(LMC_MD5_I, d, a, b, c, m[7], 0x432aff97u, 10)
  LMC_MD5_STEP(LMC_MD5_I, c, d, a, b, m[14], 0xab9423a7u, 15)
  LMC_MD5_STEP(LMC_MD5_I, b, c, d, a, m[5], 0xfc93a039u, 21)
  LMC_MD5_STEP(LMC_MD5_I, a, b, c, d, m[12], 0x655b59c3u, 6)
  LMC_MD5_STEP(LMC_MD5_I, d, a, b, c, m[3], 0x8f0ccc92u, 10)
  LMC_MD5_STEP(LMC_MD5_I, c, d, a, b, m[10], 0xffeff47du, 15)
  LMC_MD5_STEP(LMC_MD5_I, b, c, d, a, m[1], 0x85845dd1u, 21)
  LMC_MD5_STEP(LMC_MD5_I, a, b, c, d, m[8], 0x6fa87e4fu, 6)
  LMC_MD5_STEP(LMC_MD5_I, d, a, b, c, m[15], 0xfe2ce6e0u, 10)
  LMC_MD5_STEP(LMC_MD5_I, c, d, a, b, m[6], 0xa3014314u, 15)
  LMC_MD5_STEP(LMC_MD5_I, b, c, d, a, m[13], 0x4e0811a1u, 21)
  LMC_MD5_STEP(LMC_MD5_I, a, b, c, d, m[4], 0xf7537e82u, 6)
  LMC_MD5_STEP(LMC_MD5_I, d, a, b, c, m[11], 0xbd3af235u, 10)
  LMC_MD5_STEP(LMC_MD5_I, c, d, a, b, m[2], 0x2ad7d2bbu, 15)
  LMC_MD5_STEP(LMC_MD5_I, b, c, d, a, m[9], 0xeb86d391u, 21)

  state[0] += a;
  state[1] += b;
  state[2] += c;
  state[3] += d;
}

#undef LMC_MD5_STEP
#undef LMC_MD5_F
#undef LMC_MD5_G
#undef LMC_MD5_H
#undef LMC_MD5_I

// Compresses one 64-byte block at any alignment.
LMC_HOST_DEVICE LMC_INLINE void md5_transform_bytes(uint32_t state[4], const uint8_t* block) {
  uint32_t m[16];
  memcpy(m, block, kMd5BlockBytes);
  md5_transform(state, m);
}

// Streaming MD5 over byte pieces: update() any number of times, then final().
struct Md5Stream {
  uint32_t state[4];
  uint64_t total;                   // bytes seen
  uint8_t buf[2 * kMd5BlockBytes];  // one block buffered, room for md5_pad's second
  int fill;                         // bytes buffered in buf

  LMC_HOST_DEVICE void init() {
    md5_init(state);
    total = 0;
    fill = 0;
  }

  LMC_HOST_DEVICE void update(const uint8_t* data, int64_t n) {
    total += static_cast<uint64_t>(n);
    if (fill > 0) {
      const int64_t take = n < kMd5BlockBytes - fill ? n : kMd5BlockBytes - fill;
      memcpy(buf + fill, data, static_cast<size_t>(take));
      fill += static_cast<int>(take);
      data += take;
      n -= take;
      if (fill < kMd5BlockBytes) return;
      md5_transform_bytes(state, buf);
      fill = 0;
    }
    for (; n >= kMd5BlockBytes; n -= kMd5BlockBytes, data += kMd5BlockBytes) {
      md5_transform_bytes(state, data);
    }
    if (n > 0) {
      memcpy(buf, data, static_cast<size_t>(n));
      fill = static_cast<int>(n);
    }
  }

  // Pads, appends the bit length, and writes the 16-byte digest.
  LMC_HOST_DEVICE void final(uint8_t digest[kMd5DigestBytes]) {
    const int blocks = md5_pad(buf, fill, total);
    for (int b = 0; b < blocks; ++b) md5_transform_bytes(state, buf + b * kMd5BlockBytes);
    memcpy(digest, state, kMd5DigestBytes);
  }
};

// Writes the 32 lowercase hex characters of a 16-byte digest (no terminator).
LMC_HOST_DEVICE LMC_INLINE void md5_hex(const uint8_t digest[kMd5DigestBytes], char out[32]) {
  const char* hex = "0123456789abcdef";
  for (int i = 0; i < kMd5DigestBytes; ++i) {
    out[2 * i] = hex[digest[i] >> 4];
    out[2 * i + 1] = hex[digest[i] & 15];
  }
}

}  // namespace lmc
