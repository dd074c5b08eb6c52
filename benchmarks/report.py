"""The markdown report (BENCHMARKS.md) from the raw results of :func:`benchmarks.run`.

:func:`markdown` is a pure function of the results, one helper per section; the target
verdicts it tabulates are derived from the results by :mod:`benchmarks.targets`
(re-exported here).
"""

from __future__ import annotations

from typing import Any

from benchmarks.targets import TARGET_IDS, shape_text, targets

__all__ = ["TARGET_IDS", "markdown", "targets"]


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


def _verdict(t: dict) -> str:
    return "not measured" if t["met"] is None else ("**met**" if t["met"] else "**not met**")


def markdown(res: dict) -> str:
    """BENCHMARKS.md: the report of the raw results, section by section.

    Parameters
    ----------
    res : dict
        Raw results of :func:`benchmarks.run` (as ``python -m benchmarks`` writes them to
        its JSON file, docs/bench_results.json with ``--write-docs``); the verdicts are
        derived from them with :func:`targets`.

    Returns
    -------
    str
        The markdown text; a pure function of ``res``, so the report can be rebuilt from
        the recorded results byte for byte.
    """
    sections = (_header, _targets_section, _bandwidth_section, _operations_section,
                _loop_section, _compile_section, _gpu_section, _overhead_section,
                _scaling_section)
    return "\n".join(line for section in sections for line in section(res))


def _header(res: dict) -> list[str]:
    """Title, command, machine, versions, method and settings (and the CUDA note)."""
    m = res["machine"]
    L = ["# Benchmarks", "",
         f"Produced by `{res['command']}` (refdiff commit `{m['commit']}`) on "
         f"{res['date']}; the whole run took {res['wall_s']:.0f} s. Generated from the raw "
         "results; do not edit by hand (BENCHMARKS.md: rerun `python -m benchmarks "
         "--write-docs` from the repository root).", "",
         f"- Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}"
         f"{'; GPU: ' + m['gpu'] if m.get('gpu') else '; no GPU'}.",
         f"- Versions: Python {m['python']}, NumPy {m['numpy']}, torch {m.get('torch', '—')}, "
         f"diffusers {m.get('diffusers', '—')}, JAX {m.get('jax', '—')}, "
         f"array-api-compat {m['array_api_compat']}.",
         f"- Shapes {', '.join(shape_text(s) for s in res['shapes'])}; dtypes float32 on every "
         "backend and float64 on NumPy; s = 7.5, ᾱ_t = 0.3, ᾱ_prev = 0.55, DDIM η = 0.",
         "- Method: warm-up, then interleaved rounds (every implementation of one operation "
         "timed once per round, in rotated order), synchronising before each clock read; "
         "median time per call over the rounds, spread = interquartile range / median. "
         "The machine is shared and small (other processes were running): single "
         "numbers can move by 10–20%; compare within a table, not across runs.",
         f"- Settings: torch intra-op threads = {m.get('torch_threads', '—')} (NumPy's "
         "element-wise loops are single-threaded too); glibc told to keep freed arrays on "
         "the heap (`mallopt`, in the benchmark script only; otherwise each large temporary "
         "is mmap'd and page-faulted again): "
         f"{'yes' if res.get('stable_allocator') else 'no'}.",
         "- Floor = bytes that must be read and written once ÷ this machine's measured copy "
         "bandwidth; GB/s = those bytes ÷ the measured time (an effective rate).",
         "- GPU preset: `python -m benchmarks --gpu` on a machine with CUDA runs the CUDA "
         "tests (`python -m pytest -q -m cuda`) and the CUDA rows and merges them into this "
         "report (the GPU section and the torch-cuda rows); without CUDA it says so, writes "
         "nothing and exits 0.", ""]
    if not res["cuda"]:
        L += ["**CUDA rows: not measured (no CUDA device used in this run).** The harness "
              "runs them (eager and compiled, with `torch.cuda.synchronize` before each clock "
              "read and `torch.cuda.max_memory_allocated` for memory) whenever "
              "`torch.cuda.is_available()`, and `python -m benchmarks --gpu` adds them, with "
              "the CUDA tests, to a recorded CPU run.", ""]
    return L


