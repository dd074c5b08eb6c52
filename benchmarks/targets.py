"""The benchmark targets: each one's measured value, verdict and reason.

:func:`targets` reads the raw results of :func:`benchmarks.run` and returns one verdict
per target, in the order of :data:`TARGET_IDS`; :mod:`benchmarks.report` writes them as
the first table of the report.
"""

from __future__ import annotations

TARGET_SHAPE = [16, 4, 64, 64]
NOISE = 0.05  # a ratio within 5% of 1 is a tie on this kind of machine, not a win
TARGET_IDS = ("overhead_vs_hand", "faster_than_diffusers", "compiled_floor_cpu",
              "compiled_floor_gpu", "tiny_overhead_numpy")
_OVERHEAD_TARGET = ("refdiff ≤ 10% over the hand-written expression at (16,4,64,64), "
                    "every backend")
_DIFFUSERS_TARGET = ("refdiff guided DDIM faster than diffusers (DDIMScheduler.step + "
                     "hand-written CFG) at every shape, torch CPU")
# (device, bound on × floor, target id) of the two compiled-path targets
_COMPILED_FLOORS = (("cpu", 1.5, "compiled_floor_cpu"), ("cuda", 1.3, "compiled_floor_gpu"))
# the tiny-array rows whose per-call checks one operation of the big tables pays
_TINY = {"q_sample": ["q_sample"], "cfg": ["cfg"], "guided_ddim": ["cfg", "ddim_step"],
         "ddpm_step": ["ddpm_step"], "loop50": ["sample (10 DDIM steps, CFG)"]}


def shape_text(s) -> str:
    """A shape as the report writes it: ``[16, 4, 64, 64]`` gives ``(16,4,64,64)``."""
    return "(" + ",".join(map(str, s)) + ")"


def _rows(res: dict, **match) -> list[dict]:
    """The rows of the operations tables whose fields equal ``match``."""
    return [r for r in res["ops"] if all(r.get(k) == v for k, v in match.items())]


def _worst_single(res: dict) -> dict:
    """Worst refdiff/hand − 1 (in %) per backend at the target shape, single operations."""
    out: dict = {}
    for r in _rows(res, impl="refdiff", shape=TARGET_SHAPE):
        if r["op"] != "loop50" and r.get("vs_hand") is not None:
            key = f"{r['backend']} {r['dtype']}"
            out[key] = max(out.get(key, -100.0), (r["vs_hand"] - 1) * 100)
    return out


def _fixed_cost_us(res: dict, row: dict) -> float | None:
    """Per-call (per step for the loop) cost of the checks, from the tiny-array table."""
    lib = "numpy" if row["backend"] == "numpy" else "torch"
    tiny = {r["function"]: r["us"] for r in res.get("overhead", []) if r["library"] == lib}
    names = _TINY.get(row["op"], [])
    if not names or any(n not in tiny for n in names):
        return None
    total = sum(tiny[n] for n in names)
    return total / 10 if row["op"] == "loop50" else total


def targets(res: dict) -> list[dict]:
    """Each benchmark target with the measured value, met / not met, and the reason.

    Parameters
    ----------
    res : dict
        Raw results of :func:`benchmarks.run` (``ops``, ``shapes``, ``overhead``).

    Returns
    -------
    list of dict
        One dict per target, in the order of :data:`TARGET_IDS` (the NumPy tiny-array
        target only when that table was measured), with keys ``id``, ``target``,
        ``value``, ``met`` (True, False or None for not measured) and ``reason``.
    """
    out = [_overhead_vs_hand(res), _faster_than_diffusers(res)]
    out += [_compiled_floor(res, device, bound, target_id)
            for device, bound, target_id in _COMPILED_FLOORS]
    tiny = _tiny_overhead_numpy(res)
    return out + ([tiny] if tiny is not None else [])


