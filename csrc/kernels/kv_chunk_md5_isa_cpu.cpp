// Instruction-set selection of the CPU MD5 twin and md5_many_cpu (contiguous messages through
// the same group hasher as kv_chunk_md5_cpu, kv_chunk_md5_lanes.h).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/kv_chunk_md5.h"
#include "kernels/kv_chunk_md5_lanes.h"
#include "kernels/md5.h"

namespace lmc {
namespace {

// ---- instruction-set selection -------------------------------------------------------------

bool cpu_has(Md5Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case Md5Isa::kScalar:
      return true;
    case Md5Isa::kAvx2:
      return __builtin_cpu_supports("avx2");
    case Md5Isa::kAvx512:
      return __builtin_cpu_supports("avx512f");
  }
  return false;
#else
  return isa == Md5Isa::kScalar;
#endif
}

Md5Isa best_isa() {
  if (cpu_has(Md5Isa::kAvx512)) return Md5Isa::kAvx512;
  if (cpu_has(Md5Isa::kAvx2)) return Md5Isa::kAvx2;
  return Md5Isa::kScalar;
}

Md5Isa initial_isa() {
  if (const char* env = std::getenv("LMC_MD5_ISA")) {
    for (Md5Isa isa : {Md5Isa::kScalar, Md5Isa::kAvx2, Md5Isa::kAvx512}) {
      if (std::strcmp(env, md5_isa_name(isa)) == 0 && cpu_has(isa)) return isa;
    }
  }
  return best_isa();
}

std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

// A contiguous message (md5_many_cpu).
// A contiguous message (md5_many_cpu).
struct ContigReader {
  const uint8_t* p;

  // Points out[b * W] (b < k) at the next k blocks; stage is not needed.
  template <int W>
  void blocks(int64_t k, const uint8_t** out, uint8_t* /*stage*/) {
    for (int64_t b = 0; b < k; ++b) out[b * W] = p + b * kMd5BlockBytes;
    p += k * kMd5BlockBytes;
  }
  void prefetch(int64_t n) const { md5_detail::prefetch_bytes(p, n); }
  void read(uint8_t* dst, int64_t n) {
    if (n > 0) std::memcpy(dst, p, static_cast<size_t>(n));
    p += n;
  }
};

}  // namespace

const char* md5_isa_name(Md5Isa isa) {
  switch (isa) {
    case Md5Isa::kScalar:
      return "scalar";
    case Md5Isa::kAvx2:
      return "avx2";
    case Md5Isa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

Md5Isa md5_isa_from_name(const char* name) {
  for (Md5Isa isa : {Md5Isa::kScalar, Md5Isa::kAvx2, Md5Isa::kAvx512}) {
    if (std::strcmp(name, md5_isa_name(isa)) == 0) return isa;
  }
  throw std::invalid_argument(
      detail::concat("isa must be 'scalar', 'avx2' or 'avx512', got '", name, "'"));
}

bool md5_isa_supported(Md5Isa isa) { return cpu_has(isa); }

Md5Isa md5_isa() { return static_cast<Md5Isa>(isa_slot().load(std::memory_order_relaxed)); }

void md5_set_isa(Md5Isa isa) {
  LMC_CHECK_ARG(cpu_has(isa), "isa '", md5_isa_name(isa), "' is not supported by this CPU");
  isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

void md5_many_cpu(const uint8_t* const* msgs, const int64_t* lens, int64_t n, uint8_t* digests) {
  if (n <= 0) return;
  const Md5Isa isa = md5_isa();
  std::vector<int64_t> len_of(lens, lens + n);
  std::vector<int64_t> order;
  const std::vector<md5_detail::Group> groups = md5_detail::group_by_length(len_of, isa, order);
  parallel_for(static_cast<int64_t>(groups.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t gi = begin; gi < end; ++gi) {
      const md5_detail::Group& grp = groups[gi];
      ContigReader readers[32];
      uint8_t* outs[32];
      for (int i = 0; i < grp.count; ++i) {
        const int64_t m = order[grp.first + i];
        readers[i].p = msgs[m];
        outs[i] = digests + m * kMd5DigestBytes;
      }
      md5_detail::hash_group(readers, grp.count, len_of[order[grp.first]], isa, outs);
    }
  });
}

}  // namespace lmc
