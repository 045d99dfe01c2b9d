"""DeepSeek Sparse Attention adapted to GQA: config, Triton kernels, PyTorch reference, autograd.

Entry points: DSAConfig (config.py), dsa_attention / set_backend (attention.py).
"""
from .attention import dsa_attention, dsa_attention_rows, get_backend, set_backend
from .config import DSAConfig

__all__ = ["DSAConfig", "dsa_attention", "dsa_attention_rows", "get_backend", "set_backend"]
