"""The checked prologue shared by the public math functions: namespace, arguments, casts.

Every public function of refdiff opens with these helpers and then calls a private body that
is only math. The helpers

- infer the array namespace from the arrays passed (``array_api_compat.array_namespace``) and
  check that they share one library and one device (:func:`arrays`, :func:`namespace`);
- check dtype (real floating, all equal: no silent promotion) and shape (:func:`arrays`);
- validate per-step scalars such as ``alpha_bar_t`` (:func:`level`) and plain Python options
  (:func:`number`, :func:`count`, :func:`choice`).

Metadata checks (library, device, dtype, shape) never read values, so they never force a GPU
synchronisation and they run everywhere, under transformations too. Value checks (is
``alpha_bar_t`` in range? finite? in order?) run on Python floats and on concrete arrays that
live on the host (:func:`readable`). They are skipped, never a crash, on an accelerator
(reading a device value back would stall the stream) and on traced values: JAX tracers (under
``jax.jit``, ``jax.grad``, ``jax.vmap``), torch tensors while TorchDynamo traces
(``torch.compile``) and functorch-wrapped tensors (``torch.func.grad``, ``torch.func.vmap``),
whose values do not exist yet. A library's tracers count as that library (a JAX tracer and a
``jax.Array`` mix freely); a traced array's device is unknown and is not compared.

A per-step scalar is a Python float, a 0-d array or a per-sample array of shape ``(B,)``. A
Python float stays a Python float (a "weak scalar": it takes the dtype of ``x``); an array is
reshaped to ``(B, 1, ..., 1)`` so that it broadcasts over the non-batch axes of ``x``. The
bodies compute coefficients from it in float64 (or in the array's own dtype) and cast them to
the dtype of ``x`` once, with :func:`cast`, on a line of their own ("cast late").

Nothing here holds state but one cache of facts about array types and dtypes (``_FACTS``).
"""

from __future__ import annotations

import math
import sys
from typing import Any, NamedTuple

import array_api_compat as _compat

Scalar = Any  # Python float, 0-d array or (B,) array

_SCALARS = (int, float, complex, bool, str, bytes, type(None))
_ANY_REAL: dict[str, Any] = {"lo": -math.inf, "hi": math.inf}


class _TypeInfo(NamedTuple):
    root: str        # top-level package of the type: "numpy", "torch", "array_api_strict"
    is_array: bool   # array-api-compat recognises it as an array
    xp: Any          # its namespace (None until first asked, or when not cacheable)


# The one cache: facts about array *types* (a _TypeInfo per type) and about dtypes (is it real
# floating?), never about values, for the libraries whose answers depend on the type alone.
# Other types (third-party namespaces) are asked every call. Filled on first use and never reset: results are those of the uncached calls; only
# the repeated look-ups go (they were most of the per-call cost on small arrays).
_CACHEABLE = frozenset({"builtins", "numpy", "torch", "array_api_strict", "jax"})
# a library whose arrays live in more than one top-level package: jax.Array is jaxlib's type,
# its tracers are jax's
_ROOT_ALIASES = {"jaxlib": "jax"}
_FACTS: dict[Any, Any] = {}


