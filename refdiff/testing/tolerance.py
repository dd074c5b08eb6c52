"""``assert_close`` and the tolerance policy of the conformance kit.

A candidate's output ``actual`` (any backend) is compared with refdiff's NumPy float64
reference ``expected`` computed on the *same rounded inputs*. It passes when its dtype, shape
and device are the ones expected and its values are within a tolerance, in one of two modes:

- ``bound=`` (what every check uses): an elementwise absolute bound, derived per example by
  :mod:`refdiff.testing.bounds` from a first-order error analysis of the formula in the
  candidate's dtype: |actual − expected| ≤ bound, element by element. The result reports
  the ratio max |actual − expected| / bound (below 1 on agreement).
- ``rtol=`` (the simple mode, kept for plain comparisons and the schedule check):
  max |actual − expected| ≤ rtol · scale, scale = max(1, max|inputs|, max|expected|), with
  rtol = ``RTOL[dtype]`` by default:

=========  ======  ===============================================================
dtype      RTOL    meaning
=========  ======  ===============================================================
float64    1e-12   ~4500 eps: the "spec-grade" promise of refdiff
float32    2e-6    ~17 eps: a handful of roundings of intermediates
float16    4e-3    ~4 eps
bfloat16   3e-2    ~4 eps
=========  ======  ===============================================================

The simple mode is not a bound for formulas that cancel and divide (x̂_0 at ᾱ ≈ 4e-5
amplifies rounding by 1/√ᾱ ≈ 160): that is why the checks use ``bound=``. It remains the
schedule check's criterion (a float32 table under a float64 claim fails on dtype and by ~1e-8
in value) and what refdiff's own backend tests use (tests/conftest.py).

:func:`observe` registers a callback that sees every comparison a check makes (the kit's
corpus and mutation report use it to measure error/bound ratios).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator

import numpy as np

RTOL = {"float64": 1e-12, "float32": 2e-6, "float16": 4e-3, "bfloat16": 3e-2}


class ConformanceError(AssertionError):
    """A candidate disagrees with refdiff (values, dtype, shape or device)."""


def dtype_name(a: Any) -> str:
    """``"float32"`` for a NumPy, torch, array-api-strict or JAX float32 array (or scalar)."""
    if isinstance(a, float):
        return "float64"
    return str(a.dtype).split(".")[-1]


def device_name(a: Any) -> str:
    """The device an array lives on, as a string ("cpu" for NumPy and host scalars; a JAX
    device as its platform and index, "cpu" or "gpu:0"; a traced JAX array, whose device is
    unknown, as "cpu")."""
    dev = getattr(a, "device", "cpu")
    if dev is None:  # a JAX tracer
        return "cpu"
    platform = getattr(dev, "platform", None)  # a jax.Device
    if isinstance(platform, str):
        return "cpu" if platform == "cpu" else f"{platform}:{dev.id}"
    dev = str(dev)
    if "CPU_DEVICE" in dev or dev == "cpu":
        return "cpu"
    match = re.search(r"Device\('(.*)'\)", dev)  # array-api-strict's Device('device1')
    return match.group(1) if match else dev


def to_numpy(a: Any) -> np.ndarray:
    """A float64 NumPy copy of an array of any supported backend (or a Python number)."""
    if isinstance(a, (int, float)):
        return np.asarray(a, dtype=np.float64)
    root = type(a).__module__.split(".")[0]
    if root == "torch":
        import torch
        return a.detach().to("cpu", torch.float64).numpy()
    if root == "array_api_strict":
        import array_api_strict as xs
        a = xs.astype(a.to_device(xs.Device("CPU_DEVICE")), xs.float64)
        return np.from_dlpack(a).copy()
    return np.asarray(a, dtype=np.float64)


def from_numpy(a: Any, backend: str = "numpy", dtype: str = "float64", device: str = "cpu"):
    """A NumPy float64 array (or list) as an array of ``backend`` in ``dtype`` on ``device``."""
    a = np.asarray(a, dtype=np.float64)
    if backend == "numpy":
        return a.astype(dtype)
    if backend == "torch":
        import torch
        return torch.asarray(a).to(device=device, dtype=getattr(torch, dtype))
    if backend == "array_api_strict":
        import array_api_strict as xs
        dev = None if device == "cpu" else xs.Device(device)
        return xs.asarray(xs.asarray(a), dtype=getattr(xs, dtype), device=dev)
    if backend == "jax":  # float64 needs jax_enable_x64: the backend refuses it otherwise
        import jax
        import jax.numpy as jnp
        from refdiff.backends import get_backend
        jb = get_backend("jax")
        return jax.device_put(jnp.asarray(a, dtype=jb._dtype(dtype)), jb._device(device))
    raise ValueError(f"backend must be 'numpy', 'torch', 'array_api_strict' or 'jax', got "
                     f"{backend!r}")


def difference(actual: Any, expected: Any) -> tuple[float, float]:
    """(max |a − e|, max |a − e| / max(1, |e|)) over all elements; inf on a shape mismatch."""
    a, e = to_numpy(actual), to_numpy(expected)
    if a.shape != e.shape:
        return float("inf"), float("inf")
    err = np.abs(a - e)
    if err.size == 0:
        return 0.0, 0.0
    err = np.where(np.isnan(err), np.inf, err)
    return float(err.max()), float((err / np.maximum(1.0, np.abs(e))).max())


def assert_close(actual: Any, expected: Any, *, dtype: str | None = None, device: str | None = None,
                 rtol: float | None = None, scale: float | None = None,
                 inputs: tuple = (), bound: Any = None) -> dict:
    """Assert that ``actual`` matches ``expected`` in values, dtype, shape and device.

    Parameters
    ----------
    actual : array (NumPy, torch, array-api-strict) or float
        The candidate's output.
    expected : array or float
        The reference, usually refdiff's NumPy float64 result on the same (rounded) inputs.
    dtype : str, optional
        The dtype ``actual`` must have ("float32", ...); default: the dtype of ``expected``.
    device : str, optional
        The device ``actual`` must be on; default: the device of ``expected``.
    rtol : float, optional
        Simple mode: relative tolerance; default ``RTOL[dtype]`` (module docstring).
    scale : float, optional
        Simple mode: the magnitude the tolerance is relative to; default
        max(1, max|inputs|, max|expected|).
    inputs : tuple of arrays
        Simple mode: the inputs of the computation, for the default ``scale``.
    bound : array or float, optional
        An elementwise absolute bound, broadcastable to ``expected`` (e.g. from
        :mod:`refdiff.testing.bounds`); replaces ``rtol``/``scale``/``inputs``.

    Returns
    -------
    dict with ``max_abs``, ``max_rel``, ``tolerance`` (absolute, at the worst element) and
    ``ratio`` (max |actual − expected| / tolerance: below 1 on agreement).

    Raises
    ------
    ConformanceError
        On a dtype, shape, device or value mismatch; the message names which and by how much
        (a value mismatch also carries ``ratio``).
    """
    _check_metadata(actual, expected, dtype or dtype_name(expected), device)
    dtype = dtype or dtype_name(expected)
    max_abs, max_rel = difference(actual, expected)
    if bound is not None:
        return _within_bound(actual, expected, bound, dtype, max_abs, max_rel)
    if scale is None:
        mags = [np.max(np.abs(to_numpy(x)), initial=0.0) for x in (*inputs, expected)]
        scale = max(1.0, *[float(m) for m in mags])
    tol = (RTOL[dtype] if rtol is None else rtol) * scale
    stats = {"max_abs": max_abs, "max_rel": max_rel, "tolerance": tol,
             "ratio": _ratio(max_abs, tol)}
    if not max_abs <= tol:
        raise _value_error(f"values: max |actual - expected| = {max_abs:.3e} > tolerance "
                           f"{tol:.3e} ({dtype}, rtol {tol / scale:.0e} x scale {scale:.3g})",
                           stats["ratio"])
    return stats


def _value_error(message: str, ratio: float) -> ConformanceError:
    """A value mismatch, carrying ``ratio`` = max |actual − expected| / tolerance."""
    exc = ConformanceError(message)
    exc.ratio = ratio
    return exc


def _check_metadata(actual: Any, expected: Any, dtype: str, device: str | None) -> None:
    got = dtype_name(actual) if hasattr(actual, "dtype") or isinstance(actual, float) else "?"
    if got != dtype:
        raise ConformanceError(f"dtype: got {got}, expected {dtype}")
    want_dev = device or device_name(expected)
    got_dev = device_name(actual)
    if got_dev != want_dev and got_dev.split(":")[0] != want_dev:
        raise ConformanceError(f"device: got {got_dev}, expected {want_dev}")
    a_shape, e_shape = tuple(getattr(actual, "shape", ())), tuple(getattr(expected, "shape", ()))
    if a_shape != e_shape:
        raise ConformanceError(f"shape: got {a_shape}, expected {e_shape}")


def _ratio(err: float, tol: float) -> float:
    if err == 0:
        return 0.0
    return err / tol if tol > 0 else float("inf")


def _within_bound(actual, expected, bound, dtype: str, max_abs: float, max_rel: float) -> dict:
    """The ``bound=`` mode: |actual − expected| ≤ bound elementwise."""
    err = np.abs(to_numpy(actual) - to_numpy(expected))
    err = np.where(np.isnan(err), np.inf, err)
    tol = np.broadcast_to(np.asarray(bound, dtype=np.float64), err.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(err == 0, 0.0, err / tol)
    ratios = np.where(np.isnan(ratios), np.inf, ratios)
    if ratios.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0, "tolerance": 0.0, "ratio": 0.0}
    worst = np.unravel_index(int(np.argmax(ratios)), ratios.shape)
    ratio = float(ratios[worst])
    stats = {"max_abs": max_abs, "max_rel": max_rel, "tolerance": float(tol[worst]),
             "ratio": ratio}
    if not ratio <= 1.0:
        where = f" at {tuple(int(i) for i in worst)}" if err.ndim else ""
        raise _value_error(
            f"values: |actual - expected| = {float(err[worst]):.3e} > bound "
            f"{float(tol[worst]):.3e}{where} (ratio {ratio:.3g}; {dtype} error bound, "
            f"docs/testing.md 'Tolerance policy'; max |actual - expected| = {max_abs:.3e})", ratio)
    return stats


_OBSERVERS: list[Callable[[dict], None]] = []


@contextlib.contextmanager
def observe(callback: Callable[[dict], None]) -> Iterator[None]:
    """Call ``callback(record)`` for every comparison a check makes while the block runs.

    ``record`` has ``what``, ``dtype``, ``device``, ``actual``, ``expected``, ``bound``
    (None in the simple mode), ``ratio`` (max |actual − expected| / tolerance; inf for a
    dtype, shape or device mismatch) and ``passed``.
    """
    _OBSERVERS.append(callback)
    try:
        yield
    finally:
        _OBSERVERS.remove(callback)


def notify(record: dict) -> None:
    """Pass one comparison's ``record`` to every registered observer (see :func:`observe`)."""
    for callback in list(_OBSERVERS):
        callback(record)
