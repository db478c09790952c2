// Host/device qualifiers shared by the CPU twins (g++) and the CUDA kernels (nvcc).
#pragma once

#if defined(__CUDACC__)
#define LMC_HOST_DEVICE __host__ __device__
#else
#define LMC_HOST_DEVICE
#endif

#define LMC_RESTRICT __restrict__
#define LMC_INLINE inline
