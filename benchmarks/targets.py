"""The benchmark targets: each one's measured value, verdict and reason.

:func:`targets` reads the raw results of :func:`benchmarks.run` and returns one verdict
per target, in the order of :data:`TARGET_IDS`; :mod:`benchmarks.report` writes them as
the first table of the report.
"""

from __future__ import annotations

TARGET_SHAPE = [16, 4, 64, 64]
STEP_SHAPES = ([1, 4, 64, 64], [16, 4, 64, 64])  # the eager guided step against hand-written
LOOP_SHAPES = ([16, 4, 64, 64], [64, 4, 128, 128])  # the compiled loop against the floor
BIG_SHAPE = [64, 4, 128, 128]  # the fused step against diffusers
NOISE = 0.05  # a ratio within 5% of 1 is a tie on this kind of machine, not a win
TARGET_IDS = ("overhead_vs_hand", "guided_step_vs_hand", "fused_vs_diffusers",
              "compiled_loop_cpu", "jax_timed", "compiled_loop_gpu", "host_overhead_gpu",
              "tiny_overhead_numpy")
_OVERHEAD_TARGET = ("refdiff ≤ 10% over the hand-written expression at (16,4,64,64), "
                    "every backend")
STEP_BOUND, DIFFUSERS_SPEEDUP = 1.15, 2.0
# (device, bound on × floor) of the compiled-loop targets
LOOP_BOUNDS = {"cpu": 1.5, "cuda": 1.3}
# element-wise passes and array reads + writes of each eager guided DDIM step (derived in
# _fused_vs_diffusers' reason; fixed by the code of each implementation)
_PASSES = {"diffusers": (9, 22), "hand": (9, 22), "fused": (5, 12)}
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
    if row["backend"].startswith("jax"):
        return None  # jitted: the checks run once, at trace time
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
    out = [_overhead_vs_hand(res), _guided_step_vs_hand(res), _fused_vs_diffusers(res),
           _compiled_loop(res, "cpu"), _jax_timed(res), _compiled_loop(res, "cuda"),
           _host_overhead_gpu(res)]
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


def _ratio_text(pairs) -> str:
    return ", ".join(f"{shape_text(sh)} {x:.2f}×" for sh, x in pairs)


def _guided_step_vs_hand(res: dict) -> dict:
    """Target (a): the eager guided DDIM step ≤ 1.15× the hand-written one, torch CPU."""
    tgt = (f"eager guided DDIM step, torch CPU float32: refdiff.guided_ddim_step (the fused "
           f"fast path) ≤ {STEP_BOUND}× the hand-written expression at "
           f"{' and '.join(map(shape_text, STEP_SHAPES))} (the spec form "
           "ddim_step(cfg(...)) reported beside it)")
    got = {impl: [(sh, r[0]["vs_hand"]) for sh in STEP_SHAPES
                  if (r := _rows(res, impl=impl, op="guided_ddim", backend="torch-cpu",
                                 dtype="float32", shape=sh))]
           for impl in ("fused", "refdiff")}
    if len(got["fused"]) < len(STEP_SHAPES):
        return dict(id="guided_step_vs_hand", target=tgt, value="not measured", met=None,
                    reason="the target shapes are not in this run (--quick or --shapes)")
    met = all(x <= STEP_BOUND for _, x in got["fused"])
    value = (f"fused/hand: {_ratio_text(got['fused'])}; spec form/hand: "
             f"{_ratio_text(got['refdiff'])}")
    if met:
        (hp, hm), (fp, fm) = _PASSES["hand"], _PASSES["fused"]
        reason = (f"the fused step is within {STEP_BOUND}× at both shapes: it makes {fp} "
                  f"element-wise passes ({fm} array reads and writes) where the hand-written "
                  f"CFG + DDIM makes {hp} ({hm}), which pays for its argument checks")
    else:
        slow = [f"{shape_text(sh)} ({x:.2f}×)" for sh, x in got["fused"] if x > STEP_BOUND]
        reason = (f"above {STEP_BOUND}× at {', '.join(slow)}: at small arrays refdiff's "
                  "per-call checks (one library, device, dtype, shape, ᾱ range; see the "
                  "tiny-array table) are not hidden by the element-wise work")
    return dict(id="guided_step_vs_hand", target=tgt, value=value, met=met, reason=reason)