def _compiling() -> bool:
    """True while TorchDynamo traces (``torch.compile``). The cache is then neither read nor
    written: Dynamo guards the keys of a global dict it reads, so a key added later (by any
    eager call on a new type or dtype) would recompile every graph that read it."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_dynamo_compiling()


_TORCH_TENSOR = _TypeInfo("torch", True, None)  # what Dynamo sees for a traced tensor


def _type_info(a: Any) -> _TypeInfo:
    t = type(a)
    compiling = _compiling()
    if compiling and isinstance(a, sys.modules["torch"].Tensor):
        return _TORCH_TENSOR  # a constant: cheap to trace, and no cache read to guard
    info = None if compiling else _FACTS.get(t)
    if info is None:
        root = t.__module__.split(".")[0]
        root = _ROOT_ALIASES.get(root, root)
        info = _TypeInfo(root, _compat.is_array_api_obj(a) and not isinstance(a, _SCALARS), None)
        if root in _CACHEABLE and not compiling:
            _FACTS[t] = info
    return info


def is_array(a: Any) -> bool:
    """True for an array of any array-API library (not for Python scalars)."""
    return not isinstance(a, float) and _type_info(a).is_array


def _library(a: Any) -> str:
    """A short name for the library an array belongs to, for error messages."""
    return f"{_type_info(a).root}.{type(a).__name__}"


def device(a: Any) -> Any:
    """The device of an array (array-api-compat's ``device``; torch and array-api-strict
    arrays carry it as ``.device``)."""
    root = _type_info(a).root
    return a.device if root in ("torch", "array_api_strict") else _compat.device(a)


def traced(a: Any) -> bool:
    """True for an array whose values do not exist yet: a JAX tracer, a torch tensor while
    TorchDynamo traces (``torch.compile``), a functorch-wrapped tensor (``torch.func``)."""
    root = _type_info(a).root
    if root == "jax":  # not is_lazy_array: array-api-compat calls every JAX array lazy
        return isinstance(a, sys.modules["jax"].core.Tracer)
    if root == "torch":  # torch is imported: a is a tensor
        torch = sys.modules["torch"]
        return bool(torch.compiler.is_dynamo_compiling()
                    or torch._C._functorch.is_functorch_wrapped_tensor(a))
    return False


def readable(a: Any) -> bool:
    """True when the values of ``a`` can be read now, at no device synchronisation: a concrete
    (not :func:`traced`) array on the host. Value checks run only on such arrays."""
    root = _type_info(a).root
    if root == "numpy":
        return True
    if traced(a):
        return False
    dev = device(a)  # torch.device has .type, a jax Device .platform; others: host or fake
    kind = getattr(dev, "type", None) or getattr(dev, "platform", None)
    return kind in (None, "cpu")


def namespace(**arrays: Any) -> Any:
    """The namespace shared by the named arrays, after checking library and device.

    Parameters
    ----------
    **arrays
        The arrays of one call, by argument name. ``None`` values and Python scalars are
        ignored.

    Returns
    -------
    xp : module
        The array-API-compatible namespace (``array_api_compat.numpy``,
        ``array_api_compat.torch``, ``array_api_strict``, ...).

    Raises
    ------
    TypeError
        If no argument is an array, or two come from different array libraries (both named).
    ValueError
        If two arguments live on different devices (both are named).
    """
    return _namespace(arrays.items())


def _namespace(items: Any) -> Any:
    """:func:`namespace` of (name, value) pairs, in one pass."""
    named: list[tuple[str, Any]] = []
    root, one_type = None, True
    for name, a in items:
        if a is None or isinstance(a, float):
            continue
        info = _type_info(a)
        if not info.is_array:
            continue
        if not named:
            root = info.root
        elif info.root != root:
            raise TypeError(f"{named[0][0]} is a {_library(named[0][1])} but {name} is a "
                            f"{_library(a)}; refdiff does not mix array libraries in one "
                            "call: convert one of them")
        else:
            one_type = one_type and type(a) is type(named[0][1])
        named.append((name, a))
    if not named:
        names = ", ".join(name for name, _ in items) or "()"
        raise TypeError(f"expected at least one array argument, got none among {names}; "
                        "pass arrays, or use the xp= keyword where offered")
    if root != "numpy":  # NumPy arrays all live on the host device "cpu"
        _same_device(named)
    return _xp_of(named, one_type)


def _same_device(named: list[tuple[str, Any]]) -> None:
    """ValueError if two arrays are on different devices; a traced JAX array's device is
    unknown (None) and is not compared."""
    known = [(name, a, device(a)) for name, a in named]
    known = [k for k in known if k[2] is not None]
    for name, a, dev in known[1:]:
        if dev != known[0][2]:
            raise ValueError(f"{known[0][0]} is on device {known[0][2]} but {name} is on "
                             f"device {dev}; move them to one device")


def _xp_of(named: list[tuple[str, Any]], one_type: bool) -> Any:
    """The namespace of arrays of one library: cached per type when they share one type."""
    first = named[0][1]
    if not one_type:
        return _compat.array_namespace(*(a for _, a in named))
    if _compiling() and isinstance(first, sys.modules["torch"].Tensor):
        return _compat.array_namespace(first)  # not the cache: its reads would be guarded
    info = None if _compiling() else _FACTS.get(type(first))
    if info is not None and info.xp is not None:
        return info.xp
    xp = _compat.array_namespace(first)
    if info is not None:
        _FACTS[type(first)] = info._replace(xp=xp)
    return xp


def check_floating(xp: Any, name: str, a: Any) -> None:
    """Raise TypeError unless ``a`` has a real floating dtype."""
    key: tuple[Any, Any] | None = None if _compiling() else (type(a), a.dtype)
    try:
        ok = None if key is None else _FACTS.get(key)
    except TypeError:  # an unhashable dtype object: ask every time
        key, ok = None, None
    if ok is None:
        ok = bool(xp.isdtype(a.dtype, "real floating"))
        if key is not None and _type_info(a).root in _CACHEABLE:
            _FACTS[key] = ok
    if not ok:
        raise TypeError(f"{name} must have a real floating dtype, got {a.dtype}")


def arrays(ref_name: str, ref: Any, *, optional: tuple[str, ...] = (), **others: Any) -> Any:
    """Check the array arguments of one call and return their namespace.

    Every argument must be an array, except those named in ``optional``, which may be
    ``None`` (not given). One library and one device for all (:func:`namespace`); a real
    floating dtype for ``ref``; the dtype and shape of ``ref`` for each of ``others``
    (:func:`like`). refdiff never promotes dtypes silently.
    """
    _require_arrays(((ref_name, ref), *others.items()), optional)
    xp = _namespace(((ref_name, ref), *others.items()))
    check_floating(xp, ref_name, ref)
    like(xp, ref_name, ref, **others)
    return xp


def returned(xp: Any, ref_name: str, ref: Any, **results: Any) -> None:
    """Check arrays returned by a user's callable (a model, a gradient) against ``ref``, an
    array the caller has already checked: library, device, dtype and shape."""
    _require_arrays(results.items())
    _namespace(((ref_name, ref), *results.items()))
    like(xp, ref_name, ref, **results)


def _require_arrays(items: Any, optional: tuple[str, ...] = ()) -> None:
    """TypeError for an argument that is not an array (``None`` allowed for ``optional`` names)."""
    for name, a in items:
        if (a is None and name in optional) or (a is not None and is_array(a)):
            continue
        got = "None" if a is None else f"{type(a).__module__}.{type(a).__name__}"
        raise TypeError(f"{name} must be an array (NumPy, torch, or any array-API library), "
                        f"got {got}")


def like(xp: Any, ref_name: str, ref: Any, **others: Any) -> None:
    """Each of ``others`` (``None`` skipped) is real floating, with the dtype and shape of ``ref``."""
    for name, a in others.items():
        if a is None:
            continue
        check_floating(xp, name, a)
        if a.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but {ref_name} has dtype "
                            f"{ref.dtype}; cast one of them (refdiff never promotes silently)")
        if tuple(a.shape) != tuple(ref.shape):
            raise ValueError(f"{name} must have the shape of {ref_name} "
                             f"{tuple(ref.shape)}, got {tuple(a.shape)}")


def _range_error(name: str, lo: float, hi: float, lo_open: bool, hi_open: bool, got: Any) -> Any:
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    return ValueError(f"{name} must lie in {left}{lo:g}, {hi:g}{right}, got {got}")


def number(name: str, value: Any, *, lo: float = -math.inf, hi: float = math.inf,
           lo_open: bool = False, hi_open: bool = False, kind: str = "a float") -> float:
    """A finite Python real number in the given range, as a float.

    Raises TypeError for anything but an int or float (``bool`` included) and ValueError for a
    non-finite value or one outside the range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        raise _range_error(name, lo, hi, lo_open, hi_open, v)
    return v