def _targets_section(res: dict) -> list[str]:
    """The target verdicts table."""
    L = ["## Targets", "", "| target | measured | verdict | reason |", "| --- | --- | --- | --- |"]
    for t in targets(res):
        L.append(f"| {t['target']} | {t['value']} | {_verdict(t)} | {t['reason']} |")
    return L


def _bandwidth_section(res: dict) -> list[str]:
    """The copy-bandwidth probes and the rate used for the floor."""
    mib = res.get("bandwidth_mib", 256)
    L = ["", "## Copy bandwidth", "",
         f"2 × bytes ÷ time of a {mib} MiB copy (`np.copyto`, `Tensor.copy_`). The floor "
         "uses the fastest copy measured on the CPU (both libraries share one memory "
         "system), so that a probe run in a noisy moment does not lower it.", "",
         "| probe | median GB/s | fastest GB/s |", "| --- | --- | --- |"]
    for k, v in res.get("bandwidth_probes", {}).items():
        L.append(f"| {k} | {v['median'] / 1e9:.2f} | {v['best'] / 1e9:.2f} |")
    L += ["", "Rate used for the floor: " + ", ".join(
        f"{k} {v / 1e9:.2f} GB/s" for k, v in res["bandwidth"].items()) + "."]
    return L


def _operations_section(res: dict) -> list[str]:
    """One table of operations per shape."""
    L = ["", "## Operations", "",
         "Time per call (median), effective GB/s, ratio to the memory-traffic floor, and "
         "ratio to the hand-written expression of the same math (same backend, dtype and "
         "shape, timed in the same rounds). `hand` is plain NumPy / torch; `diffusers` is "
         "`DDIMScheduler.step` or `DDPMScheduler.step` with hand-written CFG (its DDPM step "
         "draws its own noise inside). For guided_ddim, `refdiff` is the spec form "
         "`ddim_step(cfg(...))` and `fused` is `refdiff.guided_ddim_step` (one linear "
         "combination); for loop50, `refdiff` is `refdiff.sample` (eager, which takes the "
         "fused path). `compiled` is `refdiff.compiled`: the single steps (Python-float ᾱ and "
         "s, specialised) and, for loop50, the compiled loop `DDIMLoop` (compiled once). "
         "jax-cpu rows are all `jax.jit` with s, ᾱ_t and ᾱ_prev as traced 0-d float32 arrays, "
         "each call blocking on its result (`block_until_ready`); their loop50 `compiled` is "
         "`DDIMLoop` on JAX (one jit of `lax.scan`) and `hand` the hand-written step in one "
         "jitted `lax.scan`.", ""]
    for shape in res["shapes"]:
        L += [f"### {shape_text(shape)}", "",
              "| op | backend | dtype | impl | ms | spread | GB/s | × floor | × hand |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in res["ops"]:
            if r["shape"] != shape:
                continue
            L.append(f"| {r['op']} | {r['backend']} | {r['dtype']} | {r['impl']} | "
                     f"{_fmt(r['ms'])} | {r['spread']:.0%} | {_fmt(r['gbps'])} | "
                     f"{_fmt(r['x_floor'])} | {_fmt(r.get('vs_hand'))} |")
        L.append("")
    return L


def _compile_section(res: dict) -> list[str]:
    """Compile times and break-even calls, or a line saying they were not measured."""
    L = ["## Compile time and break-even", ""]
    cold = res.get("cold_compile") or {}
    if not res.get("compile"):
        return L + ["Not measured in this run (--quick or --no-compile).", ""]
    L += _cold_start_note(cold)
    L += ["| function | backend | shape | cold s | warm s | new ᾱ s | eager ms | "
          "compiled ms | break-even calls (cold) | (warm) |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in res["compile"]:
        L.append(f"| {c['op']} | {c.get('backend', 'torch-cpu')} | {shape_text(c['shape'])} | "
                 f"{_fmt(c.get('cold_compile_s'))} | "
                 f"{c['compile_s']:.2f} | {_fmt(c.get('recompile_s'))} | "
                 f"{_fmt(c['eager_ms'])} | {_fmt(c['compiled_ms'])} "
                 f"| {_break_even(c.get('break_even_cold'))} | {_break_even(c['break_even'])} |")
    L += ["", "These are the single-step functions of `refdiff.compiled`, which take ᾱ and "
          "s as Python floats: TorchDynamo specialises them (refdiff's range checks branch "
          "on them), so every new (s, ᾱ_t, ᾱ_prev) compiles again (*new ᾱ s*), and its "
          "recompile limit (8 per function by default) sends later values back to eager. "
          "They pay for a server that repeats one step many times at large shapes. The "
          "compiled sampling loop (`DDIMLoop`, table above) passes ᾱ and s as 0-d float64 "
          "tensors instead and compiles its step once for every step and run.", ""]
    return L


def _loop_section(res: dict) -> list[str]:
    """The compiled sampling loop: per-step time against the floor, and its compilations."""
    L = ["## Compiled sampling loop", ""]
    loops = res.get("loops") or []
    if not loops:
        return L + ["Not measured in this run (--quick or --no-compile, and no JAX).", ""]
    L += ["The 50-step CFG DDIM loop (s = 7.5, η = 0) with a trivial model (torch: returns "
          "the precomputed ε_u or ε_c; JAX: returns its condition, which is that ε), so the "
          "time is the loop's own. Per step = loop50 time ÷ 50; the floor of one step is the "
          "guided DDIM step's bytes, read x_t, ε_u, ε_c and write x_prev (4 arrays), ÷ the "
          "copy bandwidth. *compile s* = first run − second run (the run that compiled "
          "against one that did not); *cold s* the same in a fresh process with an empty "
          "Inductor cache (Inductor's start-up excluded). The compilations come from "
          "`loop.last_run`: of the first run, of those after its first step, and of two later "
          "runs (torch: the same run, then 25 steps at s = 5; JAX: the same run, then s = 5).",
          "",
          "| backend | shape | eager µs/step | compiled µs/step | hand µs/step | floor µs | "
          "compiled × floor | compile s | cold s | compilations | after step 1 | later runs |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i in loops:
        def per_step(impl, i=i):
            r = [x for x in res["ops"] if x["op"] == "loop50" and x["impl"] == impl and
                 x["backend"] == i["backend"] and x["shape"] == i["shape"]]
            return (r[0]["ms"] * 1e3 / i["steps"], r[0]) if r else (None, None)
        comp, row = per_step("compiled")
        L.append(f"| {i['backend']} | {shape_text(i['shape'])} | {_fmt(per_step('refdiff')[0])} "
                 f"| {_fmt(comp)} | {_fmt(per_step('hand')[0])} | "
                 f"{_fmt(row['floor_ms'] * 1e3 / i['steps'] if row else None)} | "
                 f"{_fmt(row['x_floor'] if row else None)} | {i['compile_s']:.2f} | "
                 f"{_fmt(i.get('cold_compile_s'))} | {i['compilations']} | "
                 f"{i['after_first_step']} | {i['later_compilations']} |")
    return L + [""]


def _gpu_section(res: dict) -> list[str]:
    """What the GPU preset ran (the CUDA tests, the eager loop's host time), if it ran."""
    run = res.get("gpu_run")
    if not run:
        return []
    t = run["tests"]
    L = ["## GPU preset", "",
         f"`{run['command']}` on {run['date']} ({res['machine'].get('gpu', 'GPU')}; "
         f"{run['wall_s']:.0f} s) added the torch-cuda rows above. CUDA tests "
         f"(`{t['command']}`): {t['summary']} (exit status {t['rc']}).", ""]
    rows = res.get("host_overhead") or []
    if rows:
        L += ["Eager loop `refdiff.sample` (50 CFG DDIM steps, trivial model) on CUDA: host "
              "time per step (the clock stops when the loop returns, before synchronising) "
              "and the synchronised time per step.", "",
              "| shape | host µs/step | synchronised µs/step |", "| --- | --- | --- |"]
        L += [f"| {shape_text(r['shape'])} | {_fmt(r['host_us_per_step'])} | "
              f"{_fmt(r['us_per_step'])} |" for r in rows]
        L.append("")
    return L


def _cold_start_note(cold: dict) -> list[str]:
    """The paragraph on cold compilation in a fresh process (or why it is missing)."""
    if "startup_s" in cold:
        return [f"Cold start, measured in a fresh Python process with an empty Inductor "
                f"cache: importing torch and refdiff {cold['import_s']:.1f} s, Inductor's "
                f"start-up (first compilation of any function) {cold['startup_s']:.1f} s, "
                "then each refdiff function as listed under *cold s*. *warm s* is the same "
                "compilation in the benchmark process, where Inductor reuses kernels it has "
                "built before; *new ᾱ s* is the recompilation that a new Python-float ᾱ "
                "(or s) triggers in that process. Break-even = "
                "compile time ÷ (eager − compiled time per call): the number of calls after "
                "which compiling has paid for itself (torch CPU, float32).", ""]
    if cold.get("error"):
        return [f"Cold compilation could not be measured: {cold['error']}.", ""]
    return []


def _break_even(calls: float | None) -> str:
    return "never (not faster)" if calls is None else f"{calls:.0f}"


def _overhead_section(res: dict) -> list[str]:
    """Per-call time of every public function on tiny arrays, NumPy and torch."""
    L = ["## Per-call overhead on tiny arrays (shape (2, 3))", "",
         "Every public function; µs per call (median). `hand` is the plain expression of "
         "the same step (the floor for any Python implementation).", "",
         "| function | NumPy float64 µs | hand | torch CPU float32 µs | hand |",
         "| --- | --- | --- | --- | --- |"]
    by: dict = {}
    for r in res.get("overhead", []):
        by.setdefault(r["function"], {})[r["library"]] = r
    for name, d in by.items():
        n, t = d.get("numpy", {}), d.get("torch", {})
        L.append(f"| {name} | {_fmt(n.get('us'))} | {_fmt(n.get('hand_us'))} | "
                 f"{_fmt(t.get('us'))} | {_fmt(t.get('hand_us'))} |")
    return L


def _scaling_section(res: dict) -> list[str]:
    """The scaling figure, then time and peak memory against batch size and steps."""
    L = ["", "## Scaling", "", f"![scaling]({res.get('plot_rel', 'docs/bench_scaling.png')})", "",
         "Guided DDIM step (refdiff, float32) against batch size (B, 4, 64, 64); peak memory "
         "above the live inputs (NumPy: tracemalloc; torch CPU has no resettable counter):", "",
         "| backend | batch | ms | one array MiB | peak MiB |", "| --- | --- | --- | --- | --- |"]
    for r in res["scaling"]["batch"]:
        L.append(f"| {r['library']} | {r['batch']} | {_fmt(r['ms'])} | {_fmt(r['array_mib'])} | "
                 f"{_fmt(r['peak_mib'])} |")
    return L + _steps_table(res["scaling"]["steps"]) + [""]


def _steps_table(steps: list[dict]) -> list[str]:
    """The CFG DDIM loop against the number of steps, with and without the trajectory."""
    L = ["", "The 50-step-style CFG DDIM loop against the number of steps, "
         f"shape {shape_text(steps[0]['shape'])}: peak memory is flat without "
         "the trajectory and grows by one array per step with it.", "",
         "| backend | steps | ms | peak MiB | peak MiB with trajectory |",
         "| --- | --- | --- | --- | --- |"]
    for r in steps:
        if r["trajectory"]:
            continue
        w = [x for x in steps if x["trajectory"] and x["library"] == r["library"]
             and x["steps"] == r["steps"]]
        L.append(f"| {r['library']} | {r['steps']} | {_fmt(r['ms'])} | {_fmt(r['peak_mib'])} | "
                 f"{_fmt(w[0]['peak_mib'] if w else None)} |")
    return L
