"""Random DSA inputs shared by the kernel tests: fresh every session (one SEED), small because
the Triton interpreter runs each program in numpy."""
import torch

from model.dsa.plan import doc_starts_from_cu_seqlens

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SEED = torch.seed()


def gen():
    return torch.Generator(device=DEV).manual_seed(SEED)


def rows_of(cu, t):
    cu = torch.as_tensor(cu, dtype=torch.int32, device=DEV)
    return torch.arange(t, dtype=torch.int32, device=DEV), doc_starts_from_cu_seqlens(cu, t)


def case(g, t, hq, hkv, d=16, hi=2, di=16, grad=True):
    r = lambda *s: torch.randn(*s, generator=g, device=DEV)  # noqa: E731
    xs = [r(t, hq, d), r(t, hkv, d), r(t, hkv, d), r(t, hi, di) * 0.5, r(t, di) * 0.5, r(t, hi)]
    return [x.requires_grad_(grad) for x in xs]


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-20))
