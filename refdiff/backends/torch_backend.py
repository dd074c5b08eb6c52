"""The torch backend (CPU and CUDA, one code path): seeded normals, autograd, synchronize,
and ``torch.compile`` for :mod:`refdiff.compiled`."""

from __future__ import annotations

from typing import Any, Callable

import array_api_compat.torch as torch_xp
import torch

from refdiff.backends import Backend, _describe


class TorchBackend(Backend):
    """torch tensors on any device. Normals are drawn in float64 (float64 requests) or
    float32 (every other dtype) on the target device and cast, so float16/bfloat16 draws
    are the rounded float32 draws of the same seed."""

    name = "torch"
    generator_types = (torch.Generator,)
    generator_doc = "a torch.Generator (on the device of the draws)"
    max_seed = 2**64 - 1  # torch.Generator.manual_seed takes seeds in [0, 2**64 - 1]
    default_dtype = torch.float32

    @property
    def xp(self) -> Any:
        return torch_xp

    def owns(self, a: Any) -> bool:
        return isinstance(a, torch.Tensor)

    def _new_generator(self, seed: Any, device: Any) -> Any:
        gen = torch.Generator(device=device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        return gen

    def _adopt(self, generator: Any, device: Any) -> Any:
        if generator.device.type != device.type:
            raise ValueError(f"generator is a torch.Generator on {generator.device} but the "
                             f"draws are on {device}; pass a generator of that device or an "
                             "int seed")
        return generator

    def _device(self, device: Any) -> Any:
        if device is None:
            return torch.device("cpu")
        try:
            return torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device must be None or a torch device (e.g. 'cpu', 'cuda'), "
                             f"got {_describe(device)}") from None

    def _dtype(self, dtype: Any) -> Any:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a real floating torch dtype (e.g. torch.float32), "
                            f"got {_describe(dtype)}")
        return dtype

    def _normal(self, shape: Any, dtype: Any, device: Any, generator: Any) -> Any:
        draw = torch.float64 if dtype == torch.float64 else torch.float32
        z = torch.randn(shape, generator=generator, dtype=draw, device=device)
        return z.to(dtype)

    def _uniform(self, shape: Any, dtype: Any, device: Any, generator: Any) -> Any:
        return torch.rand(shape, generator=generator, dtype=dtype, device=device)

    def grad(self, fn: Callable[[Any], Any], x: Any) -> Any:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = fn(x_in)
            if out.ndim != 0:
                raise ValueError(f"fn must return a scalar, got shape {tuple(out.shape)}")
            (g,) = torch.autograd.grad(out, x_in)
        return g

    def to_numpy(self, a: Any) -> Any:
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
