"""Naive references the kernel tests compare the compiled kernels against."""
