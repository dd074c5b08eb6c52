#!/usr/bin/env python
"""Prove that two refdiff trees behave the same: a fixed corpus of public calls, bit for bit.

Usage::

    python tests/compare_versions.py --old /tmp/refdiff_old --new /work/main [--quick]

The parent runs the corpus twice, each time in a subprocess of ``sys.executable`` with
``PYTHONPATH=<tree>``; the child checks that ``refdiff`` (and every refdiff module it ends up
importing) comes from that tree, evaluates every case and pickles ``{case_id: result}`` to a
temporary directory. The parent then compares the two pickles case by case:

- identical: same library, dtype, shape, device and bits (or both raised the same exception
  type; changed messages are counted, not failed);
- within 1 ulp: same metadata, every element within np.spacing of the larger magnitude in
  its dtype (bfloat16: adjacent bit patterns); listed;
- different: anything else (printed with a summary), or a case present on one side only.

Exit status: 0 when nothing is different or missing, 1 otherwise, 2 when a child failed.

The corpus is written once, in the names of the 0.2 API. When a child finds
``refdiff.__version__`` starting with "0.1" it translates those names back with the two
tables below (keyword renames per callable, attribute renames); nothing else differs.

This file is not collected by pytest (its name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pickle
import re
import struct
import subprocess
import sys
import tempfile
import time
import types
import warnings
import zlib
from typing import Any, Callable

import numpy as np

# --------------------------------------------------------------------------------------------
# 0.2 → 0.1 translation
# --------------------------------------------------------------------------------------------

# keyword renames, 0.2 name -> 0.1 name, per callable ("Owner.method" for methods)
KWARG_RENAMES_0_1: dict[str, dict[str, str]] = {
    "linear_schedule": {"num_train_timesteps": "num_timesteps"},
    "guided_diffusion_linear_schedule": {"num_train_timesteps": "num_timesteps"},
    "scaled_linear_schedule": {"num_train_timesteps": "num_timesteps"},
    "cosine_schedule": {"num_train_timesteps": "num_timesteps"},
    "sample_timesteps": {"num_train_timesteps": "num_timesteps"},
    "q_sample": {"eps": "noise"},
    "diffusion_loss": {"eps": "noise"},
    "noisy_classifier_loss": {"eps": "noise"},
    "ddpm_step": {"variance_type": "variance", "x0_hat": "x0"},
    "ddpm_mean_variance": {"variance_type": "variance", "x0_hat": "x0"},
    "sample": {"variance_type": "variance"},
    "ddim_step": {"x0_hat": "x0"},
    "ddim_inversion_step": {"x0_hat": "x0"},
    "guidance_rescale": {"eps_guided": "guided", "eps_cond": "cond"},
    "guidance_distillation_target": {"eps_uncond": "teacher_uncond", "eps_cond": "teacher_cond"},
    "classifier_gradient": {"log_prob": "log_prob_fn", "grad_log_prob": "grad_fn"},
    "Guidance": {"grad_log_prob": "classifier_grad"},
    **{f"GaussianMixture.{m}": {"alpha_bar_t": "alpha_bar"}
       for m in ("score", "x0_eps", "eps", "log_prob", "log_prob_class",
                 "grad_log_prob_class", "sample_noisy")},
}

# attribute renames, 0.2 name -> 0.1 name (Schedule.num_train_timesteps, rd.VARIANCE_TYPES)
ATTRIBUTE_RENAMES_0_1 = {"num_train_timesteps": "num_timesteps", "VARIANCE_TYPES": "VARIANCES"}


class _Missing:
    """Stands for a name the tree lacks: attribute access chains, calling raises."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, name: str):
        return _Missing(f"{self._name}.{name}")

    def __call__(self, *args, **kwargs):
        raise AttributeError(f"refdiff has no {self._name}")


class Api:
    """A refdiff module, class, function or oracle object as the corpus sees it (0.2 names).

    Attribute access maps 0.2 attribute names to 0.1 ones; calling maps keywords with the
    table entry of this callable; a GaussianMixture result is wrapped again (its methods have
    renamed keywords). With ``legacy=False`` both maps are the identity.
    """

    def __init__(self, target: Any, key: str, legacy: bool):
        self._target, self._key, self._legacy = target, key, legacy

    def _owner(self) -> str:
        t = self._target
        if isinstance(t, types.ModuleType):
            return ""
        return (t.__name__ if isinstance(t, type) else type(t).__name__) + "."

    def __getattr__(self, name: str):
        real = ATTRIBUTE_RENAMES_0_1.get(name, name) if self._legacy else name
        try:
            value = getattr(self._target, real)
        except AttributeError:
            return _Missing(self._owner() + name)
        if callable(value) or isinstance(value, types.ModuleType):
            return Api(value, self._owner() + name, self._legacy)
        return value

    def __call__(self, *args, **kwargs):
        if self._legacy:
            table = KWARG_RENAMES_0_1.get(self._key, {})
            kwargs = {table.get(k, k): v for k, v in kwargs.items()}
        out = self._target(*args, **kwargs)
        if type(out).__name__ == "GaussianMixture":
            return Api(out, "GaussianMixture", self._legacy)
        return out

    def attr(self, obj: Any, name: str):
        """``obj.<name>`` for a 0.2 attribute name (e.g. schedule.num_train_timesteps)."""
        return getattr(obj, ATTRIBUTE_RENAMES_0_1.get(name, name) if self._legacy else name)


# --------------------------------------------------------------------------------------------
# results: encoding (child) and comparison (parent)
# --------------------------------------------------------------------------------------------

def _torch():
    return sys.modules.get("torch")


def encode(v: Any) -> dict:
    """A picklable, library-free description of a result (see the module docstring)."""
    if isinstance(v, _Missing):
        raise AttributeError(f"refdiff has no {v._name}")
    if isinstance(v, Api):
        v = v._target
    torch = _torch()
    if isinstance(v, (np.ndarray, np.generic)):
        return {"kind": "array", "library": f"numpy.{type(v).__name__}", "dtype": str(v.dtype),
                "shape": tuple(np.shape(v)), "device": "cpu", "data": np.array(v, copy=True)}
    if torch is not None and isinstance(v, torch.Tensor):
        t = v.detach().to("cpu").resolve_conj().resolve_neg()
        data = t.view(torch.int16).numpy().copy() if t.dtype == torch.bfloat16 else t.numpy().copy()
        return {"kind": "array", "library": "torch.Tensor", "dtype": str(v.dtype),
                "shape": tuple(v.shape), "device": str(v.device), "data": data}
    if type(v).__module__.split(".")[0] == "array_api_strict" and hasattr(v, "dtype"):
        import array_api_strict as xs
        host = v.to_device(xs.Device("CPU_DEVICE"))
        try:
            data = np.from_dlpack(host).copy()
        except Exception:  # noqa: BLE001 (dtypes without DLPack export)
            data = np.array(host._array, copy=True)
        return {"kind": "array", "library": f"array_api_strict.{type(v).__name__}",
                "dtype": str(v.dtype), "shape": tuple(v.shape), "device": str(v.device),
                "data": data}
    if v is None or isinstance(v, (bool, int, float, str)):
        return {"kind": "py", "type": type(v).__name__, "value": v}
    if isinstance(v, (tuple, list)):
        return {"kind": "seq", "type": type(v).__name__, "items": [encode(x) for x in v]}
    if type(v).__name__ == "Schedule":
        return {"kind": "schedule", "items": [encode(getattr(v, f))
                                              for f in ("betas", "alphas", "alphas_cumprod")]}
    if type(v).__name__ == "GaussianMixture":
        return {"kind": "mixture", "items": [encode(getattr(v, f)) for f in
                                             ("weights", "means", "eigvals", "eigvecs", "labels")]}
    if isinstance(v, dict):
        return {"kind": "dict", "keys": sorted(map(str, v)),
                "items": [encode(v[k]) for k in sorted(v, key=str)]}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {"kind": "dataclass", "type": type(v).__name__,
                "items": [encode(getattr(v, f.name)) for f in dataclasses.fields(v)]}
    if callable(v):
        return {"kind": "callable", "type": type(v).__name__}
    return {"kind": "other", "type": type(v).__name__, "value": repr(v)}


IDENTICAL, ULP, DIFFERENT = 0, 1, 2


def _bits_f64(x: float) -> bytes:
    return struct.pack("<d", x)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _describe(r: dict) -> str:
    k = r["kind"]
    if k == "error":
        return f"raised {r['type']}: {r['message'][:160]}"
    if k == "array":
        return f"{r['library']} {r['dtype']} {r['shape']} on {r['device']}"
    if k == "py":
        return f"{r['type']} {r['value']!r}"
    if k == "seq":
        return f"{r['type']} of {len(r['items'])}"
    return k


def _ulp_float(a: np.ndarray, b: np.ndarray) -> tuple[bool, float]:
    """Are the differing elements of two float arrays within 1 ulp? (and max ulps seen)"""
    if np.isnan(a).any() or np.isnan(b).any() or not (np.isfinite(a) & np.isfinite(b)).all():
        return False, math.inf
    m = np.maximum(np.abs(a), np.abs(b))
    sp = np.spacing(m).astype(np.float64)
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    ratio = float(np.max(d / sp)) if d.size else 0.0
    return bool(np.all(d <= sp)), ratio


def _ulp_bf16(a: np.ndarray, b: np.ndarray) -> tuple[bool, float]:
    """bfloat16 stored as int16 bits: within 1 ulp = adjacent bit patterns (±0 are one)."""
    def finite(bits):
        return (bits.astype(np.int32) & 0x7F80) != 0x7F80

    if not (finite(a).all() and finite(b).all()):
        return False, math.inf

    def ordered(bits):
        i = bits.astype(np.int32)
        return np.where(i < 0, -(i & 0x7FFF), i)

    d = np.abs(ordered(a) - ordered(b))
    return bool(np.all(d <= 1)), float(d.max()) if d.size else 0.0


def _num(v: Any) -> str:
    return repr(float(v)) if np.issubdtype(np.asarray(v).dtype, np.floating) else repr(v.item())


def _compare_arrays(a: dict, b: dict, path: str) -> tuple[int, str]:
    for key in ("library", "dtype", "shape", "device"):
        if a[key] != b[key]:
            return DIFFERENT, f"{path}{key} {a[key]} vs {b[key]}"
    da, db = a["data"], b["data"]
    if da.dtype != db.dtype or da.shape != db.shape:
        return DIFFERENT, f"{path}host data {da.dtype}{da.shape} vs {db.dtype}{db.shape}"
    if da.tobytes() == db.tobytes():
        return IDENTICAL, ""
    bf16 = a["dtype"] == "torch.bfloat16"
    neq = (da != db) if not (da.dtype.kind == "f") else \
        (da.view(f"u{da.dtype.itemsize}") != db.view(f"u{db.dtype.itemsize}"))
    neq = np.atleast_1d(neq)
    xa, xb = np.atleast_1d(da)[neq], np.atleast_1d(db)[neq]
    if bf16:
        ok, ulps = _ulp_bf16(xa, xb)
        fa, fb = _bf16_to_f32(xa), _bf16_to_f32(xb)
    elif da.dtype.kind == "f":
        ok, ulps = _ulp_float(xa, xb)
        fa, fb = xa, xb
    else:
        ok, ulps, fa, fb = False, math.inf, xa, xb
    first = tuple(int(i) for i in np.argwhere(np.atleast_1d(neq))[0])
    try:
        maxabs = float(np.max(np.abs(fa.astype(np.float64) - fb.astype(np.float64))))
    except (TypeError, ValueError):
        maxabs = math.nan
    summary = (f"{path}{int(neq.sum())}/{neq.size} elements differ, max |diff| {maxabs:.3g}, "
               f"max ulps {ulps:.3g}; first at {first}: {_num(fa[0])} vs {_num(fb[0])} "
               f"({a['dtype']})")
    return (ULP if ok else DIFFERENT), summary


def compare(a: dict, b: dict, path: str = "") -> tuple[int, str]:
    """(IDENTICAL | ULP | DIFFERENT, summary) for two encoded results."""
    if a["kind"] == "error" or b["kind"] == "error":
        if a["kind"] == b["kind"] and a["type"] == b["type"]:
            return IDENTICAL, ""
        return DIFFERENT, f"{path}old {_describe(a)} | new {_describe(b)}"
    if a["kind"] != b["kind"]:
        return DIFFERENT, f"{path}old {_describe(a)} | new {_describe(b)}"
    kind = a["kind"]
    if kind == "array":
        return _compare_arrays(a, b, path)
    if kind == "py":
        if a["type"] != b["type"]:
            return DIFFERENT, f"{path}old {_describe(a)} | new {_describe(b)}"
        va, vb = a["value"], b["value"]
        if a["type"] == "float":
            if _bits_f64(va) == _bits_f64(vb):
                return IDENTICAL, ""
            ok, ulps = _ulp_float(np.array([va]), np.array([vb]))
            return (ULP if ok else DIFFERENT), f"{path}float {va!r} vs {vb!r} ({ulps:.3g} ulps)"
        return (IDENTICAL, "") if va == vb else (DIFFERENT, f"{path}{va!r} vs {vb!r}")
    if kind in ("seq", "schedule", "mixture", "dict", "dataclass"):
        if a.get("type") != b.get("type") or a.get("keys") != b.get("keys"):
            return DIFFERENT, f"{path}{a.get('type')} vs {b.get('type')}"
        if len(a["items"]) != len(b["items"]):
            return DIFFERENT, f"{path}length {len(a['items'])} vs {len(b['items'])}"
        parts = [compare(x, y, f"{path}[{i}] ")
                 for i, (x, y) in enumerate(zip(a["items"], b["items"]))]
        worst = max((cat for cat, _ in parts), default=IDENTICAL)
        notes = [note for cat, note in parts if cat == worst and note]
        more = f" (+{len(notes) - 2} more items)" if len(notes) > 2 else ""
        return worst, "; ".join(notes[:2]) + more
    if kind == "callable":
        return IDENTICAL, ""
    return ((IDENTICAL, "") if a == b else
            (DIFFERENT, f"{path}{a.get('value')!r} vs {b.get('value')!r}"))


