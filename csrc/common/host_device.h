// Host/device qualifiers shared by the CPU twins (g++) and the CUDA kernels (nvcc).
#pragma once

#if defined(__CUDACC__)
#define LMC_HOST_DEVICE __host__ __device__
#define LMC_DEVICE __device__
#define LMC_RESTRICT __restrict__
#else
#define LMC_HOST_DEVICE
#define LMC_DEVICE
#define LMC_RESTRICT __restrict__
#endif

#define LMC_INLINE inline
