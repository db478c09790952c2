// Memory moves of the CPU copy twins (internal header): plain and streaming-store copies.
// Long destination runs use non-temporal stores (no read-for-ownership of the destination).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/host_device.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace lmc {
namespace copy_detail {

// Runs at least this long use non-temporal stores (the destination will not be read soon and
// streaming stores skip the read-for-ownership of every destination line).
constexpr int64_t kStreamBytes = 4096;

#if defined(__SSE2__)
// n bytes (a multiple of 64) as streaming stores; dst 16-byte aligned, src any alignment.
inline void stream_lines(char* LMC_RESTRICT dst, const char* LMC_RESTRICT src, int64_t n) {
  for (int64_t o = 0; o < n; o += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + o));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + o + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + o + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + o + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + o), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + o + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + o + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + o + 48), d);
  }
}
#endif

// Copies bytes; long copies use streaming stores when both ends allow it.
inline void copy_bytes(char* LMC_RESTRICT dst, const char* LMC_RESTRICT src, int64_t n) {
#if defined(__SSE2__)
  if (n >= kStreamBytes && (reinterpret_cast<uintptr_t>(dst) & 15) == 0 && (n & 63) == 0) {
    stream_lines(dst, src, n);
    return;
  }
#endif
  std::memcpy(dst, src, static_cast<size_t>(n));
}

// rows x row_bytes from src (rows src_stride bytes apart) to dst (rows dst_stride bytes apart);
// whole 64-byte lines go out as streaming stores when every row allows it.
inline void copy_rows(char* LMC_RESTRICT dst, int64_t dst_stride, const char* LMC_RESTRICT src,
                      int64_t src_stride, int64_t rows, int64_t row_bytes) {
#if defined(__SSE2__)
  if ((row_bytes & 63) == 0 && ((reinterpret_cast<uintptr_t>(dst) | dst_stride) & 63) == 0) {
    for (int64_t r = 0; r < rows; ++r, dst += dst_stride, src += src_stride) {
      stream_lines(dst, src, row_bytes);
    }
    return;
  }
#endif
  for (int64_t r = 0; r < rows; ++r, dst += dst_stride, src += src_stride) {
    std::memcpy(dst, src, static_cast<size_t>(row_bytes));
  }
}

// Orders the streaming stores of this thread before the caller returns.
inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace copy_detail
}  // namespace lmc