# --------------------------------------------------------------------------------------------
# the corpus (child side)
# --------------------------------------------------------------------------------------------

SHAPE = (4, 3, 5)           # pointwise functions: B = 4 so per-sample arrays can mix edge values
SAMPLE_SHAPE = (2, 3, 4)    # the sampling loop on the linear model
ORACLE_SHAPE = (4, 2)       # the 2-D mixture

_DATA: dict[tuple, np.ndarray] = {}


def data(name: str, shape: tuple[int, ...] = SHAPE, scale: float = 1.0) -> np.ndarray:
    """Float64 standard normals, drawn once per (name, shape) from a seed fixed by the name."""
    key = (name, shape)
    if key not in _DATA:
        _DATA[key] = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(shape)
    return _DATA[key] * scale


def special_values() -> np.ndarray:
    """Normals with signed zeros, infinities, NaN, tiny and float16-overflowing entries."""
    a = data("special").copy().reshape(-1)
    a[:10] = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-30, 7e4, -7e4, 1e-8, 3e38]
    return a.reshape(SHAPE)


class Row:
    """One backend row: a library and a floating dtype; converts NumPy float64 inputs."""

    def __init__(self, lib: str, dtype: str):
        self.lib, self.dtype_name, self.name = lib, dtype, f"{lib}-{dtype}"
        if lib == "numpy":
            import array_api_compat.numpy as xp
            self.mod, self.xp = np, xp
        elif lib == "torch":
            import array_api_compat.torch as xp
            import torch
            self.mod, self.xp = torch, xp
        else:
            import array_api_strict as xs
            self.mod = self.xp = xs
        self.dtype = self.dt(dtype)

    def dt(self, name: str):
        return np.dtype(name).type if self.lib == "numpy" else getattr(self.mod, name)

    def arr(self, a: Any, dtype: str | None = None):
        """``a`` (NumPy / nested lists) converted once from float64 (or int) to the row."""
        a = np.array(a, copy=True)
        dt = self.dtype if dtype is None else self.dt(dtype)
        if self.lib == "numpy":
            return a.astype(dt)
        if self.lib == "torch":
            return self.mod.asarray(a).to(dt)
        return self.mod.astype(self.mod.asarray(a), dt)

    def x(self, name: str, shape=SHAPE, scale: float = 1.0):
        return self.arr(data(name, shape, scale))

    def f64(self, a):
        return self.arr(np.asarray(a, dtype=np.float64), "float64")

    def i64(self, a):
        return self.arr(np.asarray(a, dtype=np.int64), "int64")

    def zeros(self, shape):
        return self.arr(np.zeros(shape))


ALL_ROWS = [("numpy", "float64"), ("numpy", "float32"), ("torch", "float64"),
            ("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16"),
            ("array_api_strict", "float64"), ("array_api_strict", "float32")]
QUICK_ROWS = [("numpy", "float64"), ("torch", "float32"), ("torch", "bfloat16"),
              ("array_api_strict", "float32")]
SAMPLE_ROWS = [("numpy", "float64"), ("numpy", "float32"), ("torch", "float32"),
               ("torch", "float64")]
QUICK_SAMPLE_ROWS = [("numpy", "float64"), ("torch", "float32")]
EXTRA_SAMPLE_ROWS = [("torch", "float16"), ("torch", "bfloat16"), ("array_api_strict", "float64"),
                     ("array_api_strict", "float32")]

# per-sample (B = 4) ᾱ values with edges, and pairs (ᾱ_t, ᾱ_prev) with ᾱ_prev ≥ ᾱ_t
AB_ARR = [0.9999, 0.5, 0.02, 0.0]
AB_ARR_POS = [0.9999, 0.5, 0.02, 0.3]
AB_T_ARR, AB_PREV_ARR = [0.02, 0.3, 0.5, 1e-4], [0.3, 0.5, 1.0, 1e-4]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(fmt(x) for x in v) + "]"
    return str(v)


class Corpus:
    """Cases by id: (callable, args, kwargs), evaluated later, each on fresh input copies."""

    def __init__(self, api: Api, quick: bool):
        self.api, self.quick = api, quick
        self.cases: dict[str, tuple[Callable, tuple, dict]] = {}
        self.skipped_rows: list[str] = []

    def add(self, family: str, row: Row | str | None, params: str, fn: Callable, *args, **kw):
        where = row.name if isinstance(row, Row) else (row or "")
        inside = "|".join(p for p in (where, params) if p)
        cid = f"{family}[{inside}]" if inside else family
        if cid in self.cases:
            raise RuntimeError(f"duplicate case id {cid}")
        self.cases[cid] = (fn, args, kw)

    def rows(self, specs) -> list[Row]:
        out = []
        for lib, dtype in specs:
            try:
                out.append(Row(lib, dtype))
            except ImportError:
                if f"{lib}-{dtype}" not in self.skipped_rows:
                    self.skipped_rows.append(f"{lib}-{dtype}")
        return out


def _fresh(v: Any) -> Any:
    """A copy of an input array (so no case can see another case's in-place writes)."""
    torch = _torch()
    if isinstance(v, np.ndarray):
        return v.copy()
    if torch is not None and isinstance(v, torch.Tensor):
        return v.detach().clone().requires_grad_(v.requires_grad)
    if type(v).__module__.split(".")[0] == "array_api_strict" and hasattr(v, "dtype"):
        import array_api_strict as xs
        return xs.asarray(v, copy=True)
    if isinstance(v, list):
        return [_fresh(x) for x in v]
    return v


def _sum_rest(xp, a):
    return xp.sum(xp.reshape(a, (a.shape[0], -1)), axis=1)


# ---- guidance ---------------------------------------------------------------------------------

def corpus_guidance(c: Corpus, rows: list[Row]) -> None:
    rd = c.api
    for r in rows:
        u, k = r.x("eps_u"), r.x("eps_c")
        for s in [0, 1, 0.0, 1.0, 0.3, 0.7, 7.5, -1.5, 2, 0.5]:
            c.add("cfg", r, f"scale={fmt(s)}", rd.cfg, u, k, s)
        c.add("cfg", r, "scale=0d-float64(0.3)", rd.cfg, u, k, r.f64(0.3))
        c.add("cfg", r, "scale=(B,)float64[0,1,0.3,7.5]", rd.cfg, u, k, r.f64([0, 1, 0.3, 7.5]))
        c.add("cfg", r, "scale=(B,)row[0,1,-1.5,0.5]", rd.cfg, u, k, r.arr([0, 1, -1.5, 0.5]))
        if r.lib == "numpy":
            c.add("cfg", r, "scale=np.float32(0.7)", rd.cfg, u, k, np.float32(0.7))
        sp = r.arr(special_values())
        for s in [0, 1, 0.3, 7.5]:
            c.add("cfg", r, f"special,scale={fmt(s)}", rd.cfg, sp, k, s)
            c.add("cfg", r, f"special-cond,scale={fmt(s)}", rd.cfg, u, sp, s)
        c.add("cfg", r, "special,scale=(B,)float64", rd.cfg, sp, k, r.f64([0, 1, 0.3, 7.5]))
        c.add("cfg", r, "large,scale=7.5", rd.cfg, r.x("eps_u", scale=1e3), k, 7.5)

        c2, c3 = r.x("eps_c2"), r.x("eps_c3")
        c.add("cfg_multi", r, "scales=[7.5,-1.5]", rd.cfg_multi, u, [k, c2], [7.5, -1.5])
        c.add("cfg_multi", r, "scales=[0,0]", rd.cfg_multi, u, [k, c2], [0, 0])
        c.add("cfg_multi", r, "scales=[1.0]", rd.cfg_multi, u, [k], [1.0])
        c.add("cfg_multi", r, "scales=[0.3]", rd.cfg_multi, u, [k], [0.3])
        c.add("cfg_multi", r, "scales=[0.3,(B,)float64]", rd.cfg_multi, u, [k, c2],
              [0.3, r.f64([0, 1, 2, -1])])
        c.add("cfg_multi", r, "scales=[2,0.5,-1]", rd.cfg_multi, u, [k, c2, c3], [2.0, 0.5, -1.0])

        g = r.x("guided", scale=3.0)
        for phi in [0, 0.0, 0.7, 1, 1.0, 0.25]:
            c.add("guidance_rescale", r, f"phi={fmt(phi)}", rd.guidance_rescale, g, k, phi)
        const = data("guided", scale=3.0).copy()
        const[0] = 0.25
        const[2] = 0.0
        c.add("guidance_rescale", r, "constant-samples,phi=0.7", rd.guidance_rescale,
              r.arr(const), k, 0.7)
        c.add("guidance_rescale", r, "2-D,phi=0.7", rd.guidance_rescale,
              r.x("guided", (4, 6)), r.x("eps_c", (4, 6)), 0.7)

        e, gr = r.x("eps"), r.x("grad")
        for ab in [0.5, 0.0, 1.0, "arr"]:
            abv = r.f64(AB_ARR) if ab == "arr" else ab
            for s in [0, 1.0, 3.0, "arr"]:
                sv = r.f64([0, 1, 3, -2]) if s == "arr" else s
                c.add("classifier_guided_eps", r,
                      f"alpha_bar_t={'(B,)float64' if ab == 'arr' else fmt(ab)},"
                      f"scale={'(B,)float64' if s == 'arr' else fmt(s)}",
                      rd.classifier_guided_eps, e, gr, abv, sv)
        mean = r.x("mean")
        variances = {"0.01": 0.01, "0": 0.0, "(B,)float64": r.f64([0.01, 0.2, 0.0, 0.5]),
                     "(B,1,1)row": r.arr(np.array([0.01, 0.2, 0.0, 0.5]).reshape(4, 1, 1)),
                     "full-row": r.arr(np.abs(data("var")) * 0.1)}
        for vname, v in variances.items():
            for s in [0, 2.0, "arr"]:
                sv = r.f64([0, 1, 3, -2]) if s == "arr" else s
                c.add("classifier_guided_mean", r,
                      f"variance={vname},scale={'(B,)float64' if s == 'arr' else fmt(s)}",
                      rd.classifier_guided_mean, mean, v, gr, sv)

        xt = r.x("x_t")
        xp = r.xp
        c.add("classifier_gradient", r, "grad_log_prob=callable", rd.classifier_gradient,
              lambda z, xp=xp: -0.5 * _sum_rest(xp, z * z), xt,
              grad_log_prob=lambda z: -1.0 * z + 0.5)
        c.add("classifier_gradient", r, "grad_log_prob=wrong-shape", rd.classifier_gradient,
              lambda z, xp=xp: _sum_rest(xp, z), xt,
              grad_log_prob=lambda z, xp=xp: xp.reshape(z, (z.shape[0], -1)))
        if r.lib == "torch":
            c.add("classifier_gradient", r, "autograd", rd.classifier_gradient,
                  lambda z, xp=xp: _sum_rest(xp, xp.sin(z) * z), xt)
        else:
            c.add("classifier_gradient", r, "no-autograd", rd.classifier_gradient,
                  lambda z, xp=xp: _sum_rest(xp, xp.sin(z) * z), xt)

    for w in [0.0, 1.5, -2.0, 6.5]:
        c.add("cfg_scale_from_w", None, f"w={fmt(w)}", rd.cfg_scale_from_w, w)
        c.add("w_from_cfg_scale", None, f"scale={fmt(w)}", rd.w_from_cfg_scale, w)


# ---- forward process ----------------------------------------------------------------------

def _ab_variants(r: Row, floats, arr=AB_ARR):
    """(label, ᾱ) pairs: Python floats and per-sample arrays in float64 and in the row dtype."""
    out = [(fmt(v), v) for v in floats]
    out += [("(B,)float64", r.f64(arr)), ("(B,)row", r.arr(arr)),
            ("0d-float64(0.5)", r.f64(0.5)), ("(B,1,1)float64", r.f64(np.reshape(arr, (4, 1, 1))))]
    return out