def _worst_vs_hand(res: dict) -> dict | None:
    """The refdiff row at the target shape furthest above its hand-written expression."""
    worst = None
    for r in _rows(res, impl="refdiff", shape=TARGET_SHAPE):
        if r.get("vs_hand") is None:
            continue
        if worst is None or r["vs_hand"] > worst["vs_hand"]:
            worst = r
    return worst


def _worst_per_backend(res: dict) -> dict:
    """Worst refdiff/hand − 1 (in %, at least 0) per backend at the target shape."""
    per_backend: dict = {}
    for r in _rows(res, impl="refdiff", shape=TARGET_SHAPE):
        key = f"{r['backend']} {r['dtype']}"
        per_backend[key] = max(per_backend.get(key, 0.0), (r["vs_hand"] - 1) * 100)
    return per_backend


def _overhead_cause(res: dict, worst: dict, extra_us: float) -> str:
    """Why ``worst`` is slower than the hand-written expression: checks, or noise."""
    fixed = _fixed_cost_us(res, worst)
    if fixed is None or extra_us <= 2 * fixed * (50 if worst["op"] == "loop50" else 1):
        return ("refdiff's per-call argument checks (library, device, dtype, shape, ᾱ "
                "range; see the tiny-array table), which arrays of 1–2 MiB (0.1–0.3 ms "
                "per operation) do not hide; the element-wise work is the same")
    return (f"more than the ~{fixed:.0f} µs of argument checks measured on tiny "
            f"arrays{' per step' if worst['op'] == 'loop50' else ''}; the element-wise "
            "work is the same, so the rest is this machine's run-to-run noise "
            f"(spread of this row {worst['spread']:.0%})")


def _overhead_reason(res: dict, worst: dict, pct: float) -> str:
    """The reason column of the overhead target, given its worst row."""
    extra_us = (worst["ms"] - worst["ms"] / worst["vs_hand"]) * 1e3
    per = f"{extra_us / 50:.0f} µs per step" if worst["op"] == "loop50" else \
        f"{extra_us:.0f} µs per call"
    biggest = max(res["shapes"], key=lambda sh: sh[0] * sh[-1])
    big = [abs(r["vs_hand"] - 1) * 100 for r in _rows(res, impl="refdiff", shape=biggest)]
    cause = _overhead_cause(res, worst, extra_us)
    if pct <= 10:
        return "within 10% on every backend"
    return (f"the extra is {per}: {cause}"
            + (f" (at {shape_text(biggest)} every operation is within "
               f"{max(big):.0f}% of the hand-written one)" if big else ""))


def _overhead_vs_hand(res: dict) -> dict:
    """Target 1: refdiff within 10% of the hand-written expression at (16,4,64,64)."""
    worst = _worst_vs_hand(res)
    if worst is None:
        return dict(id="overhead_vs_hand", target=_OVERHEAD_TARGET, value="not measured",
                    met=None, reason="shape not in this run (--quick)")
    pct = (worst["vs_hand"] - 1) * 100
    per_backend = _worst_per_backend(res)
    reason = _overhead_reason(res, worst, pct)
    return dict(
        id="overhead_vs_hand", met=pct <= 10, target=_OVERHEAD_TARGET,
        value=f"worst {pct:+.0f}% ({worst['op']}, {worst['backend']} {worst['dtype']}); "
              "worst per backend: " + ", ".join(f"{k} {v:+.0f}%"
                                                for k, v in per_backend.items())
              + "; single operations only (no loop): " + ", ".join(
                  f"{k} {v:+.0f}%" for k, v in _worst_single(res).items()),
        reason=reason)


