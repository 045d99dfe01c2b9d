"""Triton kernels of DSA for GQA. Each module holds one kernel family and its launcher."""