def corpus_forward(c: Corpus, rows: list[Row]) -> None:
    rd = c.api
    PT = ("epsilon", "sample", "v_prediction")
    for r in rows:
        x0, e, xt, out = r.x("x0"), r.x("eps"), r.x("x_t"), r.x("model_output")
        for label, ab in _ab_variants(r, [0.0, 1.0, 0.5, 0.9999, 1e-4, 0.3, 1]):
            c.add("q_sample", r, f"alpha_bar_t={label}", rd.q_sample, x0, ab, e)
        c.add("q_sample", r, "alpha_bar_t=0.5,eps=kw", rd.q_sample, x0, 0.5, eps=e)
        for pt in PT:
            for label, ab in _ab_variants(r, [0.5, 0.02, 0.999, 1.0, 0.0], AB_ARR_POS):
                c.add("predict_x0_eps", r, f"{pt},alpha_bar_t={label}", rd.predict_x0_eps,
                      xt, out, ab, pt)
            c.add("predict_x0_eps", r, f"{pt},alpha_bar_t=(B,)float64-with-0",
                  rd.predict_x0_eps, xt, out, r.f64(AB_ARR), pt)
            for label, ab in [("0.5", 0.5), ("0.0", 0.0), ("1.0", 1.0),
                              ("(B,)float64", r.f64(AB_ARR))]:
                c.add("prediction_from_x0_eps", r, f"{pt},alpha_bar_t={label}",
                      rd.prediction_from_x0_eps, x0, e, ab, pt)
        c.add("predict_x0_eps", r, "default-type,alpha_bar_t=0.5", rd.predict_x0_eps, xt, out, 0.5)
        for label, ab in _ab_variants(r, [0.5, 0.0, 1.0]):
            c.add("v_target", r, f"alpha_bar_t={label}", rd.v_target, x0, e, ab)
        pairs = [("0.5,0.8", 0.5, 0.8), ("0.0,0.3", 0.0, 0.3), ("0.3,1.0", 0.3, 1.0),
                 ("0.5,0.5", 0.5, 0.5),
                 ("(B,)float64,(B,)float64", r.f64(AB_T_ARR), r.f64(AB_PREV_ARR)),
                 ("(B,)float64,1.0", r.f64(AB_T_ARR), 1.0),
                 ("0.02,(B,)float64", 0.02, r.f64([0.3, 0.5, 1.0, 0.9])),
                 ("(B,)row,(B,)row", r.arr(AB_T_ARR), r.arr(AB_PREV_ARR))]
        for label, a, b in pairs:
            c.add("q_posterior", r, f"alpha_bar_t,prev={label}", rd.q_posterior, x0, xt, a, b)
        c.add("posterior_coefficients", r, "(B,)float64,like=None", rd.posterior_coefficients,
              r.f64(AB_T_ARR), r.f64(AB_PREV_ARR))
        c.add("posterior_coefficients", r, "(B,)float64,like=x", rd.posterior_coefficients,
              r.f64(AB_T_ARR), r.f64(AB_PREV_ARR), like=xt)
        c.add("posterior_coefficients", r, "0.5,0.8,like=x", rd.posterior_coefficients,
              0.5, 0.8, like=xt)
    for a, b in [(0.5, 0.8), (0.0, 0.3), (0.3, 1.0), (0.5, 0.5), (0.9999, 1.0), (1e-8, 1e-4)]:
        c.add("posterior_coefficients", None, f"{fmt(a)},{fmt(b)}", rd.posterior_coefficients, a, b)


# ---- steps ----------------------------------------------------------------------------------

def corpus_steps(c: Corpus, rows: list[Row]) -> None:
    rd = c.api
    for a, b in [(0.5, 0.8), (0.0, 0.3), (0.3, 1.0), (0.5, 0.5), (0.02, 1.0)]:
        for eta in [0, 0.0, 0.5, 1.0, 1.5]:
            c.add("ddim_sigma", None, f"{fmt(a)},{fmt(b)},eta={fmt(eta)}", rd.ddim_sigma, a, b, eta)
    for r in rows:
        x, e, z, x0h = r.x("x_t"), r.x("eps"), r.x("noise"), r.x("x0_hat", scale=1.5)
        for eta in [0.0, 0.5, 1.0]:
            c.add("ddim_sigma", r, f"(B,)float64,eta={fmt(eta)}", rd.ddim_sigma,
                  r.f64(AB_T_ARR), r.f64(AB_PREV_ARR), eta)
        c.add("ddim_sigma", r, "(B,)row,eta=0.5", rd.ddim_sigma, r.arr(AB_T_ARR),
              r.arr(AB_PREV_ARR), 0.5)
        pairs = [("0.5,0.8", 0.5, 0.8), ("0.02,0.3", 0.02, 0.3), ("0.3,1.0", 0.3, 1.0),
                 ("(B,)float64", r.f64(AB_T_ARR), r.f64(AB_PREV_ARR))]
        for label, a, b in pairs:
            for eta in [0.0, 0.5, 1.0]:
                for clip, rederive in [(None, True), (1.0, True), (1.0, False)]:
                    c.add("ddim_step", r, f"ab={label},eta={eta},clip={clip},rederive={rederive}",
                          rd.ddim_step, x, e, a, b, eta=eta, noise=z, clip_x0=clip,
                          rederive_eps=rederive)
            c.add("ddim_step", r, f"ab={label},eta=0,noise=None", rd.ddim_step, x, e, a, b)
        for label, a, b in pairs[:2] + [("0.0,0.3", 0.0, 0.3)]:
            for eta in [0.0, 0.5]:
                for clip in [None, 1.0]:
                    c.add("ddim_step", r, f"ab={label},eta={eta},clip={clip},x0_hat",
                          rd.ddim_step, x, e, a, b, eta=eta, noise=z, clip_x0=clip, x0_hat=x0h)
        c.add("ddim_step", r, "ab=0.5,0.8,clip=2.5,rederive=True", rd.ddim_step, x, e, 0.5, 0.8,
              clip_x0=2.5)

        dpairs = pairs + [("0.5,0.5", 0.5, 0.5), ("(B,)float64,1.0", r.f64(AB_T_ARR), 1.0)]
        for label, a, b in dpairs:
            for vt in ("fixed_small", "fixed_large"):
                for clip in [None, 1.0]:
                    p = f"ab={label},variance_type={vt},clip={clip}"
                    c.add("ddpm_step", r, p, rd.ddpm_step, x, e, a, b, z, variance_type=vt,
                          clip_x0=clip)
                    c.add("ddpm_mean_variance", r, p, rd.ddpm_mean_variance, x, e, a, b,
                          variance_type=vt, clip_x0=clip)
        for label, a, b in [("0.5,0.8", 0.5, 0.8), ("0.0,0.3", 0.0, 0.3), ("0.3,1.0", 0.3, 1.0)]:
            for vt in ("fixed_small", "fixed_large"):
                p = f"ab={label},variance_type={vt},x0_hat"
                c.add("ddpm_step", r, p, rd.ddpm_step, x, e, a, b, z, variance_type=vt,
                      x0_hat=x0h)
                c.add("ddpm_mean_variance", r, p, rd.ddpm_mean_variance, x, e, a, b,
                      variance_type=vt, x0_hat=x0h)
        c.add("ddpm_step", r, "ab=0.5,0.8,defaults", rd.ddpm_step, x, e, 0.5, 0.8, z)
        c.add("ddpm_mean_variance", r, "ab=0.5,0.8,defaults", rd.ddpm_mean_variance, x, e, 0.5, 0.8)

        ipairs = [("1.0,0.9", 1.0, 0.9), ("0.8,0.5", 0.8, 0.5), ("0.5,0.0", 0.5, 0.0),
                  ("0.5,0.5", 0.5, 0.5),
                  ("(B,)float64", r.f64([1.0, 0.8, 0.5, 0.3]), r.f64([0.9, 0.5, 0.0, 0.3]))]
        for label, a, b in ipairs:
            c.add("ddim_inversion_step", r, f"ab={label}", rd.ddim_inversion_step, x, e, a, b)
            c.add("ddim_inversion_step", r, f"ab={label},x0_hat", rd.ddim_inversion_step, x, e,
                  a, b, x0_hat=x0h)
        c.add("ddim_inversion_step", r, "ab=0.0,0.0,x0_hat", rd.ddim_inversion_step, x, e,
              0.0, 0.0, x0_hat=x0h)


# ---- schedules and timesteps ----------------------------------------------------------------

_SCHED_CACHE: dict[tuple, Any] = {}


def schedule(api: Api, kind: str, T: int = 1000, zsnr: bool = False):
    """A schedule built lazily (inside a case) and memoised."""
    key = (kind, T, zsnr)
    if key not in _SCHED_CACHE:
        s = getattr(api, f"{kind}_schedule")(T)
        _SCHED_CACHE[key] = api.rescale_zero_terminal_snr(s) if zsnr else s
    return _SCHED_CACHE[key]


def corpus_schedules(c: Corpus, quick: bool) -> None:
    rd = c.api
    kinds = ("linear", "guided_diffusion_linear", "scaled_linear", "cosine")
    for kind in kinds:
        for T in (10, 1000):
            for zsnr in (False, True):
                p = f"T={T}" + (",rescale_zero_terminal_snr" if zsnr else "")
                c.add(f"{kind}_schedule", None, p, schedule, rd, kind, T, zsnr)
                c.add("Schedule.num_train_timesteps", None, f"{kind},{p}",
                      lambda *a: rd.attr(schedule(*a), "num_train_timesteps"), rd, kind, T, zsnr)
                c.add("Schedule.alpha_bar", None, f"{kind},{p},t=0,5,T-1",
                      lambda *a: [schedule(*a).alpha_bar(t) for t in (0, 5, a[2] - 1)],
                      rd, kind, T, zsnr)
        fn = getattr(rd, f"{kind}_schedule")
        c.add(f"{kind}_schedule", None, "num_train_timesteps=kw(50)", fn, num_train_timesteps=50)
        c.add(f"{kind}_schedule", None, "defaults", fn)
        c.add(f"{kind}_schedule", None, "T=1", fn, 1)
        c.add(f"{kind}_schedule", None, "T=2", fn, 2)
        try:
            import array_api_strict as xs
            c.add(f"{kind}_schedule", None, "T=10,xp=array_api_strict", fn, 10, xp=xs)
            c.add(f"{kind}_schedule", None, "T=10,xp=array_api_strict,rescale_zero_terminal_snr",
                  lambda f=fn: rd.rescale_zero_terminal_snr(f(10, xp=xs)))
        except ImportError:
            pass
    c.add("linear_schedule", None, "1000,1e-3,0.03", rd.linear_schedule, 1000, 1e-3, 0.03)
    c.add("linear_schedule", None, "T=10,beta_end=1.0", rd.linear_schedule, 10, 1e-4, 1.0)
    c.add("scaled_linear_schedule", None, "1000,0.001,0.02", rd.scaled_linear_schedule,
          1000, 0.001, 0.02)
    c.add("cosine_schedule", None, "1000,s=0,max_beta=0.5", rd.cosine_schedule, 1000, s=0.0,
          max_beta=0.5)
    c.add("cosine_schedule", None, "20,s=0.1", rd.cosine_schedule, 20, 0.1)
    for T in (20, 50, 4000):
        c.add("guided_diffusion_linear_schedule", None, f"T={T}",
              rd.guided_diffusion_linear_schedule, T)
    c.add("Schedule.from_betas", None, "list", rd.Schedule.from_betas, [0.1, 0.2, 0.5, 1.0])
    c.add("Schedule.from_betas", None, "float32-array", rd.Schedule.from_betas,
          np.linspace(0.01, 0.2, 7).astype(np.float32))
    c.add("Schedule.alpha_bar", None, "linear,T=1000,t=np.int64(999)",
          lambda: schedule(rd, "linear").alpha_bar(np.int64(999)))

    # inference timesteps
    for T, ns in [(1, [1]), (10, list(range(1, 11))),
                  (1000, [1, 2, 3, 7, 10, 20, 50, 61, 100, 240, 250, 333, 500, 501, 999, 1000])]:
        for n in ns:
            for spacing in ("leading", "trailing", "linspace"):
                c.add("inference_timesteps", None, f"T={T},n={n},{spacing}",
                      rd.inference_timesteps, T, n, spacing)
            for off in (1, 2):
                c.add("inference_timesteps", None, f"T={T},n={n},leading,offset={off}",
                      rd.inference_timesteps, T, n, "leading", off)
    c.add("inference_timesteps", None, "T=1000,n=50,default", rd.inference_timesteps, 1000, 50)
    c.add("inference_timesteps", None, "T=1000,n=50,offset=kw(1)", rd.inference_timesteps,
          1000, 50, offset=1)
    try:
        import array_api_strict as xs
        for spacing in ("leading", "trailing", "linspace"):
            c.add("inference_timesteps", None, f"T=1000,n=61,{spacing},xp=array_api_strict",
                  rd.inference_timesteps, 1000, 61, spacing, xp=xs)
    except ImportError:
        pass
    if not quick:
        for T in (1000, 997):
            for spacing in ("leading", "trailing", "linspace"):
                c.add("inference_timesteps", None, f"T={T},n=1..{T},{spacing}(sweep)",
                      lambda T=T, spacing=spacing: [rd.inference_timesteps(T, n, spacing)
                                                    for n in range(1, T + 1)])
        c.add("inference_timesteps", None, "T=1000,n=1..999,leading,offset=1(sweep)",
              lambda: [_try(rd.inference_timesteps, 1000, n, "leading", 1) for n in range(1, 1000)])


