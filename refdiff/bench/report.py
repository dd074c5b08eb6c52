"""BENCHMARKS.md from the raw results of :func:`refdiff.bench.run`, and the target verdicts."""

from __future__ import annotations

from typing import Any

TARGET_SHAPE = [16, 4, 64, 64]
NOISE = 0.05  # a ratio within 5% of 1 is a tie on this kind of machine, not a win
TARGET_IDS = ("overhead_vs_hand", "faster_than_diffusers", "compiled_floor_cpu",
              "compiled_floor_gpu", "tiny_overhead_numpy")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _shape(s) -> str:
    return "(" + ",".join(map(str, s)) + ")"


def _rows(res: dict, **match) -> list[dict]:
    return [r for r in res["ops"] if all(r.get(k) == v for k, v in match.items())]


def _worst_single(res: dict) -> dict:
    """Worst refdiff/hand − 1 (in %) per backend at the target shape, single operations."""
    out: dict = {}
    for r in _rows(res, impl="refdiff", shape=TARGET_SHAPE):
        if r["op"] != "loop50" and r.get("vs_hand") is not None:
            key = f"{r['backend']} {r['dtype']}"
            out[key] = max(out.get(key, -100.0), (r["vs_hand"] - 1) * 100)
    return out


_TINY = {"q_sample": ["q_sample"], "cfg": ["cfg"], "guided_ddim": ["cfg", "ddim_step"],
         "ddpm_step": ["ddpm_step"], "loop50": ["sample (10 DDIM steps, CFG)"]}


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
    """Each target of the issue with the measured value, met / not met, and the reason."""
    out = []
    # 1. refdiff within 10% of the hand-written expression at (16,4,64,64), every backend
    worst = None
    for r in _rows(res, impl="refdiff", shape=TARGET_SHAPE):
        if r.get("vs_hand") is None:
            continue
        if worst is None or r["vs_hand"] > worst["vs_hand"]:
            worst = r
    if worst is None:
        out.append(dict(id="overhead_vs_hand", target="refdiff ≤ 10% over the hand-written "
                        "expression at (16,4,64,64), every backend", value="not measured",
                        met=None, reason="shape not in this run (--quick)"))
    else:
        pct = (worst["vs_hand"] - 1) * 100
        per_backend = {}
        for r in _rows(res, impl="refdiff", shape=TARGET_SHAPE):
            key = f"{r['backend']} {r['dtype']}"
            per_backend[key] = max(per_backend.get(key, 0.0), (r["vs_hand"] - 1) * 100)
        extra_us = (worst["ms"] - worst["ms"] / worst["vs_hand"]) * 1e3
        per = f"{extra_us / 50:.0f} µs per step" if worst["op"] == "loop50" else \
            f"{extra_us:.0f} µs per call"
        biggest = max(res["shapes"], key=lambda sh: sh[0] * sh[-1])
        big = [abs(r["vs_hand"] - 1) * 100 for r in _rows(res, impl="refdiff", shape=biggest)]
        fixed = _fixed_cost_us(res, worst)
        if fixed is None or extra_us <= 2 * fixed * (50 if worst["op"] == "loop50" else 1):
            cause = ("refdiff's per-call argument checks (library, device, dtype, shape, ᾱ "
                     "range; see the tiny-array table), which arrays of 1–2 MiB (0.1–0.3 ms "
                     "per operation) do not hide; the element-wise work is the same")
        else:
            cause = (f"more than the ~{fixed:.0f} µs of argument checks measured on tiny "
                     f"arrays{' per step' if worst['op'] == 'loop50' else ''}; the element-wise "
                     "work is the same, so the rest is this machine's run-to-run noise "
                     f"(spread of this row {worst['spread']:.0%})")
        out.append(dict(
            id="overhead_vs_hand", met=pct <= 10,
            target="refdiff ≤ 10% over the hand-written expression at (16,4,64,64), every backend",
            value=f"worst {pct:+.0f}% ({worst['op']}, {worst['backend']} {worst['dtype']}); "
                  "worst per backend: " + ", ".join(f"{k} {v:+.0f}%"
                                                    for k, v in per_backend.items())
                  + "; single operations only (no loop): " + ", ".join(
                      f"{k} {v:+.0f}%" for k, v in _worst_single(res).items()),
            reason=("within 10% on every backend" if pct <= 10 else
                    f"the extra is {per}: {cause}"
                    + (f" (at {_shape(biggest)} every operation is within "
                       f"{max(big):.0f}% of the hand-written one)" if big else ""))))
    # 2. guided DDIM faster than diffusers at every shape, torch CPU
    cmp = []
    for r in _rows(res, impl="refdiff", op="guided_ddim", backend="torch-cpu"):
        d = [x for x in _rows(res, impl="diffusers", op="guided_ddim", backend="torch-cpu")
             if x["shape"] == r["shape"]]
        if d:
            cmp.append((r["shape"], d[0]["ms"] / r["ms"]))
    if not cmp:
        out.append(dict(id="faster_than_diffusers", met=None, value="not measured",
                        target="refdiff guided DDIM faster than diffusers (DDIMScheduler.step "
                               "+ hand-written CFG) at every shape, torch CPU",
                        reason="diffusers not installed or torch missing"))
    else:
        # "faster" must beat the run-to-run noise (medians move by ~5–10% between runs)
        met = all(x > 1 + NOISE for _, x in cmp)
        slow = [f"{_shape(sh)} ({x:.2f}×)" for sh, x in cmp if x <= 1 + NOISE]
        out.append(dict(
            id="faster_than_diffusers", met=met,
            target="refdiff guided DDIM faster than diffusers (DDIMScheduler.step + "
                   "hand-written CFG) at every shape, torch CPU",
            value=", ".join(f"{_shape(sh)}: diffusers/refdiff = {x:.2f}×" for sh, x in cmp),
            reason=("refdiff is faster at every shape" if met else
                    f"not faster beyond the {NOISE:.0%} run-to-run noise at "
                    f"{', '.join(slow)}: there both run the same nine "
                    "element-wise passes over memory (CFG, then DDIM Eq. 12 through x̂_0), so "
                    "the time is the memory traffic and the two tie within the run's noise; "
                    "refdiff wins where per-call cost matters (small shapes) and on the DDPM "
                    "step (see the tables)")))
    # 3/4. compiled guided DDIM vs the memory-traffic floor
    for dev, bound, tid in (("cpu", 1.5, "compiled_floor_cpu"), ("cuda", 1.3, "compiled_floor_gpu")):
        rows = _rows(res, impl="compiled", op="guided_ddim", backend=f"torch-{dev}")
        tgt = f"compiled guided DDIM step within {bound}× of the memory-traffic floor on " \
              f"{'CPU' if dev == 'cpu' else 'GPU'}"
        if not rows:
            reason = ("not measured (no GPU lent to this task)" if dev == "cuda" else
                      "compiled path not run (--quick or --no-compile)")
            out.append(dict(id=tid, target=tgt, value="not measured", met=None, reason=reason))
            continue
        ratios = [(r["shape"], r["x_floor"]) for r in rows]
        met = all(x <= bound for _, x in ratios)
        bad = [r for r in rows if r["x_floor"] > bound]
        reason = "within the bound at every shape"
        if bad:
            reason = "not met at " + ", ".join(
                f"{_shape(r['shape'])} ({r['ms'] * 1e3:.0f} µs per call against a "
                f"{r['floor_ms'] * 1e3:.0f} µs floor)" for r in bad) + (
                ": the fixed cost of a compiled call (TorchDynamo's guard checks and the "
                "Python call) dominates a floor of a few µs")
            if len(bad) < len(rows):
                reason += "; at the larger shapes the fused kernel is at or below the floor " \
                          "(arrays that fit in the caches beat the DRAM copy rate)"
        out.append(dict(
            id=tid, target=tgt, met=met,
            value=", ".join(f"{_shape(sh)}: {x:.2f}×" for sh, x in ratios), reason=reason))
    # 5. tiny-array per-call overhead of the step functions on NumPy < 20 µs
    steps = [r for r in res.get("overhead", []) if r["library"] == "numpy" and r["step_function"]]
    if steps:
        worst = max(steps, key=lambda r: r["us"])
        met = worst["us"] < 20
        out.append(dict(
            id="tiny_overhead_numpy", met=met,
            target="per-call overhead under ~20 µs for the step functions on NumPy, shape (2, 3)",
            value=f"worst {worst['us']:.1f} µs ({worst['function']}); " + ", ".join(
                f"{r['function']} {r['us']:.1f}" for r in steps),
            reason=("every step function is under 20 µs" if met else
                    f"{worst['function']} validates two ᾱ values, derives x̂_0 and the "
                    "posterior coefficients through separate checked calls")))
    return out


