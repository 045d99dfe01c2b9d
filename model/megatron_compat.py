"""Everything Megatron-core needs to run on a machine without a GPU, in one place.

Megatron-core 0.19 is written for CUDA: it asks `torch.cuda.current_device()` for the device of
buffers it creates (router statistics, memory buffers, DDP grad buffers), keeps its RNG streams in
CUDA generator states, and some modules expect names that only exist with Transformer Engine.
longshot's CPU tests and `make demo` run the real Megatron modules, so this module patches those
few spots, and only when no GPU is present: on a GPU nothing here is applied.

`apply()` is idempotent and must run before Megatron builds any module.
"""
from __future__ import annotations

import contextlib
import sys

import torch

_applied = False


def needed() -> bool:
    """True when Megatron must run on the CPU (no CUDA device visible)."""
    return not torch.cuda.is_available()


def compute_device() -> torch.device:
    """The device models and batches live on: the current GPU, or the CPU."""
    if needed():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def apply() -> None:
    """Patch device lookup, the RNG tracker and missing TE names when no GPU is present."""
    global _applied
    if _applied or not needed():
        return
    _patch_device_lookup()
    _install_cpu_rng_tracker()
    _patch_missing_te_names()
    _redirect_hardcoded_cuda()
    _cuda_type_names_for_optimizer()
    _split_sizes_as_lists()
    _applied = True


def _patch_device_lookup() -> None:
    # Megatron writes `device=torch.cuda.current_device()` in many modules; answering "cpu"
    # places those tensors on the CPU instead of raising "no NVIDIA driver".
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    # Megatron's fused-kernel guards ask for the compute capability; a CPU has none.
    torch.cuda.get_device_capability = lambda *a, **k: (0, 0)  # type: ignore[assignment]
    # DDP's grad sync orders its collectives against the current CUDA stream; the CPU has one
    # implicit stream, so waiting on it is a no-op.
    torch.cuda.current_stream = lambda *a, **k: _NullStream()  # type: ignore[assignment]
    # Checkpoint saving waits for device-to-host copies; on the CPU there are none.
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    # The all-to-all MoE dispatcher (variable token counts per rank, as context parallelism
    # and packs of different lengths give) copies its split sizes on a side stream.
    # A class, not a function: libraries imported later (transformers) write `torch.cuda.Stream | None`.
    torch.cuda.Stream = _NullStream  # type: ignore[assignment,misc]
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()  # type: ignore[assignment]


class _NullStream:
    """The CPU's single implicit stream: every ordering request is already satisfied."""

    def __init__(self, *args, **kwargs):  # torch.cuda.Stream's arguments (device, priority)
        pass

    def wait_event(self, event) -> None:
        pass

    def wait_stream(self, stream) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, *a, **k) -> "_NullStream":
        return self  # an event on the CPU stream: already complete

    def __eq__(self, other) -> bool:  # there is only one CPU stream
        return isinstance(other, _NullStream)

    def __hash__(self) -> int:
        return 0


class CpuRNGStatesTracker:
    """Megatron's named RNG streams (model-parallel, expert-parallel, data-parallel) kept as CPU
    generator states, with the same interface as `CudaRNGStatesTracker`; `fork` swaps the
    default CPU generator to the named stream and back, so dropout and init draw from it."""

    def __init__(self, *args, **kwargs):
        self.reset()

    def is_initialized(self) -> bool:
        return bool(self.states_)

    def reset(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.states_.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self.states_ = {k: v.clone() for k, v in states.items()}

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise RuntimeError(f"seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        gen = torch.Generator()
        gen.manual_seed(seed)
        self.states_[name] = gen.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def _install_cpu_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    # Activation recomputation saves and restores the CUDA generator around each recomputed
    # chunk (next to the CPU generator, which it handles itself): with no GPU there is none.
    mrandom._get_cuda_rng_state = lambda *a, **k: None
    mrandom._set_cuda_rng_state = lambda *a, **k: None


def _patch_missing_te_names() -> None:
    # Without Transformer Engine some Megatron modules import names that only the TE extension
    # defines; they are only called on TE code paths, so None (Megatron's own fallback) is right.
    import megatron.core.extensions.transformer_engine as te_ext

    for name in ("te_general_gemm",):
        if not hasattr(te_ext, name):
            setattr(te_ext, name, None)


# Megatron modules that create small bookkeeping tensors with a literal device='cuda' (loss-scale
# and found-inf flags, grad-norm accumulators): on the CPU those calls must make CPU tensors.
_HARDCODED_CUDA_MODULES = (
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.utils",  # the local multi_tensor_l2norm fallback
)
_FACTORIES = frozenset({"tensor", "zeros", "ones", "empty", "full", "arange"})


class _CpuDeviceTorch:
    """Stands in for the `torch` name inside one Megatron module: factory calls asking for
    device 'cuda' get the CPU; everything else is torch itself."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        attr = getattr(self._real, name)
        if name not in _FACTORIES:
            return attr

        def factory(*args, **kwargs):
            dev = kwargs.get("device")
            if dev is not None and torch.device(dev).type == "cuda":
                kwargs["device"] = "cpu"
            return attr(*args, **kwargs)

        return factory


def _redirect_hardcoded_cuda() -> None:
    import importlib

    for name in _HARDCODED_CUDA_MODULES:
        mod = importlib.import_module(name)
        if getattr(mod, "torch", None) is torch:
            mod.torch = _CpuDeviceTorch(torch)


def _cuda_type_names_for_optimizer() -> None:
    """Megatron's optimizers sort parameters by `param.type()` strings ('torch.cuda.FloatTensor',
    ...) and refuse others; for calls made from megatron.core.optimizer only, a CPU tensor
    reports the CUDA name of its dtype. Every other caller sees the usual answer."""
    real_type = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs and self.device.type == "cpu":
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("megatron.core.optimizer"):
                return real_type(self).replace("torch.", "torch.cuda.", 1)
        if dtype is None and not kwargs:
            return real_type(self)
        return real_type(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_  # type: ignore[method-assign]


def _split_sizes_as_lists() -> None:
    """The all-to-all MoE dispatcher moves its split sizes to the host as numpy arrays, but only
    when they live on a GPU; on the CPU they stay tensors, which all_to_all_single refuses.
    Hand them over as lists of ints (what the collective takes on any backend)."""
    import megatron.core.transformer.moe.token_dispatcher as td

    real = td.maybe_move_tensor_to_cpu

    def to_host(tensor, as_numpy: bool = False, record_stream: bool = False):
        if as_numpy and torch.is_tensor(tensor) and not tensor.is_cuda:
            return tensor.tolist()
        return real(tensor, as_numpy=as_numpy, record_stream=record_stream)

    td.maybe_move_tensor_to_cpu = to_host