def _try(fn, *args, **kw):
    """A value or an encoded error (for sweeps that may raise on some elements)."""
    try:
        return fn(*args, **kw)
    except Exception as exc:  # noqa: BLE001
        return f"raised {type(exc).__name__}"


# ---- sampling loop --------------------------------------------------------------------------

def linear_model(x, t, c):
    return 0.1 * x + (0 if c is None else 0.05 * c)


class Recorder:
    """A sampling callback that keeps (i, t, x_t, x0_hat) of every step."""

    def __init__(self):
        self.calls = []

    def __call__(self, i, t, x_t, x0_hat):
        self.calls.append((i, t, x_t, x0_hat))


def run_sample(api: Api, model_kind: str, row: Row, spec: dict):
    """One sampling run from a spec (built inside the case: schedules and guidance lazily)."""
    spec = dict(spec)
    sched = schedule(api, *spec.pop("schedule", ("linear", 1000, False)))
    g = spec.pop("guidance", None)
    pt = spec.get("prediction_type", "epsilon")
    shape = ORACLE_SHAPE if model_kind == "oracle" else SAMPLE_SHAPE
    x_T = row.x("x_T", shape)
    if model_kind == "oracle":
        gm = api.oracle.demo_mixture()

        def model(x, t, c):
            ab = sched.alpha_bar(t)
            x0, eps = gm.x0_eps(x, ab, c)
            return api.prediction_from_x0_eps(x0, eps, ab, pt)
    else:
        gm, model = None, linear_model
    guidance = None
    if g is not None:
        g = dict(g)
        if g.get("scale") == "arr":
            g["scale"] = row.f64([0.0, 7.5] if model_kind == "linear" else [0.0, 1.0, 3.0, 7.5])
        if g.pop("classifier", False):
            y = g.pop("label", 1)
            g["classifier"] = lambda x, t: gm.log_prob_class(x, sched.alpha_bar(t), y)
            if g.pop("analytic", True):
                g["grad_log_prob"] = lambda x, t: gm.grad_log_prob_class(x, sched.alpha_bar(t), y)
        guidance = api.Guidance(**g)
    rec = Recorder() if spec.pop("callback", False) else None
    if rec is not None:
        spec["callback"] = rec
    if spec.get("generator") == "object":  # a generator object of the backend, seeded
        spec["generator"] = (np.random.default_rng(5) if row.lib != "torch"
                             else row.mod.Generator().manual_seed(5))
    if spec.get("timesteps") == "array":
        spec["timesteps"] = api.inference_timesteps(api.attr(sched, "num_train_timesteps"), 7,
                                                    "trailing")
    out = api.sample(model, x_T, sched, guidance=guidance, **spec)
    return out if rec is None else (out, rec.calls)


def sample_specs(model_kind: str, quick: bool) -> list[tuple[str, dict]]:
    n = {"num_inference_steps": 10}
    specs: list[tuple[str, dict]] = [
        ("ddim", dict(n)),
        ("ddim,v_prediction", dict(n, prediction_type="v_prediction")),
        ("ddim,sample", dict(n, prediction_type="sample")),
        ("ddim,eta=0.5", dict(n, eta=0.5, generator=0)),
        ("ddpm,fixed_small", dict(n, sampler="ddpm", generator=0)),
        ("ddpm,fixed_large", dict(n, sampler="ddpm", variance_type="fixed_large", generator=0)),
        ("ddim,cfg=7.5", dict(n, guidance={"cond": 1, "scale": 7.5})),
        ("ddim,cfg=(B,)", dict(n, guidance={"cond": 1, "scale": "arr"})),
        ("ddpm,cfg=7.5,rescale=0.7", dict(n, sampler="ddpm", generator=3,
                                          guidance={"cond": 1, "scale": 7.5, "rescale": 0.7})),
        ("ddim,trailing,final=alpha_bar_0", dict(n, spacing="trailing",
                                                 final_alpha_bar="alpha_bar_0")),
        ("ddim,clip=1.0,rederive=False,trajectory", dict(n, clip_x0=1.0, rederive_eps=False,
                                                         return_trajectory=True)),
    ]
    if model_kind == "oracle":
        specs += [
            ("ddim,cg=2.0", dict(n, guidance={"classifier": True, "classifier_scale": 2.0})),
            ("ddpm,cg=2.0", dict(n, sampler="ddpm", generator=0,
                                 guidance={"classifier": True, "classifier_scale": 2.0})),
        ]
    if quick:
        return specs
    specs += [
        ("ddim,eta=1.0", dict(n, eta=1.0, generator=0)),
        ("ddim,eta=0.5,seed=123", dict(n, eta=0.5, generator=123)),
        ("ddim,eta=0,generator=5", dict(n, generator=5)),
        ("ddpm,seed=123", dict(n, sampler="ddpm", generator=123)),
        ("ddpm,generator=object", dict(n, sampler="ddpm", generator="object")),
        ("ddim,eta=1,generator=object", dict(n, eta=1.0, generator="object")),
        ("ddpm,v_prediction,fixed_large", dict(n, sampler="ddpm", generator=1,
                                                prediction_type="v_prediction",
                                                variance_type="fixed_large")),
        ("ddpm,sample", dict(n, sampler="ddpm", generator=1, prediction_type="sample")),
        ("ddim,cfg=0", dict(n, guidance={"cond": 1, "scale": 0.0})),
        ("ddim,cfg=1", dict(n, guidance={"cond": 1, "scale": 1.0})),
        ("ddim,cfg=1(int)", dict(n, guidance={"cond": 1, "scale": 1})),
        ("ddim,cfg=0.3", dict(n, guidance={"cond": 1, "scale": 0.3})),
        ("ddim,cfg=-1.5", dict(n, guidance={"cond": 1, "scale": -1.5})),
        ("ddim,cfg=7.5,uncond=0", dict(n, guidance={"cond": 1, "uncond": 0, "scale": 7.5})),
        ("ddpm,cfg=(B,)", dict(n, sampler="ddpm", generator=2,
                               guidance={"cond": 1, "scale": "arr"})),
        ("ddim,cfg=7.5,rescale=0.7", dict(n, guidance={"cond": 1, "scale": 7.5, "rescale": 0.7})),
        ("ddim,cfg=7.5,rescale=1.0", dict(n, guidance={"cond": 1, "scale": 7.5, "rescale": 1.0})),
        ("ddim,cfg=7.5,rescale=0.7,space=sample",
         dict(n, guidance={"cond": 1, "scale": 7.5, "rescale": 0.7, "rescale_space": "sample"})),
        ("ddim,v,cfg=7.5,rescale=0.7,space=epsilon",
         dict(n, prediction_type="v_prediction",
              guidance={"cond": 1, "scale": 7.5, "rescale": 0.7, "rescale_space": "epsilon"})),
        ("ddim,sample,cfg=(B,),rescale=0.7",
         dict(n, prediction_type="sample", guidance={"cond": 1, "scale": "arr", "rescale": 0.7})),
        ("ddim,final=alpha_bar_0", dict(n, final_alpha_bar="alpha_bar_0")),
        ("ddpm,final=alpha_bar_0", dict(n, sampler="ddpm", generator=0,
                                        final_alpha_bar="alpha_bar_0")),
        ("ddim,clip=1.0", dict(n, clip_x0=1.0)),
        ("ddim,eta=0.5,clip=1.0,rederive=False", dict(n, eta=0.5, generator=0, clip_x0=1.0,
                                                      rederive_eps=False)),
        ("ddpm,clip=1.0", dict(n, sampler="ddpm", generator=0, clip_x0=1.0)),
        ("ddpm,trajectory", dict(n, sampler="ddpm", generator=0, return_trajectory=True)),
        ("ddim,linspace", dict(n, spacing="linspace")),
        ("ddim,trailing", dict(n, spacing="trailing")),
        ("ddim,timesteps=list", dict(timesteps=[999, 700, 400, 100, 0])),
        ("ddim,timesteps=array", dict(timesteps="array")),
        ("ddpm,timesteps=list", dict(sampler="ddpm", generator=0, timesteps=[999, 500, 3, 2, 1])),
        ("ddim,steps=50", dict(num_inference_steps=50)),
        ("ddpm,steps=50,cfg=3", dict(num_inference_steps=50, sampler="ddpm", generator=0,
                                     guidance={"cond": 1, "scale": 3.0})),
        ("ddim,callback", dict(n, callback=True)),
        ("ddim,progress", dict(num_inference_steps=3, progress=False)),
        ("ddim,cosine", dict(n, schedule=("cosine", 1000, False))),
        ("ddim,scaled_linear,eta=0.5", dict(n, eta=0.5, generator=0,
                                            schedule=("scaled_linear", 1000, False))),
        ("ddim,zsnr,trailing,v", dict(n, spacing="trailing", prediction_type="v_prediction",
                                      schedule=("linear", 1000, True))),
        ("ddpm,zsnr,trailing,v", dict(n, spacing="trailing", prediction_type="v_prediction",
                                      sampler="ddpm", generator=0,
                                      schedule=("linear", 1000, True))),
        ("ddim,zsnr,trailing,sample", dict(n, spacing="trailing", prediction_type="sample",
                                           schedule=("linear", 1000, True))),
        ("ddim,zsnr,trailing,epsilon", dict(n, spacing="trailing",
                                            schedule=("linear", 1000, True))),
        ("ddim,T=10,steps=10", dict(n, schedule=("linear", 10, False))),
        ("ddpm,cfg=7.5,rescale=0.7,clip,fixed_large,v,trajectory",
         dict(n, sampler="ddpm", generator=9, prediction_type="v_prediction",
              variance_type="fixed_large", clip_x0=1.0, return_trajectory=True,
              guidance={"cond": 1, "scale": 7.5, "rescale": 0.7})),
    ]
    if model_kind == "oracle":
        specs += [
            ("ddim,cg=2.0,eta=0.5", dict(n, eta=0.5, generator=4,
                                         guidance={"classifier": True, "classifier_scale": 2.0})),
            ("ddim,cg=0", dict(n, guidance={"classifier": True, "classifier_scale": 0.0})),
            ("ddim,cg=2.0,label=0,v", dict(n, prediction_type="v_prediction",
                                           guidance={"classifier": True, "label": 0,
                                                     "classifier_scale": 2.0})),
            ("ddim,cg=2.0,autograd", dict(n, guidance={"classifier": True, "analytic": False,
                                                       "classifier_scale": 2.0})),
            ("ddpm,cg=2.0,autograd", dict(n, sampler="ddpm", generator=0,
                                          guidance={"classifier": True, "analytic": False,
                                                    "classifier_scale": 2.0})),
            ("ddim,cfg=3+cg=1", dict(n, guidance={"cond": 1, "scale": 3.0, "classifier": True,
                                                  "classifier_scale": 1.0})),
            ("ddim,cfg=(B,),rescale=0.5", dict(n, guidance={"cond": 2, "scale": "arr",
                                                            "rescale": 0.5})),
        ]
    return specs


EXTRA_SPECS = [
    ("ddim", {"num_inference_steps": 10}),
    ("ddim,eta=0.5", {"num_inference_steps": 10, "eta": 0.5, "generator": 0}),
    ("ddpm,fixed_large", {"num_inference_steps": 10, "sampler": "ddpm", "generator": 0,
                          "variance_type": "fixed_large"}),
    ("ddim,v,cfg=7.5,rescale=0.7", {"num_inference_steps": 10, "prediction_type": "v_prediction",
                                    "guidance": {"cond": 1, "scale": 7.5, "rescale": 0.7}}),
    ("ddpm,sample,clip=1.0,cfg=(B,)", {"num_inference_steps": 10, "sampler": "ddpm",
                                       "generator": 1, "prediction_type": "sample",
                                       "clip_x0": 1.0, "guidance": {"cond": 1, "scale": "arr"}}),
]


def corpus_sampling(c: Corpus, rows: list[Row], extra_rows: list[Row], quick: bool) -> None:
    rd = c.api
    for model_kind in ("linear", "oracle"):
        specs = sample_specs(model_kind, quick)
        for r in rows:
            for label, spec in specs:
                c.add("sample", r, f"{model_kind}|{label}", run_sample, rd, model_kind, r, spec)
    for r in extra_rows:  # low precision and array-api-strict: a few runs each
        for model_kind in ("linear", "oracle"):
            for label, spec in EXTRA_SPECS:
                c.add("sample", r, f"{model_kind}|{label}", run_sample, rd, model_kind, r, spec)
    # DDIM inversion (linear model), then back
    for r in rows:
        x0 = r.x("x0_inv", SAMPLE_SHAPE)
        for label, kw in [("default", {}), ("steps=10", {"num_inference_steps": 10}),
                          ("trailing", {"num_inference_steps": 10, "spacing": "trailing"}),
                          ("timesteps", {"timesteps": [900, 500, 100, 0]}),
                          ("v_prediction", {"num_inference_steps": 10,
                                            "prediction_type": "v_prediction"}),
                          ("sample", {"num_inference_steps": 10, "prediction_type": "sample"}),
                          ("cond=1", {"num_inference_steps": 10, "cond": 1})]:
            c.add("ddim_invert", r, label,
                  lambda r=r, x0=x0, kw=kw: rd.ddim_invert(linear_model, x0, schedule(rd, "linear"),
                                                           **kw))
        c.add("ddim_invert", r, "cosine,steps=10", lambda x0=x0: rd.ddim_invert(
            linear_model, x0, schedule(rd, "cosine"), num_inference_steps=10))


