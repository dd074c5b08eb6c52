"""Backend objects: only what the array API standard lacks.

The math never asks for a backend: it infers the namespace from its input arrays. A backend
object is needed only for four things the standard does not provide:

- ``normal(shape, dtype=..., device=..., generator=...)`` and ``uniform(...)``: standard
  normal and uniform [0, 1) draws from a caller-supplied seed (an int) or generator object;
- ``grad(fn, x)``: the gradient of a scalar-valued function (torch: autograd; JAX:
  ``jax.grad``);
- ``to_numpy(a)``: a host NumPy copy, for reporting and tests;
- ``synchronize(device)``: wait for queued device work (for timing).

Look one up by name (``get_backend("torch")``) or from an array (``get_backend(x)``).
Third-party backends register with :func:`register_backend` or through the entry-point group
``refdiff.backends`` (the entry point names a zero-argument factory returning a
:class:`Backend`).
"""

from __future__ import annotations

import importlib
import numbers
from importlib.metadata import entry_points
from typing import Any, Callable

__all__ = ["Backend", "get_backend", "register_backend", "available_backends"]

ENTRY_POINT_GROUP = "refdiff.backends"

# name -> "module:attribute" of a zero-argument factory, imported on first use
_BUILTIN = {
    "numpy": "refdiff.backends.numpy_backend:NumpyBackend",
    "torch": "refdiff.backends.torch_backend:TorchBackend",
    "array_api_strict": "refdiff.backends.strict_backend:StrictBackend",
    "jax": "refdiff.backends.jax_backend:JaxBackend",
}
# the top-level package of an array type -> the backend that owns it, where the two differ
# (jax.Array's concrete type lives in jaxlib)
_ROOTS = {"jaxlib": "jax"}
_factories: dict[str, Callable[[], "Backend"]] = {}
_instances: dict[str, "Backend"] = {}
_entry_points_loaded = False


def _describe(value: Any) -> str:
    """``value`` for an error message: its type, with the module, and its repr (shortened)."""
    t = type(value)
    module = "" if t.__module__ == "builtins" else t.__module__ + "."
    text = repr(value)
    return f"{module}{t.__name__} {text if len(text) <= 80 else text[:77] + '...'}"