def _verdict(t: dict) -> str:
    return "not measured" if t["met"] is None else ("**met**" if t["met"] else "**not met**")


def markdown(res: dict) -> str:
    m = res["machine"]
    L = ["# Benchmarks", "",
         f"Produced by `{res['command']}` (refdiff commit `{m['commit']}`) on "
         f"{res['date']}; the whole run took {res['wall_s']:.0f} s. Do not edit by hand: rerun "
         "the command.", "",
         f"- Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}"
         f"{'; GPU: ' + m['gpu'] if m.get('gpu') else '; no GPU'}.",
         f"- Versions: Python {m['python']}, NumPy {m['numpy']}, torch {m.get('torch', '—')}, "
         f"diffusers {m.get('diffusers', '—')}, array-api-compat {m['array_api_compat']}.",
         f"- Shapes {', '.join(_shape(s) for s in res['shapes'])}; dtypes float32 on every "
         "backend and float64 on NumPy; s = 7.5, ᾱ_t = 0.3, ᾱ_prev = 0.55, DDIM η = 0.",
         "- Method: warm-up, then interleaved rounds (every implementation of one operation "
         "timed once per round, in rotated order), synchronising before each clock read; "
         "median time per call over the rounds, spread = interquartile range / median. "
         "The machine is shared and small (other processes were running): single "
         "numbers can move by 10–20%; compare within a table, not across runs.",
         f"- Settings: torch intra-op threads = {m.get('torch_threads', '—')} (NumPy's "
         "element-wise loops are single-threaded too); glibc told to keep freed arrays on "
         "the heap (`mallopt`; otherwise each large temporary is mmap'd and page-faulted "
         "anew, and timings depend on allocation history): "
         f"{'yes' if res.get('stable_allocator') else 'no'}.",
         "- Floor = bytes that must be read and written once ÷ this machine's measured copy "
         "bandwidth; GB/s = those bytes ÷ the measured time (an effective rate).", ""]
    if not res["cuda"]:
        L += ["**CUDA rows: not measured (no GPU lent to this task).** The harness runs them "
              "(eager and compiled, with `torch.cuda.synchronize` before each clock read and "
              "`torch.cuda.max_memory_allocated` for memory) whenever "
              "`torch.cuda.is_available()`.", ""]
    L += ["## Targets", "", "| target | measured | verdict | reason |", "| --- | --- | --- | --- |"]
    for t in res["targets"]:
        L.append(f"| {t['target']} | {t['value']} | {_verdict(t)} | {t['reason']} |")
    mib = res.get("bandwidth_mib", 256)
    L += ["", "## Copy bandwidth", "",
          f"2 × bytes ÷ time of a {mib} MiB copy (`np.copyto`, `Tensor.copy_`). The floor "
          "uses the fastest copy measured on the CPU (both libraries share one memory "
          "system), so that a probe run in a noisy moment does not lower it.", "",
          "| probe | median GB/s | fastest GB/s |", "| --- | --- | --- |"]
    for k, v in res.get("bandwidth_probes", {}).items():
        L.append(f"| {k} | {v['median'] / 1e9:.2f} | {v['best'] / 1e9:.2f} |")
    L += ["", "Rate used for the floor: " + ", ".join(
        f"{k} {v / 1e9:.2f} GB/s" for k, v in res["bandwidth"].items()) + "."]
    L += ["", "## Operations", "",
          "Time per call (median), effective GB/s, ratio to the memory-traffic floor, and "
          "ratio to the hand-written expression of the same math (same backend, dtype and "
          "shape, timed in the same rounds). `hand` is plain NumPy / torch; `diffusers` is "
          "`DDIMScheduler.step` or `DDPMScheduler.step` with hand-written CFG (its DDPM step "
          "draws its own noise inside); `compiled` is `refdiff.compiled`.", ""]
    for shape in res["shapes"]:
        L += [f"### {_shape(shape)}", "",
              "| op | backend | dtype | impl | ms | spread | GB/s | × floor | × hand |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in res["ops"]:
            if r["shape"] != shape:
                continue
            L.append(f"| {r['op']} | {r['backend']} | {r['dtype']} | {r['impl']} | "
                     f"{_fmt(r['ms'])} | {r['spread']:.0%} | {_fmt(r['gbps'])} | "
                     f"{_fmt(r['x_floor'])} | {_fmt(r.get('vs_hand'))} |")
        L.append("")
    L += ["## Compile time and break-even", ""]
    cold = res.get("cold_compile") or {}
    if res.get("compile"):
        if "startup_s" in cold:
            L += [f"Cold start, measured in a fresh Python process with an empty Inductor "
                  f"cache: importing torch and refdiff {cold['import_s']:.1f} s, Inductor's "
                  f"start-up (first compilation of any function) {cold['startup_s']:.1f} s, "
                  "then each refdiff function as listed under *cold s*. *warm s* is the same "
                  "compilation in the benchmark process, where Inductor reuses kernels it has "
                  "built before; *new ᾱ s* is the recompilation that a new Python-float ᾱ "
                  "(or s) triggers in that process. Break-even = "
                  "compile time ÷ (eager − compiled time per call): the number of calls after "
                  "which compiling has paid for itself (torch CPU, float32).", ""]
        elif cold.get("error"):
            L += [f"Cold compilation could not be measured: {cold['error']}.", ""]
        L += ["| function | backend | shape | cold s | warm s | new ᾱ s | eager ms | "
              "compiled ms | break-even calls (cold) | (warm) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for c in res["compile"]:
            def be(v):
                return "never (not faster)" if v is None else f"{v:.0f}"
            L.append(f"| {c['op']} | {c.get('backend', 'torch-cpu')} | {_shape(c['shape'])} | {_fmt(c.get('cold_compile_s'))} | "
                     f"{c['compile_s']:.2f} | {_fmt(c.get('recompile_s'))} | "
                     f"{_fmt(c['eager_ms'])} | {_fmt(c['compiled_ms'])} "
                     f"| {be(c.get('break_even_cold'))} | {be(c['break_even'])} |")
        L += ["", "TorchDynamo specialises Python floats (refdiff's range checks branch on "
              "them): every new (s, ᾱ_t, ᾱ_prev) compiles again (*new ᾱ s*), so a 50-step "
              "schedule costs 50 compilations once per process, and TorchDynamo's "
              "recompile limit (8 per function by default) sends the later steps back to "
              "eager. The compiled path pays for a server that repeats one step many times "
              "at large shapes, not for one sampling run; the 50-step loop is therefore "
              "timed eager only.", ""]
    else:
        L += ["Not measured in this run (--quick or --no-compile).", ""]
    L += ["## Per-call overhead on tiny arrays (shape (2, 3))", "",
          "Every public function; µs per call (median). `hand` is the plain expression of "
          "the same step (the floor for any Python implementation).", "",
          "| function | NumPy float64 µs | hand | torch CPU float32 µs | hand |",
          "| --- | --- | --- | --- | --- |"]
    by = {}
    for r in res.get("overhead", []):
        by.setdefault(r["function"], {})[r["library"]] = r
    for name, d in by.items():
        n, t = d.get("numpy", {}), d.get("torch", {})
        L.append(f"| {name} | {_fmt(n.get('us'))} | {_fmt(n.get('hand_us'))} | "
                 f"{_fmt(t.get('us'))} | {_fmt(t.get('hand_us'))} |")
    if res.get("overhead_before"):
        L += ["", "Before the per-call work of this issue (same harness, same machine): " +
              ", ".join(f"{k} {v:.1f} µs" for k, v in res["overhead_before"].items()) + "."]
    L += ["", "## Scaling", "", f"![scaling]({res.get('plot_rel', 'docs/bench_scaling.png')})", "",
          "Guided DDIM step (refdiff, float32) against batch size (B, 4, 64, 64); peak memory "
          "above the live inputs (NumPy: tracemalloc; torch CPU has no resettable counter):", "",
          "| backend | batch | ms | one array MiB | peak MiB |", "| --- | --- | --- | --- | --- |"]
    for r in res["scaling"]["batch"]:
        L.append(f"| {r['library']} | {r['batch']} | {_fmt(r['ms'])} | {_fmt(r['array_mib'])} | "
                 f"{_fmt(r['peak_mib'])} |")
    L += ["", "The 50-step-style CFG DDIM loop against the number of steps, "
          f"shape {_shape(res['scaling']['steps'][0]['shape'])}: peak memory is flat without "
          "the trajectory and grows by one array per step with it.", "",
          "| backend | steps | ms | peak MiB | peak MiB with trajectory |",
          "| --- | --- | --- | --- | --- |"]
    steps = res["scaling"]["steps"]
    for r in steps:
        if r["trajectory"]:
            continue
        w = [x for x in steps if x["trajectory"] and x["library"] == r["library"]
             and x["steps"] == r["steps"]]
        L.append(f"| {r['library']} | {r['steps']} | {_fmt(r['ms'])} | {_fmt(r['peak_mib'])} | "
                 f"{_fmt(w[0]['peak_mib'] if w else None)} |")
    L.append("")
    return "\n".join(L)
