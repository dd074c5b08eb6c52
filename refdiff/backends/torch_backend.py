"""The torch backend (CPU and CUDA, one code path): seeded normals, autograd, synchronize,
and ``torch.compile`` for :mod:`refdiff.compiled`."""

from __future__ import annotations

from typing import Any, Callable

import array_api_compat.torch as torch_xp
import torch

from refdiff.backends import Backend


class TorchBackend(Backend):
    """torch tensors on any device. Normals are drawn in float64 (float64 requests) or
    float32 (every other dtype) on the target device and cast, so float16/bfloat16 draws
    are the rounded float32 draws of the same seed."""

    name = "torch"

    @property
    def xp(self):
        return torch_xp

    def owns(self, a: Any) -> bool:
        return isinstance(a, torch.Tensor)

    def generator(self, seed_or_generator: Any = None, device: Any = None):
        if isinstance(seed_or_generator, torch.Generator):
            return seed_or_generator
        gen = torch.Generator(device=torch.device(device or "cpu"))
        if seed_or_generator is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed_or_generator))
        return gen

    def normal(self, shape, *, dtype: Any = torch.float32, device: Any = None,
               generator: Any = None):
        device = torch.device(device or "cpu")
        gen = self.generator(generator, device)
        draw = torch.float64 if dtype == torch.float64 else torch.float32
        z = torch.randn(tuple(shape), generator=gen, dtype=draw, device=device)
        return z.to(dtype)

    def uniform(self, shape, *, dtype: Any = torch.float32, device: Any = None,
                generator: Any = None):
        device = torch.device(device or "cpu")
        gen = self.generator(generator, device)
        return torch.rand(tuple(shape), generator=gen, dtype=dtype, device=device)

    def grad(self, fn: Callable[[Any], Any], x: Any):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = fn(x_in)
            if out.ndim != 0:
                raise ValueError(f"fn must return a scalar, got shape {tuple(out.shape)}")
            (g,) = torch.autograd.grad(out, x_in)
        return g

    def to_numpy(self, a: Any):
        return a.detach().to("cpu").numpy() if a.dtype != torch.bfloat16 else \
            a.detach().to("cpu", torch.float32).numpy()

    def synchronize(self, device: Any = None) -> None:
        device = torch.device(device or "cpu")
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if not hasattr(torch, "compile"):
            raise TypeError(f"torch {torch.__version__} has no torch.compile; refdiff.compiled "
                            "needs torch >= 2.0")
        return torch.compile(fn)
