// kv_chunk_md5: MD5 of every (chunk, layer) of a slot list, read straight from the paged cache.
//
// Chunk c holds tokens [c * chunk_size, min((c + 1) * chunk_size, num_tokens)) of slot_mapping.
// The message of (chunk c, layer l) is: the K rows of the chunk's slots in slot order, then the
// V rows (MLA: its single rows), raw bytes; slot -1 contributes nothing. Its digest goes to
// per_layer[l][c]. The combined digest of chunk c is the MD5 of the 32-character lowercase hex
// digests of layers 0..num_layers-1 concatenated (kv_chunk_md5_combine).
//
// CPU twin: (chunk, layer) messages of equal length are hashed 16 (AVX-512) or 8 (AVX2) at a
// time, one message per SIMD lane, on lmc::parallel_for threads; a scalar path takes the rest.
// The instruction set is picked at run time (md5_set_isa overrides it, e.g. for tests).
// CUDA: one message per thread, digests written to device memory for one copy back.
#pragma once

#include <cstdint>

#include "kernels/paged_kv_layout.h"

#ifdef LMC_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lmc {

// ---- CPU twin ------------------------------------------------------------------------------

// Hashes every (chunk, layer) message. Throws std::invalid_argument for chunk_size < 1 and
// std::out_of_range naming the first slot outside [0, num_slots) other than -1, before hashing.
void kv_chunk_md5_cpu(const uint8_t* const* layer_ptrs,  // [num_layers] layer base pointers
                      int64_t num_layers, const PagedKVLayout& layout,
                      const int64_t* slot_mapping,  // [num_tokens]
                      int64_t num_tokens, int64_t chunk_size,
                      uint8_t* per_layer);  // [num_layers, num_chunks, 16] digests (out)

// combined[c] = MD5 of hex(per_layer[0][c]) + ... + hex(per_layer[num_layers - 1][c]).
void kv_chunk_md5_combine(const uint8_t* per_layer,  // [num_layers, num_chunks, 16]
                          int64_t num_layers, int64_t num_chunks,
                          uint8_t* combined);  // [num_chunks, 16] (out)

// Number of chunks of num_tokens tokens (the last one may be short).
inline int64_t kv_chunk_md5_num_chunks(int64_t num_tokens, int64_t chunk_size) {
  return (num_tokens + chunk_size - 1) / chunk_size;
}

// Instruction sets of the multi-buffer CPU MD5, best last.
enum class Md5Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The instruction set in use: LMC_MD5_ISA (scalar|avx2|avx512) if set and supported, else the
// best one this CPU supports.
Md5Isa md5_isa();
// True when this CPU (and this build) can run isa.
bool md5_isa_supported(Md5Isa isa);
// Selects isa for later calls; throws std::invalid_argument when it is not supported here.
void md5_set_isa(Md5Isa isa);
// "scalar", "avx2" or "avx512".
const char* md5_isa_name(Md5Isa isa);
// Parses a name of md5_isa_name; throws std::invalid_argument for anything else.
Md5Isa md5_isa_from_name(const char* name);

// MD5 of n independent contiguous messages (grouped by length and hashed like kv_chunk_md5's
// messages, on the selected instruction set). Used by tests and benchmarks.
void md5_many_cpu(const uint8_t* const* msgs,  // [n] message pointers
                  const int64_t* lens,         // [n] message lengths in bytes
                  int64_t n,
                  uint8_t* digests);  // [n, 16] (out)

namespace md5_simd {

// Multi-buffer transforms: state is [4][W] (word-major, lane-minor), blocks is
// [num_blocks][W] pointers to 64-byte blocks (lane l's b-th block at blocks[b * W + l]).
void md5_x8_avx2(uint32_t* state,               // [4, 8]
                 const uint8_t* const* blocks,  // [num_blocks, 8]
                 int64_t num_blocks);
// Two 8-lane sets interleaved (more independent work per step than one set's latency chain).
void md5_x16_avx2(uint32_t* state,               // [4, 16]
                  const uint8_t* const* blocks,  // [num_blocks, 16]
                  int64_t num_blocks);
void md5_x16_avx512(uint32_t* state,               // [4, 16]
                    const uint8_t* const* blocks,  // [num_blocks, 16]
                    int64_t num_blocks);
// Two 16-lane sets interleaved (more independent work per step than one set's latency chain).
void md5_x32_avx512(uint32_t* state,               // [4, 32]
                    const uint8_t* const* blocks,  // [num_blocks, 32]
                    int64_t num_blocks);
}  // namespace md5_simd

// ---- CUDA ----------------------------------------------------------------------------------
#ifdef LMC_WITH_CUDA

// Launches the two kernels on stream: compaction of each chunk's valid slots into workspace
// (recording the first bad token index in *error), then one thread per (chunk, layer) message.
// *error must hold -1 (all bits set) before the call; after it, the index of the first token
// whose slot is outside [0, num_slots) and not -1, or -1 when every slot is valid.
// Returns the launch error, if any. Zero-sized work launches nothing.
cudaError_t launch_kv_chunk_md5(const uint64_t* layer_ptrs,  // [num_layers] device, layer bases
                                int64_t num_layers, const PagedKVLayout& layout,
                                const int64_t* slot_mapping,  // [num_tokens] device
                                int64_t num_tokens, int64_t chunk_size,
                                int64_t* workspace,  // [num_tokens + num_chunks] device
                                uint8_t* per_layer,  // [num_layers, num_chunks, 16] device (out)
                                int64_t* error,      // [1] device (in/out)
                                bool vectorized,     // rows allow 16-byte loads (see below)
                                cudaStream_t stream);

// True when the layout lets the CUDA kernel load 64-byte blocks as 16-byte words straight from
// the cache: dims contiguous, segments (rows or head vectors) a multiple of 64 bytes, and every
// segment start 16-byte aligned for the given layer base pointers.
bool kv_chunk_md5_cuda_vectorizable(const PagedKVLayout& layout, const uint64_t* layer_ptrs_host,
                                    int64_t num_layers);

#endif

}  // namespace lmc
