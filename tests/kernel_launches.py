"""Recording what Triton kernels a piece of code launches, so that the launches can be compiled for
a GPU on a machine without one (tests/model/test_kernels_compile.py, tests/bench/kernel_schedule.py).

Under TRITON_INTERPRET the interpreter runs every launch; patched, it also writes down each call as
(module, name, signature, constexprs, launch options, and which arguments are 16-byte aligned, as a
real launch specialises them)."""
from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch

_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64",
           torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}


def arg_type(value):
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def _aligned(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.data_ptr() % 16 == 0
    return type(value) is int and value % 16 == 0


@contextmanager
def recorded_launches():
    """Yields the list that every interpreted kernel launch inside the block is appended to."""
    from triton.runtime.interpreter import InterpretedFunction

    launches: list[dict] = []
    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        params = inspect.signature(self.fn).parameters
        options = {k: kwargs[k] for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}
        bound = dict(zip(params, args)) | {k: v for k, v in kwargs.items() if k in params}
        signature, constexprs, aligned = {}, {}, []
        for i, (name, p) in enumerate(params.items()):
            value = bound.get(name, p.default)
            if "constexpr" in str(p.annotation):
                signature[name], constexprs[name] = "constexpr", value
            else:
                signature[name] = arg_type(value)
                if _aligned(value):
                    aligned.append(i)
        launches.append({"module": self.fn.__module__, "name": self.fn.__name__, "signature": signature,
                         "constexprs": constexprs, "options": options, "aligned": aligned})
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run
    try:
        yield launches
    finally:
        InterpretedFunction.run = run


def unique(launches: list[dict], keep_alignment: bool = True) -> list[dict]:
    """One spec per distinct specialisation."""
    import json

    specs = launches if keep_alignment else [{k: v for k, v in s.items() if k != "aligned"} for s in launches]
    return list({json.dumps(s, sort_keys=True): s for s in specs}.values())
