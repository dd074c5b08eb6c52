"""Array-namespace inference and the per-call checks shared by the math modules.

Every public math function asks its array arguments which library they belong to
(``array_api_compat.array_namespace``) and on which device they live; nothing here holds
state. The checks are cheap and metadata-only (library, device, dtype, shape), so they never
force a GPU synchronisation. Value checks (is ``alpha_bar`` in range?) run on Python floats
and on arrays that live on the host; on an accelerator they are skipped, because reading a
device value back would stall the stream.

Per-step scalars such as ``alpha_bar_t`` may be a Python float, a 0-d array or a per-sample
array of shape ``(B,)``. A Python float stays a Python float (a "weak scalar": it takes the
dtype of ``x``); an array is reshaped to ``(B, 1, ..., 1)`` so that it broadcasts over the
non-batch axes of ``x``, and its coefficients are computed in its own dtype and cast to the
dtype of ``x`` last ("cast late").
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat as _compat

Scalar = Any  # Python float, 0-d array or (B,) array

# Memoised facts about types, never about values: whether array-api-compat recognises an
# array type, the namespace of an array type of a known library, whether a dtype is real
# floating, and that NumPy arrays always live on the host. Each cache maps an immutable key
# to exactly what the uncached code computes for it (filled on first use, never switched
# off or reset), so results, checks and error messages are unchanged; only the repeated
# look-ups go (they were most of the per-call cost on small arrays). Only the libraries
# below are cached: their answer depends on the type alone. Other array types (third-party
# namespaces, JAX's value-dependent float0 check) take the uncached path every call.
_CACHED_ROOTS = frozenset({"numpy", "torch", "array_api_strict"})
_SCALAR_TYPES = frozenset({int, float, complex, bool, type(None), str})
_IS_ARRAY: dict[type, bool] = {}
_NAMESPACE: dict[type, Any] = {}
_REAL_FLOATING: dict[tuple[Any, Any], bool] = {}
_ROOT: dict[type, str] = {}
# array-api-compat's device(x) is x.device for these libraries' arrays (it special-cases
# only NumPy, Dask, JAX and sparse arrays); reading the attribute skips those type tests.
_ATTRIBUTE_DEVICE = frozenset({"torch", "array_api_strict"})


def _root(a: Any) -> str:
    """The top-level package of an array's type: "numpy", "torch", "array_api_strict"."""
    t = type(a)
    root = _ROOT.get(t)
    if root is None:
        root = _ROOT[t] = t.__module__.split(".")[0]
    return root


def _library(a: Any) -> str:
    """A short name for the library an array belongs to, for error messages."""
    return f"{_root(a)}.{type(a).__name__}"


def is_array(a: Any) -> bool:
    """True for an array of any array-API library (not for Python scalars)."""
    t = type(a)
    known = _IS_ARRAY.get(t)
    if known is not None:
        return known
    result = _compat.is_array_api_obj(a) and not isinstance(a, (int, float, complex, bool))
    if t in _SCALAR_TYPES or t.__module__.split(".")[0] in _CACHED_ROOTS:
        _IS_ARRAY[t] = result
    return result


def namespace(**arrays: Any):
    """Return the array namespace shared by the named arrays; check library and device.

    Parameters
    ----------
    **arrays
        The arrays of one call, by argument name. ``None`` values and Python scalars
        are ignored.

    Returns
    -------
    xp : module
        The array-API-compatible namespace (``array_api_compat.numpy``,
        ``array_api_compat.torch``, ``array_api_strict``, ...).

    Raises
    ------
    TypeError
        If two arguments come from different array libraries (both are named).
    ValueError
        If two arguments live on different devices (both are named).
    """
    named = [(k, v) for k, v in arrays.items() if v is not None and is_array(v)]
    if not named:
        raise TypeError(
            "expected at least one array argument, got none among "
            f"{', '.join(arrays) or '()'}; pass arrays, or use the xp= keyword where offered"
        )
    first_name, first = named[0]
    t = type(first)
    one_type = all(type(a) is t for _, a in named[1:])
    if not one_type:
        for name, a in named[1:]:
            if _root(a) != _root(first):
                raise TypeError(
                    f"{first_name} is a {_library(first)} but {name} is a {_library(a)}; "
                    "refdiff does not mix array libraries in one call: convert one of them"
                )
    xp = _NAMESPACE.get(t) if one_type else None
    if xp is None:
        xp = _compat.array_namespace(*(a for _, a in named))
        if one_type and _root(first) in _CACHED_ROOTS:
            _NAMESPACE[t] = xp
    if one_type and _root(first) == "numpy":
        return xp  # NumPy arrays all live on the host device "cpu": nothing to compare
    dev = device(first)
    for name, a in named[1:]:
        if device(a) != dev:
            raise ValueError(
                f"{first_name} is on device {dev} but {name} is on device "
                f"{device(a)}; move them to one device"
            )
    return xp


def check_floating(xp, name: str, a: Any) -> None:
    """Raise TypeError unless ``a`` has a real floating dtype."""
    key = (xp, a.dtype)
    try:
        ok = _REAL_FLOATING[key]
    except KeyError:
        ok = _REAL_FLOATING[key] = bool(xp.isdtype(a.dtype, "real floating"))
    except TypeError:  # an unhashable dtype object: ask every time
        ok = xp.isdtype(a.dtype, "real floating")
    if not ok:
        raise TypeError(f"{name} must have a real floating dtype, got {a.dtype}")


