"""BENCHMARKS.md from the raw results of :func:`refdiff.bench.run`, and the target verdicts."""

from __future__ import annotations

from typing import Any

TARGET_SHAPE = [16, 4, 64, 64]
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
        out.append(dict(
            id="overhead_vs_hand", met=pct <= 10,
            target="refdiff ≤ 10% over the hand-written expression at (16,4,64,64), every backend",
            value=f"worst {pct:+.0f}% ({worst['op']}, {worst['backend']} {worst['dtype']})",
            reason=("within noise of the hand-written expression" if pct <= 10 else
                    "refdiff's two-sided exact lerp in cfg and its cast-late coefficient "
                    "handling cost extra passes over memory; per-call checks add µs on top")))
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
        met = all(x > 1 for _, x in cmp)
        out.append(dict(
            id="faster_than_diffusers", met=met,
            target="refdiff guided DDIM faster than diffusers (DDIMScheduler.step + "
                   "hand-written CFG) at every shape, torch CPU",
            value=", ".join(f"{_shape(s)}: diffusers/refdiff = {x:.2f}×" for s, x in cmp),
            reason=("refdiff is faster at every shape" if met else
                    "at large shapes both are memory-bound chains of the same element-wise "
                    "operations; the difference is within noise or favours diffusers' "
                    "fewer temporaries")))
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
        big = max(rows, key=lambda r: r["shape"][0] * r["shape"][-1])
        met = all(x <= bound for _, x in ratios)
        out.append(dict(
            id=tid, target=tgt, met=met,
            value=", ".join(f"{_shape(s)}: {x:.2f}×" for s, x in ratios),
            reason=("within the bound at every shape" if met else
                    f"met only where the arrays outgrow the caches "
                    f"(largest shape: {big['x_floor']:.2f}×); at small shapes the ~10–50 µs "
                    "fixed cost of a Python call and a compiled-graph dispatch dominates a "
                    "floor of a few µs, and arrays that fit in cache beat the DRAM copy rate"
                    if any(x <= bound for _, x in ratios) else
                    "above the bound at every shape measured")))
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
    L += ["", "## Copy bandwidth", "", f"| backend | GB/s (2 × bytes / time of a {res.get('bandwidth_mib', 256)} MiB copy) |",
          "| --- | --- |"]
    for k, v in res["bandwidth"].items():
        L.append(f"| {k} | {v / 1e9:.2f} |")
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
    if res.get("compile"):
        L += [f"First compilation in a fresh process (Inductor start-up, a trivial function): "
              f"{res['compile_warmup_s']:.1f} s. Then per function and shape (torch CPU, "
              "float32); break-even = compile time ÷ (eager − compiled time per call), the "
              "number of calls after which compiling has paid for itself.", "",
              "| function | shape | compile s | eager ms | compiled ms | break-even calls |",
              "| --- | --- | --- | --- | --- | --- |"]
        for c in res["compile"]:
            be = "never (not faster)" if c["break_even"] is None else f"{c['break_even']:.0f}"
            L.append(f"| {c['op']} | {_shape(c['shape'])} | {c['compile_s']:.2f} | "
                     f"{_fmt(c['eager_ms'])} | {_fmt(c['compiled_ms'])} | {be} |")
        L += ["", "TorchDynamo specialises Python floats: every new (s, ᾱ_t, ᾱ_prev) compiles "
              "again, so a 50-step schedule costs 50 compilations once per process (worth it "
              "for a server that repeats the schedule, not for one run). The 50-step loop "
              "is therefore timed eager only.", ""]
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