class Backend:
    """Base class of a backend. Subclasses set ``name`` and implement the methods.

    The draws (:meth:`generator`, :meth:`normal`, :meth:`uniform`) check their arguments
    here, once for every backend, and then call the hooks a subclass implements:
    ``_new_generator(seed, device)`` (a generator from ``None``, an int seed or one of
    ``seed_types``), ``_normal`` and ``_uniform`` (``(shape, dtype, device, generator)``,
    all checked), and optionally ``_device``, ``_dtype`` and ``_adopt`` (normalise a
    device, a dtype, or a caller's own generator). A subclass may instead override the
    public methods and do its own checking.

    Attributes
    ----------
    name : str
        The registry name.
    generator_types : tuple of type
        The library's own generator types: :meth:`generator` returns such an object as is.
    generator_doc : str
        Those types in words, for error messages (e.g. ``"a torch.Generator"``).
    seed_types : tuple of type
        Other seed objects the library itself takes (NumPy's ``SeedSequence`` and
        ``BitGenerator``), passed to ``_new_generator`` as they are.
    max_seed : int or None
        The largest int seed the library takes (``None``: no limit).
    default_dtype
        The dtype of a draw when ``dtype=None``.
    """

    name = "base"
    generator_types: tuple[type, ...] = ()
    generator_doc = "a generator of the library"
    seed_types: tuple[type, ...] = ()
    max_seed: int | None = None
    default_dtype: Any = None

    @property
    def xp(self) -> Any:
        """The array-API namespace of this library."""
        raise NotImplementedError

    def owns(self, a: Any) -> bool:
        """True if ``a`` is an array of this library."""
        raise NotImplementedError

    def generator(self, seed_or_generator: Any = None, device: Any = None) -> Any:
        """A generator for the draws of this backend.

        Parameters
        ----------
        seed_or_generator : None, int or generator
            ``None`` (a fresh, unpredictably seeded generator), a non-negative int seed
            (Python or NumPy integer; ``bool`` refused) up to ``max_seed``, or a generator of
            this library (``generator_types``), returned as is so that successive calls
            continue its stream. The NumPy-based backends also take NumPy's own seed objects
            (``numpy.random.SeedSequence``, ``numpy.random.BitGenerator``), as
            ``numpy.random.default_rng`` does. Error messages call this argument
            ``generator``, the name it has in :meth:`normal`, :meth:`uniform` and the public
            functions that draw.
        device : optional
            The device the draws will be made on (torch: a generator lives on one device).

        Returns
        -------
        generator
            A generator object of this library. The same seed gives the same draws on every
            call.

        Raises
        ------
        TypeError
            If ``seed_or_generator`` is anything else: a float (even ``3.0``), a ``bool``, a
            string, a list, an array, or a generator of another library (a
            ``torch.Generator`` for a NumPy draw, a ``numpy.random.Generator`` for a torch
            one).
        ValueError
            If the seed is negative or above ``max_seed``, if the device is not one of this
            library, or (torch) if a generator lives on another device type than the draws.
        """
        dev = self._device(device)
        value = seed_or_generator
        if isinstance(value, self.generator_types):
            return self._adopt(value, dev)
        if isinstance(value, self.seed_types):
            return self._new_generator(value, dev)
        return self._new_generator(self._seed(value), dev)

    def normal(self, shape: tuple[int, ...], *, dtype: Any = None, device: Any = None,
               generator: Any = None) -> Any:
        """Standard normal draws of ``shape`` in ``dtype`` on ``device``.

        Parameters
        ----------
        shape : tuple of int
            Non-negative sizes (a tuple or list; ``torch.Size`` is a tuple).
        dtype : real floating dtype of the library, optional
            ``None`` for ``default_dtype``.
        device : optional
            A device of the library (``None``: its default one).
        generator : None, int or generator, optional
            As ``seed_or_generator`` of :meth:`generator`.

        Returns
        -------
        array
            Of ``shape``, ``dtype`` and ``device``. A given seed gives the same values on
            every call.

        Raises
        ------
        TypeError
            If ``shape`` is not a tuple of ints, ``dtype`` is not a real floating dtype of the
            library (no silent cast of the draws to an integer dtype), or ``generator`` has a
            type :meth:`generator` refuses.
        ValueError
            If a size in ``shape`` is negative, or for a device or seed :meth:`generator`
            refuses.
        """
        shape, dtype, dev = self._draw_args(shape, dtype, device)
        return self._normal(shape, dtype, dev, self.generator(generator, dev))

    def uniform(self, shape: tuple[int, ...], *, dtype: Any = None, device: Any = None,
                generator: Any = None) -> Any:
        """Uniform draws on [0, 1) of ``shape`` in ``dtype`` on ``device``.

        Parameters
        ----------
        shape, dtype, device, generator
            As for :meth:`normal`.

        Returns
        -------
        array
            As for :meth:`normal`, with values in [0, 1).

        Raises
        ------
        TypeError, ValueError
            As for :meth:`normal`.
        """
        shape, dtype, dev = self._draw_args(shape, dtype, device)
        return self._uniform(shape, dtype, dev, self.generator(generator, dev))

    # ----- hooks and checks of the draws ---------------------------------------------------
    def _new_generator(self, seed: Any, device: Any) -> Any:
        raise NotImplementedError

    def _normal(self, shape: tuple[int, ...], dtype: Any, device: Any, generator: Any) -> Any:
        raise NotImplementedError

    def _uniform(self, shape: tuple[int, ...], dtype: Any, device: Any, generator: Any) -> Any:
        raise NotImplementedError

    def _adopt(self, generator: Any, device: Any) -> Any:
        """A caller's own generator, for draws on ``device``."""
        return generator

    def _device(self, device: Any) -> Any:
        """``device`` checked and normalised (here: as is)."""
        return device

    def _dtype(self, dtype: Any) -> Any:
        """``dtype`` if it is a real floating dtype of the library, else TypeError."""
        try:
            ok = bool(self.xp.isdtype(dtype, "real floating"))
        except Exception:  # not a dtype of this library at all
            ok = False
        if not ok:
            raise TypeError(f"dtype must be a real floating dtype of {self.name} (e.g. "
                            f"{self.default_dtype}), got {_describe(dtype)}")
        return dtype

    def _seed(self, value: Any) -> int | None:
        """``None``, or ``value`` as a non-negative int seed (at most ``max_seed``)."""
        accepted = f"None, a non-negative int seed or {self.generator_doc}"
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"generator must be {accepted}, got {_describe(value)}")
        seed = int(value)
        if seed < 0 or (self.max_seed is not None and seed > self.max_seed):
            top = "" if self.max_seed is None else f" and at most {self.max_seed}"
            raise ValueError(f"generator as an int seed must be >= 0{top} for the {self.name} "
                             f"backend, got {seed}")
        return seed

    def _draw_args(self, shape: Any, dtype: Any, device: Any) -> Any:
        """(shape as a tuple of ints, dtype, device) of a draw, checked."""
        if not isinstance(shape, (tuple, list)) or any(
                isinstance(n, bool) or not isinstance(n, numbers.Integral) for n in shape):
            raise TypeError(f"shape must be a tuple of ints, got {_describe(shape)}")
        sizes = tuple(int(n) for n in shape)
        if any(n < 0 for n in sizes):
            raise ValueError(f"shape must hold non-negative sizes, got {sizes}")
        dtype = self.default_dtype if dtype is None else self._dtype(dtype)
        return sizes, dtype, self._device(device)

    def grad(self, fn: Callable[[Any], Any], x: Any) -> Any:
        """∇ₓ fn(x) for a scalar-valued ``fn``."""
        raise TypeError(
            f"the {self.name} backend has no automatic differentiation: pass an analytic "
            "gradient (grad_log_prob=... to refdiff.classifier_gradient, or "
            "refdiff.Guidance(grad_log_prob=...) to refdiff.sample), or use torch tensors"
        )

    def to_numpy(self, a: Any) -> Any:
        """A host NumPy array with the values of ``a``."""
        raise NotImplementedError

    def synchronize(self, device: Any = None) -> None:
        """Block until queued work on ``device`` has finished (no-op on the host)."""

    def ddim_loop(self, loop: Any, model: Any, x_T: Any, guidance: Any, run: Any,
                  generator: Any) -> Any:
        """The library's part of :meth:`refdiff.compiled.DDIMLoop.sample` (torch, JAX)."""
        raise TypeError(f"the {self.name} backend has no compiled loop; refdiff.compiled's "
                        "loop needs torch or JAX (use refdiff.sample)")

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
    """The backend for a name ("numpy", "torch", "array_api_strict", "jax", registered names) or
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
    root = _ROOTS.get(root, root)
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