# ---- seeded random sweeps over the step functions ------------------------------------------

def corpus_random(c: Corpus, rows: list[Row], quick: bool) -> None:
    """Parameters drawn once from a fixed seed (per row, the same draws): ᾱ pairs with exact
    edges mixed in, η, clipping, prediction type, scales; each draw on fresh inputs."""
    rd = c.api
    PT = ("epsilon", "sample", "v_prediction")
    n = 6 if quick else 40
    rng = np.random.default_rng(20240601)
    draws = []
    for i in range(n):
        edge = rng.integers(0, 4)
        ab_t = float(rng.uniform(1e-5, 0.9999)) if edge else float(rng.choice([1e-4, 0.5, 0.9999]))
        ab_prev = 1.0 if rng.random() < 0.2 else float(rng.uniform(ab_t, 1.0))
        draws.append(dict(
            i=i, ab_t=ab_t, ab_prev=ab_prev, eta=float(rng.choice([0.0, 1.0, rng.uniform(0, 1)])),
            clip=None if rng.random() < 0.5 else float(rng.uniform(0.5, 3.0)),
            rederive=bool(rng.random() < 0.5), pt=str(rng.choice(PT)),
            vt=str(rng.choice(["fixed_small", "fixed_large"])),
            scale=float(rng.choice([rng.uniform(-3, 12), 0.0, 1.0])),
            phi=float(rng.uniform(0, 1)), arr=bool(rng.random() < 0.3),
            ab_t_arr=np.sort(rng.uniform(1e-4, 0.999, 4)),
            gap=rng.uniform(0, 1, 4), magnitude=float(10 ** rng.uniform(-3, 3))))
    for r in rows:
        for d in draws:
            i, m = d["i"], d["magnitude"]
            x, e, z = r.x(f"rx{i}", scale=m), r.x(f"re{i}"), r.x(f"rz{i}")
            if d["arr"]:
                t_np = d["ab_t_arr"]
                a, b = r.f64(t_np), r.f64(t_np + d["gap"] * (1.0 - t_np))
                lab = "(B,)float64"
            else:
                a, b = d["ab_t"], d["ab_prev"]
                lab = f"{a!r},{b!r}"
            tag = f"#{i}:ab={lab}"
            c.add("random:ddim_step", r, f"{tag},eta={d['eta']:.6g},clip={d['clip']},"
                  f"rederive={d['rederive']}", rd.ddim_step, x, e, a, b, eta=d["eta"], noise=z,
                  clip_x0=d["clip"], rederive_eps=d["rederive"])
            c.add("random:ddpm_step", r, f"{tag},{d['vt']},clip={d['clip']}", rd.ddpm_step,
                  x, e, a, b, z, variance_type=d["vt"], clip_x0=d["clip"])
            c.add("random:q_posterior", r, tag, rd.q_posterior, r.x(f"r0{i}"), x, a, b)
            c.add("random:predict_x0_eps", r, f"{tag},{d['pt']}", rd.predict_x0_eps, x, e, a,
                  d["pt"])
            c.add("random:q_sample", r, tag, rd.q_sample, x, a, e)
            c.add("random:ddim_inversion_step", r, tag, rd.ddim_inversion_step, x, e, b, a)
            c.add("random:cfg", r, f"#{i}:scale={d['scale']!r}", rd.cfg, e, x, d["scale"])
            c.add("random:guidance_rescale", r, f"#{i}:scale={d['scale']!r},phi={d['phi']!r}",
                  lambda e=e, x=x, d=d: rd.guidance_rescale(rd.cfg(e, x, d["scale"]), x, d["phi"]))
            c.add("random:classifier_guided_eps", r, f"{tag},scale={d['scale']!r}",
                  rd.classifier_guided_eps, e, z, a, d["scale"])
            c.add("random:diffusion_loss", r, f"{tag},{d['pt']},min_snr",
                  rd.diffusion_loss, x, r.x(f"r0{i}"), e, a, d["pt"], weighting="min_snr",
                  reduction="none")


# ---- training side --------------------------------------------------------------------------

def corpus_training(c: Corpus, rows: list[Row]) -> None:
    rd = c.api
    PT = ("epsilon", "sample", "v_prediction")
    for a in [0.0, 0.5, 0.75, 1.0, 1e-8, 1]:
        c.add("snr", None, f"alpha_bar_t={fmt(a)}", rd.snr, a)
        for gamma in (5.0, 1.5):
            for pt in PT:
                c.add("min_snr_weight", None, f"alpha_bar_t={fmt(a)},gamma={gamma},{pt}",
                      rd.min_snr_weight, a, gamma, pt)
    c.add("min_snr_weight", None, "alpha_bar_t=0.3,defaults", rd.min_snr_weight, 0.3)
    for r in rows:
        x0 = r.x("x0")
        for T in (1, 10, 1000):
            for seed in (0, 7):
                c.add("sample_timesteps", r, f"T={T},generator={seed}", rd.sample_timesteps, x0,
                      T, generator=seed)
        c.add("sample_timesteps", r, "num_train_timesteps=kw(1000)", rd.sample_timesteps, x0,
              num_train_timesteps=1000, generator=3)
        c.add("sample_timesteps", r, "T=1000,generator=object",
              lambda r=r, x0=x0: rd.sample_timesteps(
                  x0, 1000, generator=(r.mod.Generator().manual_seed(9) if r.lib == "torch"
                                       else np.random.default_rng(9))))
        t_int = r.i64([0, 999, 500, 17])
        c.add("alpha_bar_at", r, "linear,t=[0,999,500,17]",
              lambda t=t_int: rd.alpha_bar_at(schedule(rd, "linear"), t))
        c.add("alpha_bar_at", r, "cosine,t=int32",
              lambda t=r.arr([3, 2, 1, 0], "int32"): rd.alpha_bar_at(schedule(rd, "cosine"), t))
        c.add("alpha_bar_at", r, "sampled t",
              lambda x0=x0: rd.alpha_bar_at(schedule(rd, "linear"),
                                            rd.sample_timesteps(x0, 1000, generator=11)))
        labels = r.i64([0, 1, 2, 3, 4, 5, 6, 7])
        emb = r.x("emb", (8, 4))
        for p in (0.0, 0.1, 0.5, 1.0, 0, 1):
            c.add("drop_condition", r, f"labels,null=10,p={fmt(p)}", rd.drop_condition, labels,
                  10, p, generator=0)
        c.add("drop_condition", r, "emb,null=0.0,p=0.5", rd.drop_condition, emb, 0.0, 0.5,
              generator=1)
        c.add("drop_condition", r, "emb,null=(4,),p=0.5", rd.drop_condition, emb,
              r.x("null_emb", (4,)), 0.5, generator=2)
        c.add("drop_condition", r, "emb,null=(8,4),p=0.3", rd.drop_condition, emb,
              r.x("null_emb", (8, 4)), 0.3, generator=2)
        ab_edge = r.arr([0.0, 0.25, 0.75, 1.0])
        c.add("snr", r, "alpha_bar_t=(4,)row", rd.snr, ab_edge)
        c.add("snr", r, "alpha_bar_t=(4,)float64", rd.snr, r.f64([0.0, 0.25, 0.75, 1.0]))
        for gamma in (5.0, 1.5):
            for pt in PT:
                c.add("min_snr_weight", r, f"alpha_bar_t=(4,)row,gamma={gamma},{pt}",
                      rd.min_snr_weight, ab_edge, gamma, pt)
        out, e = r.x("model_output"), r.x("eps")
        for pt in PT:
            for weighting in ("none", "min_snr"):
                for reduction in ("mean", "none"):
                    for label, ab in [("0.5", 0.5), ("(B,)float64", r.f64(AB_ARR_POS))]:
                        c.add("diffusion_loss", r,
                              f"{pt},{weighting},{reduction},alpha_bar_t={label}",
                              rd.diffusion_loss, out, x0, e, ab, pt, weighting=weighting,
                              reduction=reduction)
            c.add("diffusion_loss", r, f"{pt},min_snr,gamma=1.5,alpha_bar_t=(B,)edges",
                  rd.diffusion_loss, out, x0, e, r.f64([0.0, 0.5, 0.999, 1.0]), pt,
                  weighting="min_snr", gamma=1.5, reduction="none")
        c.add("diffusion_loss", r, "defaults,eps=kw", rd.diffusion_loss, out, x0, eps=e,
              alpha_bar_t=0.3)
        c.add("diffusion_loss", r, "2-D", rd.diffusion_loss, r.x("mo2", (4, 6)),
              r.x("x02", (4, 6)), r.x("e2", (4, 6)), 0.5)
        logits = r.x("logits", (4, 5), 2.0)
        lab = r.i64([0, 4, 2, 1])
        c.add("label_log_prob", r, "", rd.label_log_prob, logits, lab)
        c.add("label_log_prob", r, "large logits", rd.label_log_prob,
              r.x("logits", (4, 5), 300.0), lab)
        for reduction in ("mean", "none"):
            c.add("cross_entropy", r, reduction, rd.cross_entropy, logits, lab, reduction=reduction)
        W = r.x("W", (15, 5), 0.3)
        xp = r.xp

        def classifier(x_t, t, W=W, xp=xp):
            flat = xp.reshape(x_t, (x_t.shape[0], -1))
            return xp.matmul(flat, W) + 1e-3 * xp.astype(t, flat.dtype)[:, None]

        tt = r.i64([10, 500, 999, 0])
        for reduction in ("mean", "none"):
            for label, ab in [("0.5", 0.5), ("(B,)float64", r.f64(AB_ARR_POS))]:
                c.add("noisy_classifier_loss", r, f"{reduction},alpha_bar_t={label}",
                      rd.noisy_classifier_loss, classifier, x0, lab, tt, ab, e,
                      reduction=reduction)
        c.add("noisy_classifier_loss", r, "eps=kw", rd.noisy_classifier_loss, classifier, x0,
              lab, tt, 0.5, eps=e)
        u, k = r.x("eps_u"), r.x("eps_c")
        for s in (0, 1, 3.5, -1.0):
            c.add("guidance_distillation_target", r, f"scale={fmt(s)}",
                  rd.guidance_distillation_target, u, k, s)
        c.add("guidance_distillation_target", r, "scale=(B,)float64",
              rd.guidance_distillation_target, u, k, r.f64([1.0, 2.0, 7.5, 0.0]))
        sc = r.arr([1.0, 2.0, 7.5, 0.0])
        for label, kw in [("dim=2", dict(dim=2)), ("dim=8", dict(dim=8)), ("dim=16", dict(dim=16)),
                          ("dim=8,multiplier=1", dict(dim=8, multiplier=1.0)),
                          ("dim=8,max_period=100", dict(dim=8, max_period=100.0)),
                          ("dim=8,dtype=float32", dict(dim=8, dtype=r.dt("float32"))),
                          ("dim=8,dtype=float64", dict(dim=8, dtype=r.dt("float64")))]:
            c.add("guidance_scale_embedding", r, label, rd.guidance_scale_embedding, sc, **kw)
        for label, lo, hi, seed in [("1,5", 1.0, 5.0, 0), ("0,0", 0.0, 0.0, 1),
                                    ("-2,8", -2.0, 8.0, 2), ("2,1", 2.0, 1.0, 0)]:
            c.add("sample_guidance_scales", r, f"{label},generator={seed}",
                  rd.sample_guidance_scales, x0, lo, hi, generator=seed)
        tv = r.i64([0, 1, 999, 500])
        for dim in (2, 8, 32):
            c.add("sinusoidal_embedding", r, f"int64,dim={dim}", rd.sinusoidal_embedding, tv, dim)
        fv = r.arr([0.0, 0.5, -3.25, 999.0])
        c.add("sinusoidal_embedding", r, "row,dim=8", rd.sinusoidal_embedding, fv, 8)
        c.add("sinusoidal_embedding", r, "row,dim=8,max_period=100", rd.sinusoidal_embedding,
              fv, 8, max_period=100.0)
        c.add("sinusoidal_embedding", r, "int64,dim=8,dtype=float32", rd.sinusoidal_embedding,
              tv, 8, dtype=r.dt("float32"))
        c.add("sinusoidal_embedding", r, "int32,dim=6", rd.sinusoidal_embedding,
              r.arr([0, 1, 2, 3], "int32"), 6)

    # autograd through the training losses (torch)
    for r in rows:
        if r.lib != "torch" or r.dtype_name not in ("float32", "float64"):
            continue
        x0, e = r.x("x0"), r.x("eps")
        for pt in PT:
            for weighting in ("none", "min_snr"):
                c.add("diffusion_loss.backward", r, f"{pt},{weighting}", _loss_grad, rd, r, pt,
                      weighting, x0, e)
        c.add("guidance_rescale.backward", r, "phi=0.7", _rescale_grad, rd, r)


