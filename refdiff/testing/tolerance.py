"""``assert_close`` and the per-dtype tolerance policy of the conformance kit.

Policy: a candidate's output ``actual`` (any backend) is compared with refdiff's NumPy float64
reference ``expected`` computed on the *same rounded inputs*. It passes when

    max |actual − expected| ≤ RTOL[dtype] · scale,   scale = max(1, max|inputs|, max|expected|)

elementwise over the whole array, and when its dtype, shape and device are the ones expected.

=========  ======  ===============================================================
dtype      RTOL    meaning
=========  ======  ===============================================================
float64    1e-12   ~4500 eps: the "spec-grade" promise of refdiff
float32    2e-6    ~17 eps: a handful of roundings of intermediates
float16    4e-3    ~4 eps
bfloat16   3e-2    ~4 eps
=========  ======  ===============================================================

These are the numbers of refdiff's own backend tests (tests/conftest.py ``RTOL``): measured
worst error/scale over 200 examples per function was 0.2–0.3 eps of each dtype, so each bound
leaves a 16–60× margin for other hardware (fused multiply-adds) while an O(1) formula slip —
a wrong coefficient, a wrong ᾱ, a missing term — is orders of magnitude above it.
A float32 *table* under a float64 claim fails the float64 bound (its error is ~1e-8).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

RTOL = {"float64": 1e-12, "float32": 2e-6, "float16": 4e-3, "bfloat16": 3e-2}


class ConformanceError(AssertionError):
    """A candidate disagrees with refdiff (values, dtype, shape or device)."""


def dtype_name(a: Any) -> str:
    """``"float32"`` for a NumPy, torch or array-api-strict float32 array (or scalar)."""
    if isinstance(a, float):
        return "float64"
    return str(a.dtype).split(".")[-1]


def device_name(a: Any) -> str:
    """The device an array lives on, as a string ("cpu" for NumPy and host scalars)."""
    dev = str(getattr(a, "device", "cpu"))
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
    raise ValueError(f"backend must be 'numpy', 'torch' or 'array_api_strict', got {backend!r}")


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
                 inputs: tuple = ()) -> dict:
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
        Relative tolerance; default ``RTOL[dtype]`` (module docstring).
    scale : float, optional
        The magnitude the tolerance is relative to; default max(1, max|inputs|, max|expected|).
    inputs : tuple of arrays
        The inputs of the computation, for the default ``scale``.

    Returns
    -------
    dict with ``max_abs``, ``max_rel`` and ``tolerance`` (absolute).

    Raises
    ------
    ConformanceError
        On a dtype, shape, device or value mismatch; the message names which and by how much.
    """
    dtype = dtype or dtype_name(expected)
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
    if scale is None:
        mags = [np.max(np.abs(to_numpy(x)), initial=0.0) for x in (*inputs, expected)]
        scale = max(1.0, *[float(m) for m in mags])
    tol = (RTOL[dtype] if rtol is None else rtol) * scale
    max_abs, max_rel = difference(actual, expected)
    stats = {"max_abs": max_abs, "max_rel": max_rel, "tolerance": tol}
    if not max_abs <= tol:
        raise ConformanceError(f"values: max |actual - expected| = {max_abs:.3e} > tolerance "
                               f"{tol:.3e} ({dtype}, rtol {tol / scale:.0e} x scale {scale:.3g})")
    return stats
