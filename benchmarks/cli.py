"""``python -m benchmarks``: run the benchmarks and write a markdown report, a JSON of the raw
results and the scaling figure (run it from the repository root).

    python -m benchmarks                 # full run (~5 min on 2 cores): ./benchmarks_report.md,
                                         # ./benchmarks_report.json, ./benchmarks_report_scaling.png
    python -m benchmarks --write-docs    # full run recorded in the tracked files: BENCHMARKS.md,
                                         # docs/bench_results.json, docs/bench_scaling.png
    python -m benchmarks --quick --out /tmp/bench_quick.md   # smoke test, well under a minute
    python -m benchmarks --gpu           # GPU preset: the CUDA tests and the CUDA rows (below)

The GPU preset (``--gpu``, :mod:`benchmarks.gpu`) runs ``python -m pytest -q -m cuda`` and
times the torch CUDA rows (eager, fused, diffusers, compiled single steps, the compiled loop
with CUDA graphs, the eager loop's host time per step), then merges them into a recorded
report: BENCHMARKS.md and docs/bench_results.json (or the report named by ``--out`` and its
JSON), replacing any CUDA rows there and leaving the CPU rows as they were. Without a CUDA
device it prints one line saying so, writes nothing and exits 0; it exits 1 when the CUDA
tests fail (the report is still written, with the failure), 2 on a bad argument.

From Python: ``benchmarks.run(quick=True)`` returns the results as a dict.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import refdiff
from refdiff.cli import UsageError

from benchmarks import cases as C
from benchmarks import loops as L
from benchmarks.bandwidth import numpy_copy_bandwidth, torch_copy_bandwidth
from benchmarks.overhead import run_overhead
from benchmarks.plot import scaling_plot
from benchmarks.report import markdown
from benchmarks.scaling import by_batch, by_steps
from benchmarks.targets import targets
from benchmarks.timer import measure

ROOT = Path(__file__).resolve().parent.parent  # the repository root (this folder's parent)
# what --write-docs writes: the tracked report, raw results and figure
DOCS_PATHS = (ROOT / "BENCHMARKS.md", ROOT / "docs" / "bench_results.json",
              ROOT / "docs" / "bench_scaling.png")
DEFAULT_OUT = "benchmarks_report.md"  # in the current directory, with its .json and .png

FULL_SHAPES = [(1, 4, 64, 64), (16, 4, 64, 64), (64, 4, 128, 128)]
QUICK_SHAPES = [(2, 4, 32, 32)]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    root = Path(refdiff.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        # the code that was measured: the package, the harness and the metadata, not
        # earlier outputs
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "refdiff", "benchmarks", "pyproject.toml"],
                               cwd=root, text=True, capture_output=True).stdout.strip()
        return sha + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict:
    import array_api_compat
    import numpy

    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": numpy.__version__,
            "array_api_compat": array_api_compat.__version__, "commit": _commit()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return info


def _targets(cuda: bool) -> list[tuple[str, str, str]]:
    t = [("numpy", "cpu", "float32"), ("numpy", "cpu", "float64")]
    try:
        import torch

        t.append(("torch", "cpu", "float32"))
        if cuda and torch.cuda.is_available():
            t.append(("torch", "cuda", "float32"))
    except ImportError:
        pass
    return t


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def run(*, quick: bool = False, shapes=None, compile: bool | None = None,
        use_diffusers: bool = True, cuda: bool = True, rounds: int | None = None,
        command: str = "benchmarks.run()", quiet: bool = True,
        torch_threads: int | None = 1, use_jax: bool = True) -> dict:
    """Run every benchmark and return the raw results (JSON-ready), with target verdicts.

    ``quick`` uses one small shape, few rounds, a 64 MiB bandwidth probe, no torch
    compilation (unless ``compile=True``) and short scaling sweeps: seconds, for CI. The
    JAX rows (``use_jax``, when JAX is installed) are jitted whatever ``quick`` says.

    ``torch_threads`` sets torch's intra-op threads for the run (restored after): 1 by
    default, like NumPy's element-wise loops, and because on a small shared machine two
    OpenMP threads wait on each other whenever another process holds a core (medians of
    sub-millisecond operations jumped to 24 and 72 ms). None keeps torch's default.
    """
    try:
        import torch
    except ImportError:
        torch = None
    previous = torch.get_num_threads() if torch is not None else None
    if torch is not None and torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        return _run(quick=quick, shapes=shapes, compile=compile, use_diffusers=use_diffusers,
                    cuda=cuda, rounds=rounds, command=command, quiet=quiet,
                    use_jax=use_jax)
    finally:
        if torch is not None:
            torch.set_num_threads(previous)


def _run(*, quick, shapes, compile, use_diffusers, cuda, rounds, command, quiet,
         use_jax) -> dict:
    """Body of :func:`run`, with torch's thread count already set."""
    t_start = time.perf_counter()
    shapes = [tuple(s) for s in (shapes or (QUICK_SHAPES if quick else FULL_SHAPES))]
    compile = (not quick) if compile is None else compile
    rounds = rounds or (5 if quick else 21)
    res: dict = {"command": command, "quick": quick,
                 "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "machine": machine_info(), "shapes": [list(s) for s in shapes]}
    tgts = _targets(cuda)
    res["cuda"] = any(d == "cuda" for _, d, _ in tgts)
    _measure_bandwidth(res, tgts, quick=quick, quiet=quiet)
    if compile:
        compile = _compile_warmup(res)
    if compile:
        _log("bench: cold compilation in a fresh process", quiet)
        res["cold_compile"] = C.cold_compile_times(shapes[min(1, len(shapes) - 1)],
                                                   threads=res["machine"].get("torch_threads", 1))
    res["ops"], res["compile"], res["loops"] = [], [], []
    res["jax"] = use_jax and L.jax_available()
    if res["jax"]:
        import jax

        res["machine"]["jax"] = jax.__version__
    for shape in shapes:
        for lib, dev, dtype in tgts:
            _measure_cell(res, C.Cell(lib, dev, dtype, shape), rounds=rounds, quick=quick,
                          compile=compile, use_diffusers=use_diffusers, quiet=quiet)
        if res["jax"]:  # next to torch's cells of the same shape, in the same run
            _measure_jax_cell(res, L.JaxCell(shape), rounds=rounds, quick=quick, quiet=quiet)
    _log("bench: per-call overhead on tiny arrays", quiet)
    libs = ("numpy", "torch") if any(lib == "torch" for lib, _, _ in tgts) else ("numpy",)
    res["overhead"] = run_overhead(libs, rounds=3 if quick else 9,
                                   min_sample_s=0.001 if quick else 0.004)
    _log("bench: scaling", quiet)
    res["scaling"] = _scaling(quick=quick, cuda=cuda)
    res["targets"] = targets(res)
    res["wall_s"] = time.perf_counter() - t_start
    return res


def _measure_bandwidth(res: dict, tgts, *, quick: bool, quiet: bool) -> None:
    """Probe the copy bandwidth of each library; set the floor's rate in ``res``.

    Sets ``res["bandwidth"]`` (the rate per backend), ``res["bandwidth_probes"]`` (every
    probe's median and best) and ``res["bandwidth_mib"]`` (the probe's size).
    """
    mib = 64 if quick else 256
    _log("bench: copy bandwidth", quiet)
    n_bw = 3 if quick else 11
    probes = {"numpy": numpy_copy_bandwidth(mib << 20, rounds=n_bw)}
    if any(lib == "torch" for lib, _, _ in tgts):
        probes["torch-cpu"] = torch_copy_bandwidth("cpu", mib << 20, rounds=n_bw)
    if res["cuda"]:
        probes["torch-cuda"] = torch_copy_bandwidth("cuda", mib << 20, rounds=n_bw)
    cpu_best = max(p["best"] for k, p in probes.items() if k != "torch-cuda")
    # the floor's rate: the machine's best copy (CPU libraries share one memory system)
    bw = {"numpy": cpu_best, "torch-cpu": cpu_best, "jax-cpu": cpu_best}
    if res["cuda"]:
        bw["torch-cuda"] = probes["torch-cuda"]["best"]
    res["bandwidth"], res["bandwidth_probes"], res["bandwidth_mib"] = bw, probes, mib


def _measure_cell(res: dict, cell, *, rounds: int, quick: bool, compile: bool,
                  use_diffusers: bool, quiet: bool) -> None:
    """Time every operation of one (backend, dtype, shape) cell into ``res["ops"]``.

    Every implementation (refdiff, hand-written, diffusers, compiled) of one operation is
    timed in the same interleaved rounds; compile times go to ``res["compile"]``.
    """
    _log(f"bench: {cell.label} {cell.dtype} {cell.shape}", quiet)
    impls = {"refdiff": C.refdiff_cases(cell), "fused": C.fused_cases(cell),
             "hand": C.hand_cases(cell)}
    if use_diffusers:
        impls["diffusers"] = C.diffusers_cases(cell)
    if compile and cell.dtype == "float32":
        impls["compiled"] = C.compiled_cases(cell)
        if impls["compiled"]:  # torch with torch.compile: the compiled loop too
            impls["compiled"]["loop50"], info = L.torch_loop(cell)
            cold = res.get("cold_compile", {}) if cell.device == "cpu" else {}
            if cold.get("loop", {}).get("shape") == list(cell.shape):
                info["cold_compile_s"] = cold["loop"]["compile_s"]
            res["loops"].append(info)
    for op in C.OPS:
        res["ops"] += _time_op(op, cell, impls, res["bandwidth"], rounds=rounds, quick=quick)
    if compile and cell.library == "torch" and cell.dtype == "float32":
        # cold compilation is measured on CPU only
        cold = res.get("cold_compile", {}) if cell.device == "cpu" else {}
        res["compile"] += _compile_rows(cell, res["ops"], cold)


def _measure_jax_cell(res: dict, cell, *, rounds: int, quick: bool, quiet: bool) -> None:
    """The jitted JAX step and the JAX loop of one shape (:mod:`benchmarks.loops`)."""
    _log(f"bench: {cell.label} {cell.dtype} {cell.shape} (jax.jit)", quiet)
    impls, info = L.jax_cases(cell)
    res["loops"].append(info)
    for op in ("guided_ddim", "loop50"):
        res["ops"] += _time_op(op, cell, impls, res["bandwidth"], rounds=rounds, quick=quick)


def _time_op(op: str, cell, impls: dict, bw: dict, *, rounds: int, quick: bool) -> list[dict]:
    """One row per implementation of ``op``: median time, spread, × floor, × hand."""
    cands = {impl: fns[op] for impl, fns in impls.items() if op in fns}
    loop = op == "loop50"
    big = cell.nbytes > 8 << 20
    n_rounds = max(3, rounds // 3) if (loop and big) else rounds
    stats = measure(cands, rounds=n_rounds, warmup=1 if loop else 2,
                    min_sample_s=0.0 if loop else (0.002 if quick else 0.01),
                    sync=cell.sync, budget_s=(2.0 if quick else 15.0))
    floor_bytes = C.ARRAYS_MOVED[op] * cell.nbytes
    floor_s = floor_bytes / bw[cell.label]
    hand = stats["hand"].median
    return [{"op": op, "backend": cell.label, "dtype": cell.dtype, "shape": list(cell.shape),
             "impl": impl, "ms": s.median * 1e3, "spread": s.spread, "rounds": s.n,
             "calls_per_round": s.number, "floor_ms": floor_s * 1e3,
             "x_floor": s.median / floor_s, "gbps": floor_bytes / s.median / 1e9,
             "vs_hand": s.median / hand}
            for impl, s in stats.items()]


def _scaling(*, quick: bool, cuda: bool) -> dict:
    """Time and peak memory against batch size and against the number of steps."""
    return {
        "batch": by_batch((1, 4) if quick else (1, 4, 16, 64), cuda=cuda,
                          rounds=3 if quick else 7, budget_s=1.0 if quick else 4.0),
        "steps": by_steps((5, 10) if quick else (10, 25, 50, 100),
                          shape=(1, 4, 32, 32) if quick else (4, 4, 64, 64), cuda=cuda,
                          rounds=2 if quick else 3),
    }


def _compile_warmup(res: dict) -> bool:
    from refdiff import compiled

    if not compiled.is_available():
        res["compile_warmup_s"] = None
        return False
    import torch

    torch._dynamo.reset()
    t0 = time.perf_counter()
    torch.compile(lambda a: a * 2.0 + 1.0)(torch.ones(8))
    res["compile_warmup_s"] = time.perf_counter() - t0
    return True


def _compile_rows(cell, ops: list[dict], cold: dict) -> list[dict]:
    import torch

    torch._dynamo.reset()  # measure real compilations, not dynamo's cache
    out = []
    for op, t in C.compile_times(cell).items():
        def ms(impl, op=op):
            r = [x for x in ops if x["op"] == op and x["impl"] == impl and x["backend"] ==
                 cell.label and x["shape"] == list(cell.shape) and x["dtype"] == cell.dtype]
            return r[0]["ms"] if r else None
        eager, comp = ms("refdiff"), ms("compiled")
        gain = None if eager is None or comp is None else (eager - comp) / 1e3
        cold_s = cold.get("times", {}).get(op, {}).get("compile_s")
        pays = gain is not None and gain > 0
        out.append({"op": op, "shape": list(cell.shape), "backend": cell.label,
                    "compile_s": t["compile_s"], "first_call_s": t["first_call_s"],
                    "cold_compile_s": cold_s, "recompile_s": t["recompile_s"],
                    "eager_ms": eager, "compiled_ms": comp,
                    "break_even": t["compile_s"] / gain if pays else None,
                    "break_even_cold": cold_s / gain if pays and cold_s is not None else None})
    torch._dynamo.reset()
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2, via UsageError
        raise UsageError(f"{message}; see 'python -m benchmarks --help'")


def _parse(argv):
    p = _Parser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="one small shape, few rounds, no compilation: a smoke test (seconds)")
    p.add_argument("--out", default=None,
                   help=f"markdown report (default ./{DEFAULT_OUT}); the JSON and the figure "
                        "go next to it unless --json / --plot say otherwise")
    p.add_argument("--json", default=None, help="raw results (default: next to --out)")
    p.add_argument("--plot", default=None, help="scaling figure (default: next to --out)")
    p.add_argument("--write-docs", action="store_true",
                   help="write the tracked files instead: BENCHMARKS.md, "
                        "docs/bench_results.json, docs/bench_scaling.png (a full run)")
    p.add_argument("--shapes", default=None,
                   help="semicolon-separated shapes, e.g. '1,4,64,64;16,4,64,64'")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="time refdiff.compiled (default: on, off with --quick)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers rows")
    p.add_argument("--no-jax", action="store_true", help="skip the JAX rows")
    p.add_argument("--gpu", action="store_true",
                   help="GPU preset: run the CUDA tests and the CUDA rows and merge them into "
                        "BENCHMARKS.md (or --out); without CUDA, say so and exit 0")
    p.add_argument("--no-cuda", action="store_true", help="skip CUDA even if present")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads during the run (default 1; 0 = torch's default)")
    return p.parse_args(argv)


def _shapes(text: str | None):
    if text is None:
        return None
    try:
        shapes = [tuple(int(v) for v in part.split(",")) for part in text.split(";") if part]
    except ValueError:
        raise UsageError(f"--shapes must be ';'-separated lists of integers, got {text!r}")
    if not shapes or any(len(s) < 2 or min(s) < 1 for s in shapes):
        raise UsageError(f"--shapes needs shapes of at least 2 positive sizes, got {text!r}")
    return shapes


def _paths(args) -> tuple[Path, Path, Path]:
    """Where the report, the raw results and the figure go; checked before anything runs."""
    if args.gpu:
        clash = [f for f, on in (("--quick", args.quick), ("--write-docs", args.write_docs),
                                 ("--no-cuda", args.no_cuda)) if on]
        if clash:
            raise UsageError(f"--gpu times the CUDA rows of a full run and merges them into "
                             f"a recorded report; drop {', '.join(clash)}")
        if args.out is None:  # the tracked report, as --write-docs records it
            out, json_p, plot_p = DOCS_PATHS
            json_p = Path(args.json) if args.json else json_p
        else:
            out = Path(args.out)
            json_p = Path(args.json) if args.json else out.with_suffix(".json")
            plot_p = Path(args.plot) if args.plot else out.with_name(out.stem + "_scaling.png")
    elif args.write_docs:
        given = [f"--{k}" for k in ("out", "json", "plot") if getattr(args, k) is not None]
        if given:
            raise UsageError(f"--write-docs writes BENCHMARKS.md and docs/bench_*; drop "
                             f"{', '.join(given)}")
        if args.quick:
            raise UsageError("--write-docs records a full run; drop --quick")
        out, json_p, plot_p = DOCS_PATHS
    else:
        out = Path(args.out or DEFAULT_OUT)
        json_p = Path(args.json) if args.json else out.with_suffix(".json")
        plot_p = Path(args.plot) if args.plot else out.with_name(out.stem + "_scaling.png")
    if out.suffix != ".md":
        raise UsageError(f"--out must be a .md file, got {str(out)!r}")
    for p in (out, json_p, plot_p):
        if not p.parent.is_dir():
            raise UsageError(f"directory {str(p.parent)!r} for {p.name} does not exist")
    return out, json_p, plot_p


def _arguments(argv: list[str]):
    """The parsed arguments, the shapes and the three output paths; UsageError if bad."""
    args = _parse(argv)
    shapes = _shapes(args.shapes)
    if args.rounds is not None and not 3 <= args.rounds <= 1000:
        raise UsageError(f"--rounds must lie in 3..1000, got {args.rounds}")
    if args.torch_threads < 0:
        raise UsageError(f"--torch-threads must be >= 0, got {args.torch_threads}")
    return args, shapes, _paths(args)


def _write(res: dict, out: Path, json_p: Path, plot_p: Path, *, write_docs: bool) -> bool:
    """Write the figure, the raw results and the report; False if the figure was skipped."""
    written = scaling_plot(res["scaling"], str(plot_p))
    # the tracked JSON records its figure relative to the repository, not this machine's path
    shown = plot_p.relative_to(ROOT) if write_docs else plot_p
    res["plot"] = str(shown) if written else None
    try:
        res["plot_rel"] = os.path.relpath(plot_p, out.parent)
    except ValueError:
        res["plot_rel"] = str(plot_p)
    json_p.write_text(json.dumps(res, indent=1, default=float) + "\n")
    out.write_text(markdown(res))
    return bool(written)


def stable_allocator() -> bool:
    """Ask glibc to keep freed blocks on the heap instead of returning them to the system.

    By default glibc serves large blocks (the 0.1–64 MiB arrays here) with mmap and unmaps
    them on free, so each new temporary page-faults its pages in again, and whether it does
    depends on glibc's adaptive threshold, i.e. on the allocation history of the process:
    without this, one expression timed 3–5× apart in two positions of one run. Raising the
    mmap and trim thresholds makes every implementation reuse warm heap memory, as a
    long-running sampler does. Process-wide and memory behaviour only; called by the command
    line, not by :func:`run` (this is benchmark tooling, never part of the refdiff package).
    Returns False where glibc is absent.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(
            libc.mallopt(m_trim_threshold, 2 << 30))
    except (OSError, AttributeError):
        return False


def main(argv=None) -> int:
    """``python -m benchmarks``: 0 on success; a bad argument prints one line and gives 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, shapes, (out, json_p, plot_p) = _arguments(argv)
    except UsageError as exc:
        print(f"python -m benchmarks: {exc}", file=sys.stderr)
        return 2
    heap = stable_allocator()
    if args.gpu:
        from benchmarks import gpu

        try:
            return gpu.main(args, shapes, out, json_p,
                            command=" ".join(["python -m benchmarks", *argv]))
        except UsageError as exc:
            print(f"python -m benchmarks: {exc}", file=sys.stderr)
            return 2
    res = run(quick=args.quick, shapes=shapes, compile=args.compile,
              use_diffusers=not args.no_diffusers, cuda=not args.no_cuda, rounds=args.rounds,
              command=" ".join(["python -m benchmarks", *argv]), quiet=args.quiet,
              torch_threads=args.torch_threads or None, use_jax=not args.no_jax)
    res["stable_allocator"] = heap
    written = _write(res, out, json_p, plot_p, write_docs=args.write_docs)
    for t in res["targets"]:
        verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT MET")
        print(f"{verdict:>12}  {t['target']}: {t['value']}")
    print(f"wrote {out}, {json_p}" + (f", {plot_p}" if written else "") +
          f" in {res['wall_s']:.1f} s")
    return 0