def _loss_grad(rd, r, pt, weighting, x0, e):
    out = r.x("model_output").requires_grad_(True)
    loss = rd.diffusion_loss(out, x0, e, r.f64(AB_ARR_POS), pt, weighting=weighting)
    loss.backward()
    return loss.detach(), out.grad


def _rescale_grad(rd, r):
    g = r.x("guided", scale=3.0).requires_grad_(True)
    k = r.x("eps_c").requires_grad_(True)
    y = rd.guidance_rescale(g, k, 0.7)
    (y * r.x("cot")).sum().backward()
    return y.detach(), g.grad, k.grad


# ---- oracle and backends --------------------------------------------------------------------

def corpus_oracle(c: Corpus, rows: list[Row], quick: bool) -> None:
    rd = c.api
    orc = rd.oracle
    mixtures = {
        "demo": lambda: orc.demo_mixture(),
        "demo(4,3.0,0.5)": lambda: orc.demo_mixture(4, 3.0, 0.5),
        "full": lambda: orc.GaussianMixture.full(
            [1.0, 2.0, 1.5], [[0.0, 0.0], [1.0, -1.0], [-2.0, 0.5]],
            [[[1.0, 0.3], [0.3, 0.5]], [[0.2, 0.0], [0.0, 0.8]], [[0.5, -0.2], [-0.2, 0.3]]],
            [0, 1, 1]),
        "diagonal": lambda: orc.GaussianMixture.diagonal(
            [0.3, 0.7], [[1.0, 1.0], [-1.0, 0.0]], [[0.1, 0.5], [0.4, 0.2]]),
        "isotropic": lambda: orc.GaussianMixture.isotropic(
            [1.0, 1.0, 2.0], [[0.0, 2.0], [2.0, 0.0], [0.0, -2.0]], [0.1, 0.2, 0.3], [0, 1, 0]),
    }
    cache: dict[str, Any] = {}

    def gm(name):
        if name not in cache:
            cache[name] = mixtures[name]()
        return cache[name]

    for name in mixtures:
        c.add("GaussianMixture", None, name, gm, name)
        c.add("GaussianMixture.dim,num_classes", None, name,
              lambda name=name: (gm(name).dim, gm(name).num_classes))

    def method(mix, meth, *args):
        return getattr(gm(mix), meth)(*args)

    abs_full = [0.0, 1e-3, 0.5, 0.999, 1.0]
    for r in rows:
        x = r.x("x_oracle", ORACLE_SHAPE, 2.0)
        abv = [(fmt(a), a) for a in abs_full] + [("(B,)float64", r.f64([0.0, 0.5, 0.999, 1.0])),
                                                 ("(B,)row", r.arr([0.1, 0.5, 0.9, 0.3]))]
        y_arr = r.i64([0, 1, 2, 1])
        for label, ab in abv:
            for y_label, y in [("None", None), ("1", 1), ("(B,)", y_arr)]:
                for meth in ("score", "x0_eps", "eps", "log_prob"):
                    c.add(f"GaussianMixture.{meth}", r, f"demo,alpha_bar_t={label},y={y_label}",
                          method, "demo", meth, x, ab, y)
            for y_label, y in [("0", 0), ("2", 2), ("(B,)", y_arr)]:
                for meth in ("log_prob_class", "grad_log_prob_class"):
                    c.add(f"GaussianMixture.{meth}", r, f"demo,alpha_bar_t={label},y={y_label}",
                          method, "demo", meth, x, ab, y)
        if r.name in ("numpy-float64", "torch-float32", "torch-float64"):
            far = r.x("x_oracle", ORACLE_SHAPE, 60.0)
            for label, ab in [("0.5", 0.5), ("1.0", 1.0), ("0.0", 0.0)]:
                for meth, y in [("eps", None), ("x0_eps", 1), ("log_prob_class", 0),
                                ("grad_log_prob_class", 2)]:
                    c.add(f"GaussianMixture.{meth}", r, f"demo,far,alpha_bar_t={label},y={y}",
                          method, "demo", meth, far, ab, y)
            for mix in ("demo(4,3.0,0.5)", "full", "diagonal", "isotropic"):
                for label, ab in [("0.0", 0.0), ("0.5", 0.5), ("1.0", 1.0)]:
                    for meth, y in [("score", None), ("x0_eps", 1), ("eps", 0), ("log_prob", None),
                                    ("log_prob_class", 1), ("grad_log_prob_class", 0)]:
                        c.add(f"GaussianMixture.{meth}", r, f"{mix},alpha_bar_t={label},y={y}",
                              method, mix, meth, x, ab, y)
        if r.lib == "torch" and r.dtype_name in ("float32", "float64"):
            for label, ab in [("0.5", 0.5), ("0.02", 0.02)]:
                c.add("classifier_gradient", r, f"oracle,autograd,alpha_bar_t={label}",
                      rd.classifier_gradient,
                      lambda z, ab=ab: gm("demo").log_prob_class(z, ab, 1), x)
                c.add("classifier_gradient", r, f"oracle,analytic,alpha_bar_t={label}",
                      rd.classifier_gradient,
                      lambda z, ab=ab: gm("demo").log_prob_class(z, ab, 1), x,
                      grad_log_prob=lambda z, ab=ab: gm("demo").grad_log_prob_class(z, ab, 1))

    backends = [("numpy", None), ("numpy", "float32"), ("torch", None), ("torch", "float32"),
                ("torch", "float64"), ("array_api_strict", None), ("array_api_strict", "float32")]
    for lib, dtype in backends:
        try:
            mod = __import__(lib)
        except ImportError:
            continue
        dt = None if dtype is None else (
            np.dtype(dtype).type if lib == "numpy" else getattr(mod, dtype))
        where = f"{lib}-{dtype or 'default'}"
        draws = [(1, 0, None), (7, 5, None), (200, 1, 2)] + ([] if quick else [(1000, 3, None)])
        for n, seed, y in draws:
            c.add("GaussianMixture.sample", where, f"demo,n={n},generator={seed},y={y}",
                  lambda n=n, seed=seed, y=y, lib=lib, dt=dt:
                  gm("demo").sample(n, generator=seed, backend=lib, dtype=dt, y=y))
        for ab in (0.0, 0.5, 1.0):
            c.add("GaussianMixture.sample_noisy", where, f"demo,n=50,alpha_bar_t={fmt(ab)}",
                  lambda ab=ab, lib=lib, dt=dt:
                  gm("demo").sample_noisy(50, ab, generator=4, backend=lib, dtype=dt))
        c.add("GaussianMixture.sample_noisy", where, "full,n=30,alpha_bar_t=0.3",
              lambda lib=lib, dt=dt: gm("full").sample_noisy(30, 0.3, generator=8, backend=lib,
                                                             dtype=dt))


def corpus_backends(c: Corpus) -> None:
    rd = c.api

    def draw(lib, what, dtype, seed):
        b = rd.backends.get_backend(lib)
        mod = __import__(lib)
        dt = np.dtype(dtype).type if lib == "numpy" else getattr(mod, dtype)
        return getattr(b, what)((3, 4), dtype=dt, generator=seed)

    for lib, dtypes in [("numpy", ("float64", "float32")),
                        ("torch", ("float64", "float32", "float16", "bfloat16")),
                        ("array_api_strict", ("float64", "float32"))]:
        try:
            __import__(lib)
        except ImportError:
            continue
        for dtype in dtypes:
            for what in ("normal", "uniform"):
                for seed in (0, 42):
                    c.add(f"backend.{what}", f"{lib}-{dtype}", f"generator={seed}", draw, lib,
                          what, dtype, seed)
        c.add("get_backend", lib, "name", lambda lib=lib: rd.backends.get_backend(lib).name)
    c.add("get_backend", "numpy", "from-array",
          lambda: rd.backends.get_backend(np.zeros(2)).name)
    c.add("available_backends", None, "", lambda: [n for n in rd.backends.available_backends()
                                                   if n in ("numpy", "torch", "array_api_strict")])
    c.add("constants", None, "PREDICTION_TYPES", lambda: rd.PREDICTION_TYPES)
    c.add("constants", None, "SPACINGS", lambda: rd.SPACINGS)
    c.add("constants", None, "VARIANCE_TYPES", lambda: rd.VARIANCE_TYPES)


# ---- error cases ----------------------------------------------------------------------------

def _strict_on_device(a, name: str):
    import array_api_strict as xs
    return a.to_device(xs.Device(name))


