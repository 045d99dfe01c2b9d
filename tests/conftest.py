"""Session-wide settings that must exist before any test module imports longshot code.

Triton decides at decoration time whether a kernel runs compiled or interpreted, so on a
machine without CUDA TRITON_INTERPRET must be set before the first import of model.dsa (which
any model test pulls in), not inside one test module.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
