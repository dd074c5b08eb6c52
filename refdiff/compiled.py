"""Opt-in compiled steps for the torch backend: ``torch.compile`` of refdiff's own functions.

Nothing here is a second copy of the math. Each compiled function is ``torch.compile`` applied
to a two-line function that calls the public eager functions (:func:`refdiff.cfg`,
:func:`refdiff.ddim_step`, :func:`refdiff.ddpm_step`, :func:`refdiff.q_sample`); TorchDynamo
traces through refdiff's argument checks (metadata only, so they vanish from the graph) and
Inductor fuses the element-wise chain into one kernel, so the guided DDIM step reads
x_t, ε_u, ε_c once and writes x_prev once, instead of materialising ε̃ and x̂_0.

Opt in explicitly; importing :mod:`refdiff` never imports torch, and this module compiles
lazily on the first call (no state changes anywhere else)::

    from refdiff import compiled
    x_prev = compiled.guided_ddim_step(x_t, eps_u, eps_c, 7.5, ab_t, ab_prev)

What to know before using it:

- Compilation costs about 1–3 s per function on a CPU (the first one in a process more, as
  Inductor warms up), and happens again for every new Python-float value of ``scale``,
  ``alpha_bar_t`` or ``alpha_bar_prev`` (TorchDynamo specialises Python floats, because the
  range checks branch on them). A sampler that repeats the same timesteps for every request
  compiles each step once per process; a one-off 50-step run does not pay back.
  The benchmarks (``python -m benchmarks`` in the source tree) measure the compile time and
  the break-even number of calls.
- Results equal the eager functions to float32 rounding (Inductor may reassociate or fuse
  multiply-adds); ``tests/test_compiled.py`` checks this against the eager call.
- Inputs must be torch tensors; anything the eager functions reject is rejected here too
  (the checks run while tracing).

References
----------
The math is that of :mod:`refdiff.classifier_free` (CFG, arXiv:2207.12598v1, Eq. 6) and
:mod:`refdiff.steps` (DDIM, arXiv:2010.02502v4, Eq. 12; DDPM, arXiv:2006.11239v2, Alg. 2).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import refdiff as rd
from refdiff.backends import get_backend

__all__ = ["compile_fn", "guided_ddim_step", "ddim_step", "ddpm_step", "cfg", "q_sample",
           "is_available"]


def _torch_backend() -> Any:
    """The torch backend (imports torch), or None when torch is not installed."""
    try:
        return get_backend("torch")
    except ImportError:
        return None


def is_available() -> bool:
    """True when torch is installed and has ``torch.compile``."""
    return _torch_backend() is not None  # every torch refdiff supports (>= 2.2) has it


def _guided_ddim_step(x_t: Any, eps_uncond: Any, eps_cond: Any, scale: Any, alpha_bar_t: Any, alpha_bar_prev: Any, **kw: Any) -> Any:
    """CFG then one DDIM step: the eager :func:`refdiff.cfg` and :func:`refdiff.ddim_step`."""
    return rd.ddim_step(x_t, rd.cfg(eps_uncond, eps_cond, scale), alpha_bar_t, alpha_bar_prev,
                        **kw)


class _Lazy:
    """``torch.compile(fn)`` built on the first call (torch is imported only then)."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.eager, self.__name__ = fn, name
        self._compiled: Callable[..., Any] | None = None
        self.__doc__ = (f"Compiled (torch.compile) version of ``{fn.__module__}.{fn.__name__}``"
                        f"; same arguments and results.\n\n{fn.__doc__ or ''}")

    @property
    def compiled(self) -> Callable[..., Any]:
        if self._compiled is None:
            backend = _torch_backend()
            if backend is None:
                raise RuntimeError("refdiff.compiled needs torch with torch.compile "
                                   "(pip install 'refdiff[torch]')")
            self._compiled = backend.compile(self.eager)
        return self._compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for a in list(args) + list(kwargs.values()):
            if hasattr(a, "shape") and not type(a).__module__.startswith("torch"):
                raise TypeError(f"refdiff.compiled.{self.__name__} takes torch tensors, got "
                                f"{type(a).__module__}.{type(a).__name__}; use the eager "
                                f"refdiff.{self.__name__.split('.')[-1]} for other libraries")
        with warnings.catch_warnings():
            # TorchDynamo warns that it traces through array-api-compat's lru_cache'd type
            # tests instead of using the cache; they are pure functions of a type, so the
            # traced result is the cached one.
            warnings.filterwarnings("ignore", message="Dynamo detected a call to a "
                                    "`functools.lru_cache`", category=UserWarning)
            return self.compiled(*args, **kwargs)

    def __repr__(self) -> str:
        state = "compiled" if self._compiled is not None else "not yet compiled"
        return f"<refdiff.compiled.{self.__name__} ({state})>"


def compile_fn(fn: Callable[..., Any], name: str | None = None) -> _Lazy:
    """A lazily compiled wrapper of any function built from refdiff calls (torch inputs)."""
    return _Lazy(fn, name or fn.__name__)


guided_ddim_step = compile_fn(_guided_ddim_step, "guided_ddim_step")
"""``guided_ddim_step(x_t, eps_uncond, eps_cond, scale, alpha_bar_t, alpha_bar_prev, **kw)``:
compiled ``ddim_step(x_t, cfg(eps_uncond, eps_cond, scale), alpha_bar_t, alpha_bar_prev, **kw)``."""
ddim_step = compile_fn(rd.ddim_step)
ddpm_step = compile_fn(rd.ddpm_step)
cfg = compile_fn(rd.cfg)
q_sample = compile_fn(rd.q_sample)