def corpus_errors(c: Corpus, rows: list[Row]) -> None:
    rd = c.api
    by_name = {r.name: r for r in rows}
    r = by_name.get("numpy-float64") or rows[0]
    x, e, z = r.x("x_t"), r.x("eps"), r.x("noise")
    E = "error:"

    def err(fn_name, params, fn, *args, row=None, **kw):
        c.add(E + fn_name, row or r, params, fn, *args, **kw)

    for bad in (1.5, -0.1, math.nan, math.inf):
        err("q_sample", f"alpha_bar_t={fmt(bad)}", rd.q_sample, x, bad, e)
        err("ddim_step", f"alpha_bar_t={fmt(bad)}", rd.ddim_step, x, e, bad, 1.0)
        err("ddim_step", f"alpha_bar_prev={fmt(bad)}", rd.ddim_step, x, e, 0.5, bad)
    for bad in (math.nan, math.inf, -math.inf):
        err("cfg", f"scale={fmt(bad)}", rd.cfg, x, e, bad)
    err("q_sample", "alpha_bar_t=(B,)with-1.5", rd.q_sample, x, r.f64([0.5, 1.5, 0.2, 0.1]), e)
    err("q_sample", "alpha_bar_t=(B,)with-nan", rd.q_sample, x, r.f64([0.5, math.nan, 0.2, 0.1]), e)
    err("q_sample", "alpha_bar_t=(3,)", rd.q_sample, x, r.f64([0.5, 0.5, 0.5]), e)
    err("q_sample", "alpha_bar_t=str", rd.q_sample, x, "0.5", e)
    err("q_sample", "alpha_bar_t=True", rd.q_sample, x, True, e)
    err("q_sample", "alpha_bar_t=None", rd.q_sample, x, None, e)
    err("q_sample", "shape-mismatch", rd.q_sample, x, 0.5, r.x("eps", (4, 3, 4)))
    err("q_sample", "dtype-mismatch", rd.q_sample, x, 0.5, r.arr(data("eps"), "float32"))
    err("q_sample", "int-dtype", rd.q_sample, r.i64(np.ones(SHAPE)), 0.5, r.i64(np.ones(SHAPE)))
    err("q_sample", "no-arrays", rd.q_sample, 1.0, 0.5, 0.0)
    err("ddim_step", "alpha_bar_prev<alpha_bar_t", rd.ddim_step, x, e, 0.8, 0.5)
    err("ddim_step", "(B,)alpha_bar_prev<alpha_bar_t", rd.ddim_step, x, e,
        r.f64([0.3, 0.5, 0.9, 0.2]), r.f64([0.2, 0.5, 0.95, 0.3]))
    err("ddpm_step", "(B,)alpha_bar_prev<alpha_bar_t", rd.ddpm_step, x, e,
        r.f64([0.3, 0.5, 0.9, 0.2]), r.f64([0.2, 0.5, 0.95, 0.3]), z)
    err("ddim_step", "alpha_bar_t=1.0", rd.ddim_step, x, e, 1.0, 1.0)
    err("ddim_step", "alpha_bar_prev=0.0", rd.ddim_step, x, e, 0.0, 0.0, x0_hat=x)
    err("ddim_step", "alpha_bar_t=0,epsilon", rd.ddim_step, x, e, 0.0, 0.3)
    err("ddim_step", "(B,)alpha_bar_t-with-0,epsilon", rd.ddim_step, x, e,
        r.f64([0.0, 0.1, 0.2, 0.3]), 0.5)
    err("ddim_step", "eta=-0.1", rd.ddim_step, x, e, 0.5, 0.8, eta=-0.1, noise=z)
    err("ddim_step", "eta=nan", rd.ddim_step, x, e, 0.5, 0.8, eta=math.nan, noise=z)
    err("ddim_step", "eta=1.5,prev=1", rd.ddim_step, x, e, 0.5, 1.0, eta=1.5, noise=z)
    err("ddim_step", "eta=0.5,noise=None", rd.ddim_step, x, e, 0.5, 0.8, eta=0.5)
    for clip in (-1.0, 0.0, True, math.inf, "1"):
        err("ddim_step", f"clip_x0={clip!r}", rd.ddim_step, x, e, 0.5, 0.8, clip_x0=clip)
    err("ddim_step", "x0_hat-shape", rd.ddim_step, x, e, 0.5, 0.8, x0_hat=r.x("eps", (4, 3, 4)))
    err("ddim_sigma", "eta=-1", rd.ddim_sigma, 0.5, 0.8, -1.0)
    err("ddim_sigma", "eta=True", rd.ddim_sigma, 0.5, 0.8, True)
    err("ddpm_step", "noise=None", rd.ddpm_step, x, e, 0.5, 0.8, None)
    err("ddpm_step", "variance_type=fixed_large_log", rd.ddpm_step, x, e, 0.5, 0.8, z,
        variance_type="fixed_large_log")
    err("ddpm_step", "alpha_bar_prev<alpha_bar_t", rd.ddpm_step, x, e, 0.8, 0.5, z)
    err("ddpm_mean_variance", "variance_type=learned", rd.ddpm_mean_variance, x, e, 0.5, 0.8,
        variance_type="learned")
    err("ddpm_mean_variance", "alpha_bar_t=0,epsilon", rd.ddpm_mean_variance, x, e, 0.0, 0.8)
    err("ddim_inversion_step", "alpha_bar_next>alpha_bar_t", rd.ddim_inversion_step, x, e, 0.5, 0.8)
    err("ddim_inversion_step", "alpha_bar_t=0,epsilon", rd.ddim_inversion_step, x, e, 0.0, 0.0)
    err("predict_x0_eps", "prediction_type=eps", rd.predict_x0_eps, x, e, 0.5, "eps")
    err("predict_x0_eps", "epsilon,alpha_bar_t=0", rd.predict_x0_eps, x, e, 0.0, "epsilon")
    err("predict_x0_eps", "sample,alpha_bar_t=1", rd.predict_x0_eps, x, e, 1.0, "sample")
    err("prediction_from_x0_eps", "prediction_type=x0", rd.prediction_from_x0_eps, x, e, 0.5, "x0")
    err("q_posterior", "alpha_bar_prev<alpha_bar_t", rd.q_posterior, x, x, 0.5, 0.3)
    err("posterior_coefficients", "alpha_bar_t=1", rd.posterior_coefficients, 1.0, 1.0)
    err("cfg_multi", "length-mismatch", rd.cfg_multi, x, [e, e], [1.0])
    err("cfg_multi", "empty", rd.cfg_multi, x, [], [])
    err("guidance_rescale", "1-D", rd.guidance_rescale, r.x("g1", (4,)), r.x("c1", (4,)), 0.7)
    err("guidance_rescale", "phi=1.5", rd.guidance_rescale, x, e, 1.5)
    err("guidance_rescale", "phi=array", rd.guidance_rescale, x, e, r.f64(0.5))
    err("classifier_guided_mean", "variance=-1", rd.classifier_guided_mean, x, -1.0, e, 1.0)
    err("classifier_guided_eps", "alpha_bar_t=2", rd.classifier_guided_eps, x, e, 2.0, 1.0)
    err("classifier_gradient", "numpy-no-grad", rd.classifier_gradient,
        lambda v: v.sum(axis=(1, 2)), x)
    err("classifier_gradient", "int-x_t", rd.classifier_gradient, lambda v: v,
        r.i64(np.ones(SHAPE)), grad_log_prob=lambda v: v)
    # schedules and timesteps
    err("linear_schedule", "T=0", rd.linear_schedule, 0)
    err("linear_schedule", "T=True", rd.linear_schedule, True)
    err("linear_schedule", "T=10.0", rd.linear_schedule, 10.0)
    err("linear_schedule", "beta_start=0", rd.linear_schedule, 10, 0.0, 0.02)
    err("linear_schedule", "beta_end=1.5", rd.linear_schedule, 10, 1e-4, 1.5)
    err("linear_schedule", "beta_start=str", rd.linear_schedule, 10, "0.1", 0.02)
    err("scaled_linear_schedule", "beta_end=nan", rd.scaled_linear_schedule, 10, 1e-4, math.nan)
    err("cosine_schedule", "s=-1", rd.cosine_schedule, 10, -1.0)
    err("cosine_schedule", "max_beta=0", rd.cosine_schedule, 10, 0.008, 0.0)
    err("guided_diffusion_linear_schedule", "T=-5", rd.guided_diffusion_linear_schedule, -5)
    err("Schedule.from_betas", "zero", rd.Schedule.from_betas, [0.1, 0.0, 0.2])
    err("Schedule.from_betas", "one-not-last", rd.Schedule.from_betas, [0.1, 1.0, 0.2])
    err("Schedule.from_betas", "2-D", rd.Schedule.from_betas, [[0.1, 0.2]])
    err("Schedule.from_betas", "empty", rd.Schedule.from_betas, [])
    err("Schedule.from_betas", "nan", rd.Schedule.from_betas, [0.1, math.nan])
    err("Schedule.alpha_bar", "t=1000", lambda: schedule(rd, "linear").alpha_bar(1000))
    err("Schedule.alpha_bar", "t=-1", lambda: schedule(rd, "linear").alpha_bar(-1))
    err("rescale_zero_terminal_snr", "T=1",
        lambda: rd.rescale_zero_terminal_snr(rd.linear_schedule(1)))
    err("inference_timesteps", "n>T", rd.inference_timesteps, 10, 11)
    err("inference_timesteps", "n=0", rd.inference_timesteps, 10, 0)
    err("inference_timesteps", "spacing=uniform", rd.inference_timesteps, 10, 5, "uniform")
    err("inference_timesteps", "leading,offset=40", rd.inference_timesteps, 1000, 50, "leading", 40)
    err("inference_timesteps", "leading,offset=-1", rd.inference_timesteps, 1000, 50, "leading", -1)
    err("inference_timesteps", "leading,offset=0.5", rd.inference_timesteps, 1000, 50, "leading",
        0.5)
    # sampling loop
    sx = r.x("x_T", SAMPLE_SHAPE)

    def s(**kw):
        sched = kw.pop("schedule", None) or schedule(rd, "linear")
        return rd.sample(linear_model, sx, sched, num_inference_steps=kw.pop("n", 5), **kw)

    err("sample", "sampler=euler", s, sampler="euler")
    err("sample", "prediction_type=x0", s, prediction_type="x0")
    err("sample", "final_alpha_bar=zero", s, final_alpha_bar="zero")
    err("sample", "variance_type=learned", s, sampler="ddpm", generator=0, variance_type="learned")
    err("sample", "rescale_space=latent", lambda: s(guidance=rd.Guidance(
        cond=1, scale=7.5, rescale=0.7, rescale_space="latent")))
    err("sample", "timesteps=ascending", s, timesteps=[0, 10, 20])
    err("sample", "timesteps=out-of-range", s, timesteps=[1000, 10])
    err("sample", "timesteps=empty", s, timesteps=[])
    err("sample", "n>T", s, n=2000)
    err("sample", "spacing=bad", s, spacing="bad")
    err("sample", "eta=-1", s, eta=-1.0, generator=0)
    err("sample", "zsnr,trailing,epsilon", lambda: s(spacing="trailing",
                                                     schedule=schedule(rd, "linear", 1000, True)))
    err("sample", "classifier-without-grad(numpy)", lambda: s(guidance=rd.Guidance(
        classifier=lambda v, t: v.sum(axis=(1, 2)), classifier_scale=1.0)))
    err("ddim_invert", "prediction_type=bad", lambda: rd.ddim_invert(
        linear_model, sx, schedule(rd, "linear"), num_inference_steps=5, prediction_type="bad"))
    # training side
    err("sample_timesteps", "T=0", rd.sample_timesteps, x, 0, generator=0)
    err("sample_timesteps", "generator=None", rd.sample_timesteps, x, 10, generator=None)
    err("sample_timesteps", "0-d x0", rd.sample_timesteps, r.f64(1.0), 10, generator=0)
    err("alpha_bar_at", "float-t", lambda: rd.alpha_bar_at(schedule(rd, "linear"), r.f64([1.0])))
    err("alpha_bar_at", "t=1000", lambda: rd.alpha_bar_at(schedule(rd, "linear"), r.i64([1000])))
    err("drop_condition", "p=1.5", rd.drop_condition, r.i64([0, 1]), 10, 1.5, generator=0)
    err("drop_condition", "null=float,int-labels", rd.drop_condition, r.i64([0, 1]), 0.5, 0.5,
        generator=0)
    err("drop_condition", "null-shape", rd.drop_condition, r.x("emb", (8, 4)),
        r.x("n3", (3,)), 0.5, generator=0)
    err("drop_condition", "generator=None", rd.drop_condition, r.i64([0, 1]), 10, 0.5,
        generator=None)
    err("snr", "alpha_bar_t=1.5", rd.snr, 1.5)
    err("snr", "alpha_bar_t=str", rd.snr, "0.5")
    err("min_snr_weight", "gamma=0", rd.min_snr_weight, 0.5, 0.0)
    err("min_snr_weight", "prediction_type=bad", rd.min_snr_weight, 0.5, 5.0, "bad")
    err("diffusion_loss", "weighting=bad", rd.diffusion_loss, x, x, e, 0.5, weighting="bad")
    err("diffusion_loss", "reduction=sum", rd.diffusion_loss, x, x, e, 0.5, reduction="sum")
    # 0.1 checks ᾱ here only where it is used (v-prediction, min-SNR), not for plain ε
    for pt, w in [("epsilon", "none"), ("v_prediction", "none"), ("epsilon", "min_snr")]:
        err("diffusion_loss", f"alpha_bar_t=-0.1,{pt},{w}", rd.diffusion_loss, x, x, e, -0.1,
            pt, weighting=w)
    err("label_log_prob", "labels-out-of-range", rd.label_log_prob, r.x("lg", (2, 3)),
        r.i64([0, 3]))
    err("label_log_prob", "float-labels", rd.label_log_prob, r.x("lg", (2, 3)), r.f64([0.0, 1.0]))
    err("label_log_prob", "1-D logits", rd.label_log_prob, r.x("lg", (3,)), r.i64([0]))
    err("cross_entropy", "reduction=sum", rd.cross_entropy, r.x("lg", (2, 3)), r.i64([0, 1]),
        reduction="sum")
    err("sinusoidal_embedding", "dim=3", rd.sinusoidal_embedding, r.f64([1.0]), 3)
    err("sinusoidal_embedding", "2-D", rd.sinusoidal_embedding, r.f64([[1.0]]), 4)
    err("sinusoidal_embedding", "max_period=0", rd.sinusoidal_embedding, r.f64([1.0]), 4,
        max_period=0.0)
    err("sample_guidance_scales", "generator=None", rd.sample_guidance_scales, x, 1.0, 2.0,
        generator=None)
    # oracle
    ox = r.x("x_oracle", ORACLE_SHAPE)
    gm = lambda: rd.oracle.demo_mixture()  # noqa: E731
    err("GaussianMixture.eps", "alpha_bar_t=1.5", lambda: gm().eps(ox, 1.5))
    err("GaussianMixture.log_prob_class", "y=3", lambda: gm().log_prob_class(ox, 0.5, 3))
    err("GaussianMixture.score", "x_t=(4,3)", lambda: gm().score(r.x("o3", (4, 3)), 0.5))
    err("GaussianMixture.x0_eps", "y=(3,)", lambda: gm().x0_eps(ox, 0.5, r.i64([0, 1, 2])))
    err("GaussianMixture.full", "asymmetric", rd.oracle.GaussianMixture.full,
        [1.0], [[0.0, 0.0]], [[[1.0, 0.2], [0.1, 1.0]]])
    err("GaussianMixture.diagonal", "negative-variance", rd.oracle.GaussianMixture.diagonal,
        [1.0], [[0.0, 0.0]], [[1.0, -1.0]])
    err("GaussianMixture.isotropic", "bad-weights", rd.oracle.GaussianMixture.isotropic,
        [0.0, 1.0], [[0.0], [1.0]], 1.0)
    err("get_backend", "name=jax-like", lambda: rd.backends.get_backend("no_such_backend"))
    err("get_backend", "object", lambda: rd.backends.get_backend(object()))
    # mixed libraries, dtypes, devices
    rt = by_name.get("torch-float32")
    rn32 = by_name.get("numpy-float32")
    rs = by_name.get("array_api_strict-float64")
    if rt is not None:
        xt = rt.x("x_t")
        err("cfg", "numpy+torch", rd.cfg, x, xt, 0.5, row="mixed")
        err("q_sample", "torch+numpy-alpha_bar", rd.q_sample, xt, r.f64(AB_ARR), rt.x("eps"),
            row="mixed")
        err("ddim_step", "torch-x+numpy-eps", rd.ddim_step, xt, e, 0.5, 0.8, row="mixed")
        err("ddim_step", "torch-x+numpy-x0_hat", rd.ddim_step, xt, rt.x("eps"), 0.5, 0.8,
            x0_hat=x, row="mixed")
        err("classifier_guided_mean", "torch+numpy-variance", rd.classifier_guided_mean, xt,
            r.f64(np.full((4, 1, 1), 0.1)), rt.x("grad"), 1.0, row="mixed")
        err("ddim_step", "float32+float64", rd.ddim_step, xt, rt.arr(data("eps"), "float64"),
            0.5, 0.8, row=rt)
        err("ddpm_step", "noise-float16", rd.ddpm_step, xt, rt.x("eps"), 0.5, 0.8,
            rt.arr(data("noise"), "float16"), row=rt)
        err("sample", "torch-x_T,numpy-model", lambda: rd.sample(
            lambda v, t, cond: np.zeros(tuple(v.shape)), rt.x("x_T", SAMPLE_SHAPE),
            schedule(rd, "linear"), num_inference_steps=3), row="mixed")
        err("classifier_gradient", "grad-float64", rd.classifier_gradient, lambda v: v, xt,
            grad_log_prob=lambda v: v.double(), row=rt)
    if rs is not None:
        err("cfg", "numpy+array_api_strict", rd.cfg, x, rs.x("eps"), 0.5, row="mixed")
        err("classifier_gradient", "no-autograd", rd.classifier_gradient,
            lambda v: v, rs.x("x_t"), row=rs)
        err("q_sample", "fake-device-alpha_bar", lambda: rd.q_sample(
            rs.x("x0"), _strict_on_device(rs.f64(AB_ARR), "device1"), rs.x("eps")), row=rs)
    if rn32 is not None:
        err("cfg", "float64+float32", rd.cfg, x, rn32.x("eps"), 0.5)
        err("guidance_rescale", "float64+float32", rd.guidance_rescale, x, rn32.x("eps"), 0.7)