def _faster_than_diffusers(res: dict) -> dict:
    """Target 2: guided DDIM faster than diffusers at every shape, torch CPU."""
    cmp = []
    for r in _rows(res, impl="refdiff", op="guided_ddim", backend="torch-cpu"):
        d = [x for x in _rows(res, impl="diffusers", op="guided_ddim", backend="torch-cpu")
             if x["shape"] == r["shape"]]
        if d:
            cmp.append((r["shape"], d[0]["ms"] / r["ms"]))
    if not cmp:
        return dict(id="faster_than_diffusers", met=None, value="not measured",
                    target=_DIFFUSERS_TARGET,
                    reason="diffusers not installed or torch missing")
    # "faster" must beat the run-to-run noise (medians move by ~5–10% between runs)
    met = all(x > 1 + NOISE for _, x in cmp)
    slow = [f"{shape_text(sh)} ({x:.2f}×)" for sh, x in cmp if x <= 1 + NOISE]
    return dict(
        id="faster_than_diffusers", met=met, target=_DIFFUSERS_TARGET,
        value=", ".join(f"{shape_text(sh)}: diffusers/refdiff = {x:.2f}×" for sh, x in cmp),
        reason=("refdiff is faster at every shape" if met else
                f"not faster beyond the {NOISE:.0%} run-to-run noise at "
                f"{', '.join(slow)}: there both run the same nine "
                "element-wise passes over memory (CFG, then DDIM Eq. 12 through x̂_0), so "
                "the time is the memory traffic and the two tie within the run's noise; "
                "refdiff wins where per-call cost matters (small shapes) and on the DDPM "
                "step (see the tables)"))


def _compiled_floor_reason(rows: list[dict], bound: float) -> str:
    """Where the compiled guided DDIM step exceeds ``bound`` × floor, and why."""
    bad = [r for r in rows if r["x_floor"] > bound]
    reason = "within the bound at every shape"
    if bad:
        reason = "not met at " + ", ".join(
            f"{shape_text(r['shape'])} ({r['ms'] * 1e3:.0f} µs per call against a "
            f"{r['floor_ms'] * 1e3:.0f} µs floor)" for r in bad) + (
            ": the fixed cost of a compiled call (TorchDynamo's guard checks and the "
            "Python call) dominates a floor of a few µs")
        if len(bad) < len(rows):
            reason += "; at the larger shapes the fused kernel is at or below the floor " \
                      "(arrays that fit in the caches beat the DRAM copy rate)"
    return reason


def _compiled_floor(res: dict, dev: str, bound: float, tid: str) -> dict:
    """Targets 3 and 4: compiled guided DDIM within ``bound`` × the memory-traffic floor."""
    rows = _rows(res, impl="compiled", op="guided_ddim", backend=f"torch-{dev}")
    tgt = f"compiled guided DDIM step within {bound}× of the memory-traffic floor on " \
          f"{'CPU' if dev == 'cpu' else 'GPU'}"
    if not rows:
        reason = ("not measured (no CUDA device used in this run)" if dev == "cuda" else
                  "compiled path not run (--quick or --no-compile)")
        return dict(id=tid, target=tgt, value="not measured", met=None, reason=reason)
    ratios = [(r["shape"], r["x_floor"]) for r in rows]
    met = all(x <= bound for _, x in ratios)
    reason = _compiled_floor_reason(rows, bound)
    return dict(
        id=tid, target=tgt, met=met,
        value=", ".join(f"{shape_text(sh)}: {x:.2f}×" for sh, x in ratios), reason=reason)


def _tiny_overhead_numpy(res: dict) -> dict | None:
    """Target 5: step functions under ~20 µs per call on NumPy tiny arrays (None: not run)."""
    steps = [r for r in res.get("overhead", []) if r["library"] == "numpy" and r["step_function"]]
    if not steps:
        return None
    worst = max(steps, key=lambda r: r["us"])
    met = worst["us"] < 20
    return dict(
        id="tiny_overhead_numpy", met=met,
        target="per-call overhead under ~20 µs for the step functions on NumPy, shape (2, 3)",
        value=f"worst {worst['us']:.1f} µs ({worst['function']}); " + ", ".join(
            f"{r['function']} {r['us']:.1f}" for r in steps),
        reason=("every step function is under 20 µs" if met else
                f"{worst['function']} validates two ᾱ values, derives x̂_0 and the "
                "posterior coefficients through separate checked calls"))
