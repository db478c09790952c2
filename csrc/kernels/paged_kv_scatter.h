// paged_kv_scatter: contiguous chunk buffer -> paged KV cache (the load direction), all layers
// in one call.
//
//   row(layer, kv, slot_mapping[i]) = chunk[kv][layer][i][:]   for every i with slot != -1
//
// row(layer, kv, slot) is one token's num_heads * head_size elements of one kv side, addressed
// through PagedKVLayout (paged_kv_layout.h), so one entry point serves every vLLM layout.
// Slot -1 is padding: the cache is left untouched for it. Any other slot outside
// [0, num_slots) is an error reported before anything is written. Two tokens naming the same
// slot write the same cache row; which one wins is unspecified.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/paged_kv_layout.h"

#ifdef LMC_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lmc {

/// @brief CPU twin of paged_kv_scatter; threads over (kv, layer, token tile) work items.
/// @param chunk          [num_kv, num_layers, num_tokens, num_heads * head_size] contiguous,
///                       layout.elem_size bytes per element
/// @param layer_ptrs     [num_layers] base address of each layer's cache, each laid out as `layout`
/// @param num_layers     layers to copy (>= 0)
/// @param layout         geometry and element strides of one layer's cache
/// @param slot_mapping   [num_tokens] int32 or int64 slots (slot_elem_size bytes each)
/// @param slot_elem_size 4 or 8
/// @param num_tokens     tokens to copy (>= 0)
/// @throws std::out_of_range naming the first slot outside [-1, num_slots) and its position
///         (nothing is written); std::invalid_argument for a bad size or a null pointer.
void paged_kv_scatter_cpu(const void* chunk, void* const* layer_ptrs, int64_t num_layers,
                          const PagedKVLayout& layout, const void* slot_mapping,
                          int64_t slot_elem_size, int64_t num_tokens);

/// @brief CPU twin of the batched paged_kv_scatter: many chunk buffers in one call (one slot
/// validation, one parallel_for over (chunk, kv, layer, token tile) work items).
///
/// Chunk c supplies the next chunk_tokens[c] tokens of slot_mapping:
///   row(layer, kv, slot_mapping[begin_c + j]) = chunks[c][kv][layer][j][:],
///   begin_c = chunk_tokens[0] + ... + chunk_tokens[c - 1].
/// @param chunks         [num_chunks] chunk buffers, chunks[c] [num_kv, num_layers,
///                       chunk_tokens[c], num_heads * head_size] contiguous (may be null when
///                       chunk_tokens[c] is 0)
/// @param chunk_tokens   [num_chunks] tokens of each chunk (>= 0), summing to num_tokens
/// @param layer_ptrs     [num_layers] base address of each layer's cache, each laid out as `layout`
/// @param slot_mapping   [num_tokens] int32 or int64 slots (slot_elem_size bytes each)
/// @throws std::out_of_range naming the first slot outside [-1, num_slots) and its position in
///         slot_mapping (nothing is written); std::invalid_argument when the chunk sizes do not
///         add up to num_tokens, for a bad size or a null pointer.
void paged_kv_scatter_chunks_cpu(const void* const* chunks, const int64_t* chunk_tokens,
                                 int64_t num_chunks, void* const* layer_ptrs, int64_t num_layers,
                                 const PagedKVLayout& layout, const void* slot_mapping,
                                 int64_t slot_elem_size, int64_t num_tokens);

/// @brief Instruction set of the CPU scatter into a transposed kv side (vllm_cpu's K, 2-byte
/// elements): "avx2" (16x16 register transposes, picked when the CPU has AVX2 unless
/// LMC_COPY_ISA=sse2 at start-up) or "sse2" (8x8 tiles through one staging buffer).
std::string paged_kv_copy_isa();
/// @brief Forces it; throws std::invalid_argument for an unknown name or "avx2" without AVX2.
void paged_kv_copy_set_isa(const std::string& name);
/// @brief The names this CPU can run, best last.
std::vector<std::string> paged_kv_copy_supported_isas();

#ifdef LMC_WITH_CUDA
/// @brief CUDA paged_kv_scatter, enqueued on `stream` (nothing waits for it).
///
/// A validation kernel records in *bad_pos the smallest position of an out-of-range slot
/// (ULLONG_MAX when none); the copy kernels read *bad_pos first and write nothing when it is set,
/// so the caller reads *bad_pos back after the launch to report the error.
/// @param chunk          [num_kv, num_layers, num_tokens, num_heads * head_size] contiguous, in
///                       device memory or in pinned host memory (addressed directly, zero-copy)
/// @param layer_ptrs     [num_layers] host array of device addresses, one per layer (any count;
///                       copied into kernel parameters, kMaxLayersPerLaunch per launch)
/// @param slot_mapping   [num_tokens] int32 or int64 slots in device memory
/// @param bad_pos        [1] device scratch, overwritten
/// @return the first CUDA error of the enqueued work (cudaSuccess when all launched).
cudaError_t launch_paged_kv_scatter(const void* chunk, void* const* layer_ptrs, int64_t num_layers,
                                    const PagedKVLayout& layout, const void* slot_mapping,
                                    int64_t slot_elem_size, int64_t num_tokens,
                                    unsigned long long* bad_pos, cudaStream_t stream);

/// @brief CUDA batched paged_kv_scatter (chunks as in paged_kv_scatter_chunks_cpu), enqueued on
/// `stream`; one validation launch for all tokens, then copy launches of up to
/// kMaxChunksPerLaunch chunks and kMaxLayersPerLaunch layers each. *bad_pos as above.
/// @param chunks         [num_chunks] host array of chunk addresses (device or pinned host memory)
/// @param chunk_tokens   [num_chunks] host array, tokens of each chunk, summing to num_tokens
cudaError_t launch_paged_kv_scatter_chunks(const void* const* chunks, const int64_t* chunk_tokens,
                                           int64_t num_chunks, void* const* layer_ptrs,
                                           int64_t num_layers, const PagedKVLayout& layout,
                                           const void* slot_mapping, int64_t slot_elem_size,
                                           int64_t num_tokens, unsigned long long* bad_pos,
                                           cudaStream_t stream);
#endif

}  // namespace lmc