# ---- child: build, run, pickle --------------------------------------------------------------

def build_corpus(api: Api, quick: bool) -> Corpus:
    c = Corpus(api, quick)
    rows = c.rows(QUICK_ROWS if quick else ALL_ROWS)
    sample_rows = c.rows(QUICK_SAMPLE_ROWS if quick else SAMPLE_ROWS)
    extra_rows = [] if quick else c.rows(EXTRA_SAMPLE_ROWS)
    corpus_guidance(c, rows)
    corpus_forward(c, rows)
    corpus_steps(c, rows)
    corpus_schedules(c, quick)
    corpus_training(c, rows)
    corpus_sampling(c, sample_rows, extra_rows, quick)
    corpus_random(c, rows, quick)
    corpus_oracle(c, rows, quick)
    corpus_backends(c)
    corpus_errors(c, rows)
    return c


def _inside(path: str, tree: str) -> bool:
    path, tree = os.path.realpath(path), os.path.realpath(tree)
    return os.path.commonpath([path, tree]) == tree


def child_main(tree: str, out: str, quick: bool) -> int:
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != here]  # never import tests/
    import refdiff
    import refdiff.backends
    import refdiff.oracle

    for mod in (refdiff, refdiff.backends, refdiff.oracle):
        if not _inside(mod.__file__, tree):
            print(f"FATAL: {mod.__name__} was imported from {mod.__file__}, not from the tree "
                  f"{tree} (PYTHONPATH={os.environ.get('PYTHONPATH')!r})", file=sys.stderr)
            return 3
    version = str(refdiff.__version__)
    legacy = version.startswith("0.1")
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    warnings.simplefilter("ignore")
    api = Api(refdiff, "", legacy)
    t0 = time.perf_counter()
    corpus = build_corpus(api, quick)
    results: dict[str, dict] = {}
    for cid, (fn, args, kw) in corpus.cases.items():
        try:
            value = fn(*[_fresh(a) for a in args], **{k: _fresh(v) for k, v in kw.items()})
            results[cid] = encode(value)
        except Exception as exc:  # noqa: BLE001 (every exception is a recorded result)
            results[cid] = {"kind": "error", "type": type(exc).__name__, "message": str(exc)}
    elapsed = time.perf_counter() - t0
    stray = sorted(name for name, m in sys.modules.items()
                   if name.split(".")[0] == "refdiff" and getattr(m, "__file__", None)
                   and not _inside(m.__file__, tree))
    if stray:
        print(f"FATAL: refdiff modules imported from outside {tree}: {stray}", file=sys.stderr)
        return 3
    all_names = [("VARIANCE_TYPES" if legacy and n == "VARIANCES" else n)
                 for n in getattr(refdiff, "__all__", [])]
    used = {cid.split("[")[0].split(":")[-1].split(".")[0] for cid in corpus.cases}
    used |= {"PREDICTION_TYPES", "SPACINGS", "VARIANCE_TYPES", "Guidance"}  # constants, in sample
    uncovered = sorted(set(all_names) - used)
    meta = {"version": version, "legacy_translation": legacy, "file": refdiff.__file__,
            "skipped_rows": corpus.skipped_rows, "elapsed_s": elapsed, "all": sorted(all_names),
            "uncovered": uncovered,
            "python": sys.version.split()[0], "numpy": np.__version__,
            "torch": getattr(sys.modules.get("torch"), "__version__", None)}
    with open(out, "wb") as f:
        pickle.dump(results, f, protocol=pickle.HIGHEST_PROTOCOL)
    with open(out + ".meta", "wb") as f:
        pickle.dump(meta, f)
    print(f"{tree}: refdiff {version}{' (0.1 names)' if legacy else ''}, {len(results)} cases "
          f"in {elapsed:.1f} s", file=sys.stderr)
    return 0


# ---- parent: run both, compare, report ------------------------------------------------------

def run_children(trees: dict[str, str], tmp: str, quick: bool) -> dict[str, tuple[dict, dict]]:
    procs = {}
    for side, tree in trees.items():
        out = os.path.join(tmp, f"{side}.pkl")
        env = dict(os.environ, PYTHONPATH=tree)
        cmd = [sys.executable, os.path.realpath(__file__), "--child", "--tree", tree, "--out", out]
        if quick:
            cmd.append("--quick")
        log = open(os.path.join(tmp, f"{side}.log"), "w+")
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
        procs[side] = (proc, log, out)
    loaded, failed = {}, []
    for side, (proc, log, out) in procs.items():
        rc = proc.wait()
        log.seek(0)
        text = log.read()
        log.close()
        if rc != 0 or not os.path.exists(out):
            failed.append(f"--- {side} child ({trees[side]}) failed with status {rc}:\n{text}")
            continue
        sys.stdout.write(f"{side}: {text.strip()}\n")
        with open(out, "rb") as f:
            results = pickle.load(f)
        with open(out + ".meta", "rb") as f:
            meta = pickle.load(f)
        loaded[side] = (results, meta)
    if failed:
        raise RuntimeError("\n".join(failed))
    return loaded


# Cases whose result changes on purpose between 0.1 and 0.2 (each listed in CHANGELOG.md):
# reported, not failed.
INTENDED = {
    "error:diffusion_loss[numpy-float64|alpha_bar_t=-0.1,epsilon,none]":
        "0.2 validates alpha_bar_t even where the epsilon target does not use it",
    "error:inference_timesteps[numpy-float64|leading,offset=0.5]":
        "a non-int offset is a TypeError (was a ValueError)",
}
# Families of cases changed on purpose (regex on the case id -> reason, in CHANGELOG.md).
# Compare the first commit of 0.2 structure alone with INTENDED only: every other case was
# bit-identical there (the note on that change gives the count).
INTENDED_PATTERNS = [
    (r"^(random:)?(sample|ddim_step|ddpm_step|ddpm_mean_variance|ddim_inversion_step|"
     r"ddim_invert)\[", "precision rule: the x̂_0 term as (c/√ᾱ_t)·(x_t − √(1−ᾱ_t)·ε̂), "
     "no x̂_0 intermediate (rounding-level change)"),
    (r"guided_diffusion_linear.*T=(1|2|10)\b", "T < 20 refused (beta_end would exceed 1)"),
    (r"^GaussianMixture\.\w+\[torch-(float16|bfloat16)", "oracle computes float16/bfloat16 "
     "in float32 (no overflow)"),
]


def _intended(cid: str) -> str | None:
    if cid in INTENDED:
        return INTENDED[cid]
    return next((why for pattern, why in INTENDED_PATTERNS if re.search(pattern, cid)), None)


def report(old: dict, new: dict, old_meta: dict, new_meta: dict, verbose: bool) -> int:
    ids = sorted(set(old) | set(new))
    intended = []
    missing = [(cid, "old" if cid not in old else "new") for cid in ids
               if cid not in old or cid not in new]
    counts = {IDENTICAL: 0, ULP: 0, DIFFERENT: 0}
    ulp_cases, diff_cases, msg_changed, both_raised = [], [], [], 0
    for cid in ids:
        if cid not in old or cid not in new:
            continue
        a, b = old[cid], new[cid]
        cat, summary = compare(a, b)
        if cat == DIFFERENT and _intended(cid):
            intended.append((cid, _intended(cid), summary))
            continue
        counts[cat] += 1
        if cat == ULP:
            ulp_cases.append((cid, summary))
        elif cat == DIFFERENT:
            diff_cases.append((cid, summary))
        if a["kind"] == "error" and b["kind"] == "error" and a["type"] == b["type"]:
            both_raised += 1
            if a["message"] != b["message"]:
                msg_changed.append((cid, a["type"], a["message"], b["message"]))
    for side, meta in (("old", old_meta), ("new", new_meta)):
        if meta["skipped_rows"]:
            print(f"note: {side} skipped rows (library missing): {', '.join(meta['skipped_rows'])}")
    for side, meta in (("old", old_meta), ("new", new_meta)):
        if meta.get("uncovered"):
            print(f"note: public names of the {side} tree that no case calls: "
                  f"{', '.join(meta['uncovered'])}")
    extra_new = sorted(set(new_meta["all"]) - set(old_meta["all"]))
    extra_old = sorted(set(old_meta["all"]) - set(new_meta["all"]))
    if extra_new or extra_old:
        print(f"note (informational): __all__ (in 0.2 names) only in old: {extra_old or '-'}; "
              f"only in new: {extra_new or '-'}")
    if ulp_cases:
        print(f"\nwithin 1 ulp ({len(ulp_cases)}):")
        for cid, summary in ulp_cases:
            print(f"  {cid}: {summary}")
    if diff_cases:
        print(f"\nDIFFERENT ({len(diff_cases)}):")
        for cid, summary in diff_cases:
            print(f"  {cid}: {summary}")
    if intended:
        reasons: dict[str, int] = {}
        for cid, why, summary in intended:
            reasons[why] = reasons.get(why, 0) + 1
            if verbose:
                print(f"  {cid}: {why} ({summary})")
        print(f"\nchanged on purpose ({len(intended)}, see CHANGELOG.md):")
        for why, k in reasons.items():
            print(f"  {k:5d}  {why}")
    if missing:
        print(f"\nMISSING ({len(missing)}):")
        for cid, side in missing:
            print(f"  {cid}: no result on the {'new' if side == 'new' else 'old'} side")
    print(f"\nerror messages changed in {len(msg_changed)} of {both_raised} cases where both "
          f"sides raised the same exception type (not a failure)")
    for cid, etype, m_old, m_new in (msg_changed if verbose else msg_changed[:5]):
        print(f"  {cid} ({etype}):\n    old: {m_old[:200]}\n    new: {m_new[:200]}")
    if len(msg_changed) > 5 and not verbose:
        print(f"  ... {len(msg_changed) - 5} more (--verbose lists them all)")
    n = sum(counts.values())
    tail = f", {len(missing)} missing" if missing else ""
    print(f"compared {n + len(intended)} cases: {counts[IDENTICAL]} identical, {counts[ULP]} "
          f"within 1 ulp (listed), {len(intended)} changed on purpose, {counts[DIFFERENT]} "
          f"different{tail}")
    return 1 if (counts[DIFFERENT] or missing) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", help="the reference refdiff tree (a directory holding refdiff/)")
    p.add_argument("--new", help="the tree under test")
    p.add_argument("--quick", action="store_true", help="a smaller corpus (under 20 s)")
    p.add_argument("--verbose", action="store_true", help="list every changed error message")
    p.add_argument("--keep", metavar="DIR", help="write the pickles to DIR and keep them")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.tree, args.out, args.quick)
    if not args.old or not args.new:
        p.error("--old and --new are required")
    trees = {"old": os.path.realpath(args.old), "new": os.path.realpath(args.new)}
    for side, tree in trees.items():
        if not os.path.isfile(os.path.join(tree, "refdiff", "__init__.py")):
            p.error(f"--{side} {tree} has no refdiff/__init__.py")
    t0 = time.perf_counter()
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        tmp_ctx = None
        tmp = os.path.realpath(args.keep)
    else:
        tmp_ctx = tempfile.TemporaryDirectory(prefix="refdiff_compare_")
        tmp = tmp_ctx.name
    try:
        try:
            loaded = run_children(trees, tmp, args.quick)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            print("FAILED: a child did not produce results", file=sys.stderr)
            return 2
        (old, old_meta), (new, new_meta) = loaded["old"], loaded["new"]
        print(f"old: refdiff {old_meta['version']} from {old_meta['file']}")
        print(f"new: refdiff {new_meta['version']} from {new_meta['file']}")
        status = report(old, new, old_meta, new_meta, args.verbose)
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    print(f"total time {time.perf_counter() - t0:.1f} s{' (--quick)' if args.quick else ''}")
    return status


if __name__ == "__main__":
    sys.exit(main())