def _fused_vs_diffusers(res: dict) -> dict:
    """Target (b): the fused step ≥ 2× faster than diffusers at (64,4,128,128), torch CPU."""
    tgt = (f"refdiff.guided_ddim_step ≥ {DIFFUSERS_SPEEDUP:.0f}× faster than diffusers' "
           f"DDIMScheduler.step + hand-written CFG at {shape_text(BIG_SHAPE)}, torch CPU "
           "float32")
    f = _rows(res, impl="fused", op="guided_ddim", backend="torch-cpu", shape=BIG_SHAPE)
    d = _rows(res, impl="diffusers", op="guided_ddim", backend="torch-cpu", shape=BIG_SHAPE)
    if not (f and d):
        return dict(id="fused_vs_diffusers", target=tgt, value="not measured", met=None,
                    reason=("no diffusers row (not installed or --no-diffusers)" if f else
                            f"no fused row at {shape_text(BIG_SHAPE)} in this run "
                            "(--quick or --shapes)"))
    speedup = d[0]["ms"] / f[0]["ms"]
    others = [f"{shape_text(r['shape'])} {x['ms'] / r['ms']:.2f}×"
              for r in _rows(res, impl="fused", op="guided_ddim", backend="torch-cpu")
              for x in _rows(res, impl="diffusers", op="guided_ddim", backend="torch-cpu",
                             shape=r["shape"]) if r["shape"] != BIG_SHAPE]
    met = speedup >= DIFFUSERS_SPEEDUP
    (dp, dm), (fp, fm) = _PASSES["diffusers"], _PASSES["fused"]
    traffic = (f"diffusers makes {dp} element-wise passes ({dm} array reads and writes: CFG "
               f"3 passes, x̂_0 3, the direction 1, x_prev 2), the fused step {fp} ({fm}); "
               f"at this size every pass goes to memory, so the eager speed-up is bounded "
               f"by the traffic ratio, {dm / fm:.1f}×")
    loop = _rows(res, impl="compiled", op="loop50", backend="torch-cpu", shape=BIG_SHAPE)
    reason = (f"{speedup:.2f}× ≥ {DIFFUSERS_SPEEDUP:.0f}×" if met else
              f"{speedup:.2f}×: {traffic}; 2× needs fewer passes than one per term, i.e. "
              "one fused kernel" + (f" (the compiled loop's step: {loop[0]['x_floor']:.2f}× "
                                    "the floor)" if loop else ""))
    return dict(id="fused_vs_diffusers", target=tgt, met=met, reason=reason,
                value=f"diffusers/fused = {speedup:.2f}× at {shape_text(BIG_SHAPE)}"
                      + (f" (other shapes: {', '.join(others)})" if others else ""))


def _loop_info(res: dict, backend: str, shape) -> dict | None:
    rows = [r for r in res.get("loops", []) if r["backend"] == backend
            and r["shape"] == list(shape) and r.get("impl") == "compiled"]
    return rows[0] if rows else None


def _compiled_loop(res: dict, dev: str) -> dict:
    """Targets (c) and (e): the compiled loop, 0 recompilations, per step ≤ bound × floor."""
    bound, backend = LOOP_BOUNDS[dev], f"torch-{dev}"
    where = "CPU" if dev == "cpu" else "GPU (CUDA graphs)"
    tid = f"compiled_loop_{'cpu' if dev == 'cpu' else 'gpu'}"
    tgt = (f"compiled loop (DDIMLoop, Inductor) on {where}: 0 recompilations after step 1, "
           f"per step ≤ {bound}× the memory-traffic floor (read x_t, ε_u, ε_c, write x_prev; "
           f"trivial model) at {' and '.join(map(shape_text, LOOP_SHAPES))}")
    got = []
    for sh in LOOP_SHAPES:
        info = _loop_info(res, backend, sh)
        row = _rows(res, impl="compiled", op="loop50", backend=backend, shape=sh)
        if info is not None and row:
            got.append((sh, info, row[0]))
    if len(got) < len(LOOP_SHAPES):
        reason = ("not measured (no CUDA device used in this run; see python -m benchmarks "
                  "--gpu)" if dev == "cuda" else
                  "compiled loop not run at both shapes (--quick, --no-compile or --shapes)")
        return dict(id=tid, target=tgt, value="not measured", met=None, reason=reason)
    recompiles = [i["after_first_step"] + i["later_compilations"] for _, i, _ in got]
    value = "; ".join(
        f"{shape_text(sh)}: {r['ms'] * 1e3 / i['steps']:.0f} µs per step = "
        f"{r['x_floor']:.2f}× the floor, recompilations after step 1: {i['after_first_step']}"
        f" (later runs: {i['later_compilations']}), compile {i['compile_s']:.1f} s"
        for sh, i, r in got)
    slow = [(sh, r) for sh, _, r in got if r["x_floor"] > bound]
    met = not slow and not any(recompiles)
    if met:
        reason = (f"one compilation per shape, reused by every step and run; per step within "
                  f"{bound}× the floor")
    else:
        parts = []
        if any(recompiles):
            parts.append("the loop recompiled after step 1 (see the compiled-loop table)")
        if slow:
            parts.append("above the bound at " + ", ".join(
                f"{shape_text(sh)} ({r['ms'] * 1e3 / 50:.0f} µs per step against a "
                f"{r['floor_ms'] * 1e3 / 50:.0f} µs floor)" for sh, r in slow)
                + ": each step also pays the loop's Python, two model calls and "
                  "TorchDynamo's guard checks, which a floor of tens of µs does not hide")
        reason = "; ".join(parts)
    return dict(id=tid, target=tgt, value=value, met=met, reason=reason)


