"""Backend objects: only what the array API standard lacks.

The math never asks for a backend: it infers the namespace from its input arrays. A backend
object is needed only for four things the standard does not provide:

- ``normal(shape, dtype=..., device=..., generator=...)`` and ``uniform(...)``: standard
  normal and uniform [0, 1) draws from a caller-supplied seed (an int) or generator object;
- ``grad(fn, x)``: the gradient of a scalar-valued function (torch: autograd);
- ``to_numpy(a)``: a host NumPy copy, for reporting and tests;
- ``synchronize(device)``: wait for queued device work (for timing).

Look one up by name (``get_backend("torch")``) or from an array (``get_backend(x)``).
Third-party backends register with :func:`register_backend` or through the entry-point group
``refdiff.backends`` (the entry point names a zero-argument factory returning a
:class:`Backend`).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable

__all__ = ["Backend", "get_backend", "register_backend", "available_backends"]

ENTRY_POINT_GROUP = "refdiff.backends"

# name -> "module:attribute" of a zero-argument factory, imported on first use
_BUILTIN = {
    "numpy": "refdiff.backends.numpy_backend:NumpyBackend",
    "torch": "refdiff.backends.torch_backend:TorchBackend",
    "array_api_strict": "refdiff.backends.strict_backend:StrictBackend",
}
_factories: dict[str, Callable[[], "Backend"]] = {}
_instances: dict[str, "Backend"] = {}
_entry_points_loaded = False


class Backend:
    """Base class of a backend. Subclasses set ``name`` and implement the methods."""

    name = "base"

    @property
    def xp(self):
        """The array-API namespace of this library."""
        raise NotImplementedError

    def owns(self, a: Any) -> bool:
        """True if ``a`` is an array of this library."""
        raise NotImplementedError

    def generator(self, seed_or_generator: Any = None, device: Any = None):
        """A generator object from an int seed (or a generator, returned as is)."""
        raise NotImplementedError

    def normal(self, shape: tuple[int, ...], *, dtype: Any, device: Any = None,
               generator: Any = None):
        """Standard normal draws of ``shape`` in ``dtype`` on ``device``."""
        raise NotImplementedError

    def uniform(self, shape: tuple[int, ...], *, dtype: Any, device: Any = None,
                generator: Any = None):
        """Uniform draws on [0, 1) of ``shape`` in ``dtype`` on ``device``."""
        raise NotImplementedError

    def grad(self, fn: Callable[[Any], Any], x: Any):
        """∇ₓ fn(x) for a scalar-valued ``fn``."""
        raise TypeError(
            f"the {self.name} backend has no automatic differentiation: pass an analytic "
            "gradient (grad_log_prob=... to refdiff.classifier_gradient, or "
            "refdiff.Guidance(grad_log_prob=...) to refdiff.sample), or use torch tensors"
        )

    def to_numpy(self, a: Any):
        """A host NumPy array with the values of ``a``."""
        raise NotImplementedError

    def synchronize(self, device: Any = None) -> None:
        """Block until queued work on ``device`` has finished (no-op on the host)."""

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` compiled for this library (the opt-in fast path of :mod:`refdiff.compiled`)."""
        raise TypeError(f"the {self.name} backend has no compiler; refdiff.compiled needs "
                        "torch with torch.compile")

    def __repr__(self) -> str:
        return f"<refdiff backend {self.name!r}>"


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Register a backend factory under ``name`` (replaces an earlier one of that name)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    _factories[name] = factory
    _instances.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _factories.setdefault(ep.name, ep.load)


def _factory(name: str) -> Callable[[], Backend] | None:
    if name in _factories:
        return _factories[name]
    if name in _BUILTIN:
        module, attr = _BUILTIN[name].split(":")
        return lambda: getattr(importlib.import_module(module), attr)()
    return None


def available_backends() -> list[str]:
    """Names of the known backends (built in, registered, and from entry points)."""
    _load_entry_points()
    return sorted(set(_BUILTIN) | set(_factories))


def _by_name(name: str) -> Backend:
    if name not in _instances:
        _load_entry_points()
        factory = _factory(name)
        if factory is None:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(available_backends())}")
        loaded = factory()
        _instances[name] = loaded() if isinstance(loaded, type) else loaded
    return _instances[name]


def get_backend(name_or_array: Any) -> Backend:
    """The backend for a name ("numpy", "torch", "array_api_strict", registered names) or
    for an array (the backend whose library owns it).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    TypeError
        For an object that no known backend owns.
    """
    if isinstance(name_or_array, str):
        return _by_name(name_or_array)
    root = type(name_or_array).__module__.split(".")[0]
    candidates = [root] if root in _BUILTIN else []
    candidates += [n for n in available_backends() if n not in candidates]
    for name in candidates:
        try:
            backend = _by_name(name)
        except ImportError:
            continue
        if backend.owns(name_or_array):
            return backend
    raise TypeError(f"no refdiff backend owns an object of type {type(name_or_array).__name__}; "
                    f"known backends: {', '.join(available_backends())}")
