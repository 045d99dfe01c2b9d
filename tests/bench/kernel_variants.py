"""Kernel variants made from a kernel module's own source, for ablation benches.

A variant is the module's source with named text cuts applied (each must match exactly once),
written to a temporary file and imported from there, since Triton reads the source of what it
compiles. Variants thus follow the kernel as it changes and share none of its code by copy; a cut
that no longer matches stops the bench with the module's name instead of timing the wrong thing.
"""
from __future__ import annotations

import importlib.util
import inspect
import os


def variant(module, name: str, cuts: list[tuple[str, str]], tmp: str):
    """``module`` with every (old, new) of ``cuts`` applied, imported from a file under ``tmp``;
    the module itself when there are no cuts."""
    if not cuts:
        return module
    src = inspect.getsource(module).replace("from .", "from " + module.__package__ + ".")
    for old, new in cuts:
        if src.count(old) != 1:
            raise SystemExit(f"variant {name!r}: a cut matches the source of {module.__name__} {src.count(old)} "
                             "times, not once (the kernel changed: update the bench's cuts)")
        src = src.replace(old, new)
    slug = "".join(ch if ch.isalnum() else "_" for ch in name)
    path = os.path.join(tmp, f"{module.__name__.rsplit('.', 1)[-1]}_{slug}.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(f"ablation_{slug}_{module.__name__.replace('.', '_')}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