def _jax_timed(res: dict) -> dict:
    """Target (d), reported: the jitted JAX guided step and loop, timed next to torch."""
    tgt = ("JAX (CPU): jax.jit guided DDIM step (fused and composition, traced ᾱ and s) and "
           "the JAX loop (one jit of lax.scan) timed in the same run as torch (reported)")
    steps = _rows(res, backend="jax-cpu", op="guided_ddim")
    loops = _rows(res, backend="jax-cpu", op="loop50", impl="compiled")
    if not (steps and loops):
        return dict(id="jax_timed", target=tgt, value="not measured", met=None,
                    reason="JAX not installed, or --no-jax")
    shape = TARGET_SHAPE if _rows(res, backend="jax-cpu", shape=TARGET_SHAPE) else \
        steps[-1]["shape"]

    def ms(backend, op, impl):
        r = _rows(res, backend=backend, op=op, impl=impl, shape=shape, dtype="float32")
        return f"{r[0]['ms'] * 1e3:.0f}" if r else "—"

    loop = _rows(res, backend="jax-cpu", op="loop50", impl="compiled", shape=shape)[0]
    info = _loop_info(res, "jax-cpu", shape) or {}
    jax_us = {impl: ms("jax-cpu", "guided_ddim", impl) for impl in ("fused", "refdiff", "hand")}
    torch_us = {impl: ms("torch-cpu", "guided_ddim", impl) for impl in ("fused", "refdiff")}
    value = (f"at {shape_text(shape)}, µs per step: JAX jit fused {jax_us['fused']}, "
             f"composition {jax_us['refdiff']}, hand {jax_us['hand']}; torch eager fused "
             f"{torch_us['fused']}, spec form {torch_us['refdiff']}; JAX loop "
             f"{loop['ms'] * 1e3 / 50:.0f} µs per step ({loop['x_floor']:.2f}× the floor), "
             f"compile {info.get('compile_s', float('nan')):.1f} s")
    return dict(id="jax_timed", target=tgt, value=value, met=True,
                reason="reported target: met when measured (every shape in the tables)")


def _host_overhead_gpu(res: dict) -> dict:
    """Target (e), reported: the eager loop's host time per step on CUDA."""
    tgt = ("GPU: host time per step of the eager loop refdiff.sample (CFG DDIM, trivial "
           "model), measured before synchronising (reported)")
    rows = [r for r in res.get("host_overhead", []) if r["backend"] == "torch-cuda"]
    if not rows:
        return dict(id="host_overhead_gpu", target=tgt, value="not measured", met=None,
                    reason="not measured (no CUDA device used in this run; see python -m "
                           "benchmarks --gpu)")
    value = ", ".join(f"{shape_text(r['shape'])}: host {r['host_us_per_step']:.0f} µs, "
                      f"synchronised {r['us_per_step']:.0f} µs per step" for r in rows)
    return dict(id="host_overhead_gpu", target=tgt, value=value, met=True,
                reason="reported target: met when measured; where host ≈ synchronised, "
                       "the loop is bound by the host, not by the device")

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
