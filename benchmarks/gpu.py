"""The GPU preset, ``python -m benchmarks --gpu``: the CUDA tests and the CUDA rows.

On a machine with a CUDA device it

1. runs the CUDA tests, ``python -m pytest -q -m cuda`` (from the repository root);
2. probes the device's copy bandwidth (the floor's rate on CUDA);
3. times every operation of the torch CUDA float32 cells at the full shapes (or ``--shapes``),
   as the CPU run times the CPU cells: refdiff, fused, hand-written, diffusers, the compiled
   single steps, and the compiled loop :class:`refdiff.compiled.DDIMLoop` (Inductor, CUDA
   graphs on) with its compilations;
4. measures the eager loop's host time per step (:func:`host_overhead`);
5. merges all of that into the recorded results (docs/bench_results.json, or the JSON of
   ``--out``), replacing earlier CUDA rows and keeping the CPU rows, recomputes the target
   verdicts and rewrites the report from the merged results.

Without CUDA it prints one line and exits 0, writing nothing; it exits 1 when the CUDA tests
fail (the report is still written, with their summary). The CUDA scaling sweep is not part
of the preset.
"""

from __future__ import annotations

import datetime as _dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from refdiff.cli import UsageError

from benchmarks import cases as C
from benchmarks.targets import targets

CUDA_BACKEND = "torch-cuda"
NO_CUDA = ("python -m benchmarks --gpu: no CUDA device (torch.cuda.is_available() is False); "
           "the CUDA tests and rows were skipped and nothing was written")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def run_cuda_tests(root: Path, timeout: float = 1800) -> dict:
    """``python -m pytest -q -m cuda`` in ``root``: its exit status and summary line."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, text=True, capture_output=True, timeout=timeout)
        lines = proc.stdout.strip().splitlines()
        rc, summary = proc.returncode, (lines[-1] if lines else "no output")
    except subprocess.TimeoutExpired:
        rc, summary = None, f"timed out after {timeout:.0f} s"
    return {"command": "python -m pytest -q -m cuda", "rc": rc, "summary": summary,
            "wall_s": time.perf_counter() - t0}


def host_overhead(cell, rounds: int = 5) -> dict:
    """Host time per step of the eager loop :func:`refdiff.sample` (50 CFG DDIM steps).

    The clock stops when ``refdiff.sample`` returns, before synchronising: CUDA runs the
    kernels asynchronously, so that time is what the host spends per step (Python,
    refdiff's checks, kernel launches) while the device works behind it; the synchronised
    time per step is reported next to it.
    """
    import refdiff as rd

    g = rd.Guidance(cond=1, uncond=0, scale=C.S)

    def loop():
        return rd.sample(cell.model, cell.x, cell.schedule, timesteps=cell.timesteps,
                         guidance=g)

    loop()
    host, total = [], []
    for _ in range(rounds):
        cell.sync()
        t0 = time.perf_counter()
        loop()
        t1 = time.perf_counter()
        cell.sync()
        host.append(t1 - t0)
        total.append(time.perf_counter() - t0)
    steps = len(cell.timesteps)
    return {"backend": cell.label, "shape": list(cell.shape), "steps": steps,
            "host_us_per_step": statistics.median(host) / steps * 1e6,
            "us_per_step": statistics.median(total) / steps * 1e6}


def measure_gpu(*, shapes, rounds: int, quiet: bool, root: Path) -> dict:
    """The CUDA part of a run: tests, bandwidth, operation rows, loops, host overhead."""
    import torch

    from benchmarks import cli
    from benchmarks.bandwidth import torch_copy_bandwidth

    t_start = time.perf_counter()
    cli._log("bench --gpu: python -m pytest -q -m cuda", quiet)
    part: dict = {"tests": run_cuda_tests(root), "gpu": torch.cuda.get_device_name(0),
                  "shapes": [list(s) for s in shapes]}
    cli._log("bench --gpu: copy bandwidth", quiet)
    probe = torch_copy_bandwidth("cuda", 256 << 20, rounds=11)
    part.update(bandwidth={CUDA_BACKEND: probe["best"]}, bandwidth_probes={CUDA_BACKEND: probe},
                ops=[], compile=[], loops=[], host_overhead=[])
    compiling = cli._compile_warmup(part)
    for shape in shapes:
        cell = C.Cell("torch", "cuda", "float32", tuple(shape))
        cli._measure_cell(part, cell, rounds=rounds, quick=False, compile=compiling,
                          use_diffusers=True, quiet=quiet)
        part["host_overhead"].append(host_overhead(cell))
    part["wall_s"] = time.perf_counter() - t_start
    return part


def merge(base: dict, part: dict, *, command: str, date: str) -> dict:
    """The recorded results with the CUDA part in place of any earlier CUDA rows."""
    res = json.loads(json.dumps(base))  # a deep copy

    def cpu_only(rows):
        return [r for r in rows if r.get("backend") != CUDA_BACKEND]

    for key in ("ops", "compile", "loops", "host_overhead"):
        res[key] = cpu_only(res.get(key, [])) + part.get(key, [])
    for key in ("bandwidth", "bandwidth_probes"):
        res[key] = {**res.get(key, {}), **part[key]}
    res["shapes"] = res["shapes"] + [s for s in map(list, part["shapes"])
                                     if s not in res["shapes"]]
    res["cuda"] = True
    res["machine"] = {**res["machine"], "gpu": part["gpu"]}
    res["gpu_run"] = {"command": command, "date": date, "wall_s": part["wall_s"],
                      "tests": part["tests"]}
    res["targets"] = targets(res)
    return res


def main(args, shapes, out: Path, json_p: Path, *, command: str) -> int:
    """``python -m benchmarks --gpu`` (see the module docstring): 0, 1 (tests failed) or 2."""
    from benchmarks.cli import FULL_SHAPES, ROOT
    from benchmarks.report import markdown

    if not cuda_available():
        print(NO_CUDA)
        return 0
    if not json_p.is_file():
        raise UsageError(f"--gpu merges the CUDA rows into recorded results, and "
                         f"{str(json_p)!r} does not exist: run the CPU benchmark first "
                         "(python -m benchmarks --write-docs, or --out with the same path)")
    base = json.loads(json_p.read_text())
    part = measure_gpu(shapes=shapes or FULL_SHAPES, rounds=args.rounds or 21,
                       quiet=args.quiet, root=ROOT)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    res = merge(base, part, command=command, date=date)
    json_p.write_text(json.dumps(res, indent=1, default=float) + "\n")
    out.write_text(markdown(res))
    tests = part["tests"]
    print(f"CUDA tests: {tests['summary']}")
    print(f"wrote {out}, {json_p} in {part['wall_s']:.1f} s")
    return 0 if tests["rc"] == 0 else 1
