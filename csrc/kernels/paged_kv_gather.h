// paged_kv_gather: paged KV cache -> contiguous chunk buffer (the store direction), all layers
// in one call.
//
//   out[kv][layer][i][:] = row(layer, kv, slot_mapping[i])   for every i with slot != -1
//
// row(layer, kv, slot) is one token's num_heads * head_size elements of one kv side, addressed
// through PagedKVLayout (paged_kv_layout.h), so one entry point serves every vLLM layout.
// Slot -1 is padding: out's row is left untouched. Any other slot outside [0, num_slots) is an
// error reported before anything is written.
#pragma once

#include <cstdint>

#include "kernels/paged_kv_layout.h"

#ifdef LMC_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lmc {

/// @brief CPU twin of paged_kv_gather; threads over (kv, layer, token tile) work items.
/// @param layer_ptrs     [num_layers] base address of each layer's cache, each laid out as `layout`
/// @param num_layers     layers to copy (>= 0)
/// @param layout         geometry and element strides of one layer's cache
/// @param slot_mapping   [num_tokens] int32 or int64 slots (slot_elem_size bytes each)
/// @param slot_elem_size 4 or 8
/// @param num_tokens     tokens to copy (>= 0)
/// @param out            [num_kv, num_layers, num_tokens, num_heads * head_size] contiguous,
///                       layout.elem_size bytes per element
/// @throws std::out_of_range naming the first slot outside [-1, num_slots) and its position
///         (nothing is written); std::invalid_argument for a bad size or a null pointer.
void paged_kv_gather_cpu(const void* const* layer_ptrs, int64_t num_layers,
                         const PagedKVLayout& layout, const void* slot_mapping,
                         int64_t slot_elem_size, int64_t num_tokens, void* out);

/// @brief CPU twin of the batched paged_kv_gather: many chunk buffers in one call (one slot
/// validation, one parallel_for over (chunk, kv, layer, token tile) work items).
///
/// Chunk c receives the next chunk_tokens[c] tokens of slot_mapping:
///   outs[c][kv][layer][j][:] = row(layer, kv, slot_mapping[begin_c + j]),
///   begin_c = chunk_tokens[0] + ... + chunk_tokens[c - 1].
/// @param layer_ptrs     [num_layers] base address of each layer's cache, each laid out as `layout`
/// @param slot_mapping   [num_tokens] int32 or int64 slots (slot_elem_size bytes each)
/// @param outs           [num_chunks] chunk buffers, outs[c] [num_kv, num_layers, chunk_tokens[c],
///                       num_heads * head_size] contiguous (may be null when chunk_tokens[c] is 0)
/// @param chunk_tokens   [num_chunks] tokens of each chunk (>= 0), summing to num_tokens
/// @throws std::out_of_range naming the first slot outside [-1, num_slots) and its position in
///         slot_mapping (nothing is written to any chunk); std::invalid_argument when the chunk
///         sizes do not add up to num_tokens, for a bad size or a null pointer.
void paged_kv_gather_chunks_cpu(const void* const* layer_ptrs, int64_t num_layers,
                                const PagedKVLayout& layout, const void* slot_mapping,
                                int64_t slot_elem_size, int64_t num_tokens, void* const* outs,
                                const int64_t* chunk_tokens, int64_t num_chunks);

#ifdef LMC_WITH_CUDA
/// @brief CUDA paged_kv_gather, enqueued on `stream` (nothing waits for it).
///
/// A validation kernel records in *bad_pos the smallest position of an out-of-range slot
/// (ULLONG_MAX when none); the copy kernels read *bad_pos first and write nothing when it is set,
/// so the caller reads *bad_pos back after the launch to report the error.
/// @param layer_ptrs     [num_layers] host array of device addresses, one per layer (any count;
///                       copied into kernel parameters, kMaxLayersPerLaunch per launch)
/// @param slot_mapping   [num_tokens] int32 or int64 slots in device memory
/// @param out            [num_kv, num_layers, num_tokens, num_heads * head_size] contiguous, in
///                       device memory or in pinned host memory (addressed directly, zero-copy)
/// @param bad_pos        [1] device scratch, overwritten
/// @return the first CUDA error of the enqueued work (cudaSuccess when all launched).
cudaError_t launch_paged_kv_gather(const void* const* layer_ptrs, int64_t num_layers,
                                   const PagedKVLayout& layout, const void* slot_mapping,
                                   int64_t slot_elem_size, int64_t num_tokens, void* out,
                                   unsigned long long* bad_pos, cudaStream_t stream);

/// @brief CUDA batched paged_kv_gather (chunks as in paged_kv_gather_chunks_cpu), enqueued on
/// `stream`; one validation launch for all tokens, then copy launches of up to
/// kMaxChunksPerLaunch chunks and kMaxLayersPerLaunch layers each. *bad_pos as above.
/// @param outs           [num_chunks] host array of chunk addresses (device or pinned host memory)
/// @param chunk_tokens   [num_chunks] host array, tokens of each chunk, summing to num_tokens
cudaError_t launch_paged_kv_gather_chunks(const void* const* layer_ptrs, int64_t num_layers,
                                          const PagedKVLayout& layout, const void* slot_mapping,
                                          int64_t slot_elem_size, int64_t num_tokens,
                                          void* const* outs, const int64_t* chunk_tokens,
                                          int64_t num_chunks, unsigned long long* bad_pos,
                                          cudaStream_t stream);
#endif

}  // namespace lmc