def check_same_shape(ref_name: str, ref: Any, **others: Any) -> None:
    """Raise ValueError unless every array in ``others`` has the shape of ``ref``."""
    for name, a in others.items():
        if a is not None and tuple(a.shape) != tuple(ref.shape):
            raise ValueError(
                f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, "
                f"got {tuple(a.shape)}"
            )


def check_like(xp, ref_name: str, ref: Any, **others: Any) -> None:
    """Floating dtype for every array, equal shapes, equal dtypes (no silent promotion)."""
    check_floating(xp, ref_name, ref)
    for name, a in others.items():
        if a is None:
            continue
        check_floating(xp, name, a)
        if a.dtype != ref.dtype:
            raise TypeError(
                f"{name} has dtype {a.dtype} but {ref_name} has dtype {ref.dtype}; "
                "cast one of them (refdiff never promotes silently)"
            )
    check_same_shape(ref_name, ref, **others)


def on_host(a: Any) -> bool:
    """True when reading values of ``a`` costs no device synchronisation."""
    if _root(a) == "numpy":
        return True
    dev = device(a)
    kind = getattr(dev, "type", None)  # torch.device has .type; others are host or fake
    return kind in (None, "cpu")


def _check_range(name: str, lo: float, hi: float, lo_open: bool, hi_open: bool, bad: bool,
                 got: Any) -> None:
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{name} must lie in {left}{lo}, {hi}{right}, got {got}")


def scalar(xp, name: str, value: Any, x: Any, *, lo: float = 0.0, hi: float = 1.0,
           lo_open: bool = False, hi_open: bool = False):
    """Validate a per-step scalar and shape it to broadcast against ``x``.

    A Python number is returned as a Python float (range-checked). A 0-d, ``(B,)`` or
    ``(B, 1, ..., 1)`` array must match the library and device of ``x``; it is returned
    as ``(B, 1, ..., 1)`` (or 0-d) in its own floating dtype (range-checked when on the host).
    """
    if not is_array(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float or an array, got {type(value).__name__}")
        v = float(value)
        bad = not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (
            hi_open and v == hi)
        _check_range(name, lo, hi, lo_open, hi_open, bad, v)
        return v
    namespace(x=x, **{name: value})
    check_floating(xp, name, value)
    per_sample = x.ndim >= 1 and value.ndim >= 1 and value.shape[0] == x.shape[0]
    if per_sample and value.ndim == 1:
        value = xp.reshape(value, (value.shape[0],) + (1,) * (x.ndim - 1))
    elif per_sample and value.ndim == x.ndim and all(n == 1 for n in value.shape[1:]):
        pass  # already (B, 1, ..., 1)
    elif value.ndim != 0:
        raise ValueError(
            f"{name} must be a float, a 0-d array or an array of shape (B,) = "
            f"({x.shape[0] if x.ndim else '?'},), got shape {tuple(value.shape)}"
        )
    if on_host(value):
        low_bad = value <= lo if lo_open else value < lo
        high_bad = value >= hi if hi_open else value > hi
        bad = bool(xp.any(low_bad | high_bad | xp.isnan(value)))
        _check_range(name, lo, hi, lo_open, hi_open, bad, "values outside it")
    return value


def cast_to(xp, coef: Any, x: Any):
    """Cast a coefficient computed from a per-step scalar to the dtype of ``x`` (cast late)."""
    return coef if not is_array(coef) else xp.astype(coef, x.dtype)


def sqrt(xp, v: Any):
    """Square root of a Python float (host float64) or of an array."""
    return math.sqrt(v) if not is_array(v) else xp.sqrt(v)


def check_order(name_hi: str, hi: Any, name_lo: str, lo: Any, xp) -> None:
    """Raise ValueError where ``hi < lo`` (e.g. alpha_bar_prev < alpha_bar_t), host values only."""
    if is_array(hi) or is_array(lo):
        arrays = [a for a in (hi, lo) if is_array(a)]
        if not all(on_host(a) for a in arrays):
            return
        bad = bool(xp.any(xp.asarray(hi < lo)))
    else:
        bad = hi < lo
    if bad:
        got = "" if (is_array(hi) or is_array(lo)) else f" ({name_hi}={hi}, {name_lo}={lo})"
        raise ValueError(f"{name_hi} must be >= {name_lo}{got}")


def choice(name: str, value: Any, valid: tuple[str, ...]) -> str:
    """Raise ValueError unless ``value`` is one of ``valid``; the message lists them."""
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")
    return value


def device(a: Any):
    """The device of an array (array-api-compat's ``device``)."""
    if _root(a) in _ATTRIBUTE_DEVICE:
        return a.device
    return _compat.device(a)


def as_array_like(xp, value: Any, like: Any):
    """A Python float or an array as an array in the dtype and on the device of ``like``."""
    if is_array(value):
        return xp.astype(value, like.dtype)
    return xp.asarray(value, dtype=like.dtype, device=device(like))