def count(name: str, value: Any) -> int:
    """A positive Python int (``bool`` refused); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def integer(name: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    """A Python or NumPy integer in [lo, hi], as an int: TypeError for anything else (a bool,
    a float such as 2.7 or 3.0, a string), ValueError outside the range."""
    zero_d = not is_array(value) or getattr(value, "ndim", 0) == 0
    if isinstance(value, bool) or not hasattr(value, "__index__") or not zero_d:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    v = value.__index__()
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi if hi is not None else 'inf'}], "
                         f"got {v}")
    return v


def flag(name: str, value: Any) -> bool:
    """A Python bool (no truthiness: ``"no"`` is not False)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def level(xp: Any, name: str, value: Any, x: Any, *, lo: float = 0.0, hi: float = 1.0,
          lo_open: bool = False, hi_open: bool = False) -> Any:
    """Validate a per-step scalar and shape it to broadcast against ``x``.

    A Python number is returned as a Python float (range-checked). A 0-d, ``(B,)`` or
    ``(B, 1, ..., 1)`` array must match the library and device of ``x``; it is returned as
    ``(B, 1, ..., 1)`` (or 0-d) in its own floating dtype, range-checked when on the host.
    With ``x=None`` an array keeps its shape.
    """
    if isinstance(value, float) or not is_array(value):
        return number(name, value, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open,
                      kind="a float or an array")
    if x is not None:
        namespace(x=x, **{name: value})
    check_floating(xp, name, value)
    if x is not None:
        value = _per_sample(xp, name, value, x)
    check_values(xp, name, value, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    return value


def check_values(xp: Any, name: str, value: Any, *, lo: float, hi: float, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    """ValueError unless every value is finite and in range (only when :func:`readable`)."""
    if not readable(value):
        return
    low_bad = value <= lo if lo_open else value < lo
    high_bad = value >= hi if hi_open else value > hi
    if bool(xp.any(low_bad | high_bad | ~xp.isfinite(value))):
        raise _range_error(name, lo, hi, lo_open, hi_open, "values outside it (or not finite)")


def _per_sample(xp: Any, name: str, value: Any, x: Any) -> Any:
    """A 0-d array as is; (B,) or (B, 1, ..., 1) as (B, 1, ..., 1) for ``x`` of shape (B, ...)."""
    per_sample = x.ndim >= 1 and value.ndim >= 1 and value.shape[0] == x.shape[0]
    if per_sample and value.ndim == 1:
        return xp.reshape(value, (value.shape[0],) + (1,) * (x.ndim - 1))
    if per_sample and value.ndim == x.ndim and all(n == 1 for n in value.shape[1:]):
        return value
    if value.ndim != 0:
        raise ValueError(f"{name} must be a float, a 0-d array or an array of shape (B,) = "
                         f"({x.shape[0] if x.ndim else '?'},), got shape {tuple(value.shape)}")
    return value


def any_real(xp: Any, name: str, value: Any, x: Any) -> Any:
    """:func:`level` for a scale that may take any finite value (CFG's s, CG's s)."""
    return level(xp, name, value, x, **_ANY_REAL)


def check_order(xp: Any, name_hi: str, hi: Any, name_lo: str, lo: Any) -> None:
    """Raise ValueError where ``hi < lo`` (e.g. alpha_bar_prev < alpha_bar_t), host values only."""
    if is_array(hi) or is_array(lo):
        if not all(readable(a) for a in (hi, lo) if is_array(a)):
            return
        if bool(xp.any(xp.asarray(hi < lo))):
            raise ValueError(f"{name_hi} must be >= {name_lo}")
    elif hi < lo:
        raise ValueError(f"{name_hi} must be >= {name_lo} ({name_hi}={hi}, {name_lo}={lo})")


def step_levels(xp: Any, x: Any, alpha_bar_t: Any, alpha_bar_prev: Any) -> Any:
    """(ᾱ_t, ᾱ_prev) of a reverse step, validated: ᾱ_t in [0, 1), ᾱ_prev in (0, 1], and
    ᾱ_prev ≥ ᾱ_t (the step goes to a less noisy level)."""
    ab_t = level(xp, "alpha_bar_t", alpha_bar_t, x, hi_open=True)
    ab_prev = level(xp, "alpha_bar_prev", alpha_bar_prev, x, lo_open=True)
    check_order(xp, "alpha_bar_prev", ab_prev, "alpha_bar_t", ab_t)
    return ab_t, ab_prev


def is_zero(xp: Any, v: Any) -> bool:
    """True where a readable value is 0 (a Python float, or any element of a readable array)."""
    if not is_array(v):
        return v == 0
    return readable(v) and bool(xp.any(v == 0))


def is_positive(xp: Any, v: Any) -> bool:
    """True where a readable value is > 0 (a Python float, or any element of a readable array)."""
    if not is_array(v):
        return v > 0
    return readable(v) and bool(xp.any(v > 0))


def choice(name: str, value: Any, valid: tuple[str, ...]) -> str:
    """Raise ValueError unless ``value`` is one of ``valid``; the message lists them."""
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")
    return value


# ----- used by the bodies -----------------------------------------------------------------

def cast(xp: Any, x: Any, *coefs: Any) -> tuple:
    """Coefficients computed from per-step scalars, in the dtype of ``x`` (cast late, once).

    Python floats stay Python floats (weak scalars take the dtype of ``x``); arrays are cast.
    """
    return tuple([c if isinstance(c, float) or not is_array(c) else xp.astype(c, x.dtype)
                  for c in coefs])


def sqrt(xp: Any, v: Any) -> Any:
    """Square root of a Python float (host float64) or of an array."""
    return math.sqrt(v) if isinstance(v, float) or not is_array(v) else xp.sqrt(v)


def log(xp: Any, v: Any) -> Any:
    """Natural logarithm of a Python float (host float64) or of an array."""
    return math.log(v) if isinstance(v, float) or not is_array(v) else xp.log(v)


def where_one(xp: Any, level: Any, at_one: Any, elsewhere: Any) -> Any:
    """``at_one`` where the per-step level equals 1, else ``elsewhere`` (floats or arrays)."""
    if not is_array(level):
        return at_one if level == 1 else elsewhere
    return xp.where(level == 1, as_array_like(xp, at_one, elsewhere), elsewhere)


def as_array_like(xp: Any, value: Any, like: Any) -> Any:
    """A Python float or an array as an array in the dtype and on the device of ``like``."""
    if is_array(value):
        return xp.astype(value, like.dtype)
    return xp.asarray(value, dtype=like.dtype, device=device(like))
