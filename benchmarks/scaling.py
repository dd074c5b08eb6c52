"""Time and peak memory against batch size and against the number of sampling steps.

Peak memory is measured where a resettable counter exists: NumPy through ``tracemalloc``
(NumPy reports its data buffers to it) and CUDA through ``torch.cuda.max_memory_allocated``.
torch on the CPU has no such counter (its allocator does not report to ``tracemalloc``, and
the process's ru_maxrss cannot be reset), so torch CPU rows give time only.

The sampling loop keeps only the current x_t unless ``return_trajectory=True``; its peak
memory must therefore be flat in the number of steps without the trajectory and grow by one
array per step with it.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any, Callable

import refdiff as rd
from benchmarks.cases import AB_PREV, AB_T, S, Cell
from benchmarks.timer import measure


def numpy_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated (tracemalloc) while ``fn`` runs, above what was live before."""
    started = tracemalloc.is_tracing()
    if not started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
        del out
    finally:
        if not started:
            tracemalloc.stop()
    return peak - base


def cuda_peak_bytes(fn: Callable[[], Any], device: str) -> int:
    import torch

    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return peak - base


def _targets(cuda: bool) -> list[tuple[str, str]]:
    t = [("numpy", "cpu")]
    try:
        import torch

        t.append(("torch", "cpu"))
        if cuda and torch.cuda.is_available():
            t.append(("torch", "cuda"))
    except ImportError:
        pass
    return t


def _peak(cell: Cell, fn) -> int | None:
    if cell.library == "numpy":
        return numpy_peak_bytes(fn)
    if cell.device.startswith("cuda"):
        return cuda_peak_bytes(fn, cell.device)
    return None


def by_batch(batches=(1, 4, 16, 64), inner=(4, 64, 64), *, cuda: bool = True, rounds: int = 7,
             budget_s: float = 4.0) -> list[dict]:
    """Guided DDIM step (refdiff and hand-written) against batch size, float32."""
    rows = []
    for lib, dev in _targets(cuda):
        for b in batches:
            cell = Cell(lib, dev, "float32", (b, *inner))
            ref = lambda: rd.ddim_step(cell.x, rd.cfg(cell.u, cell.c, S), AB_T, AB_PREV)  # noqa
            stats = measure({"refdiff": ref}, rounds=rounds, sync=cell.sync, budget_s=budget_s)
            rows.append({"library": cell.label, "batch": b, "shape": list(cell.shape),
                         "ms": stats["refdiff"].median * 1e3, "spread": stats["refdiff"].spread,
                         "array_mib": cell.nbytes / 2**20, "peak_mib": _mib(_peak(cell, ref))})
    return rows


def by_steps(steps=(10, 25, 50, 100), shape=(4, 4, 64, 64), *, cuda: bool = True,
             rounds: int = 3, budget_s: float = 6.0) -> list[dict]:
    """The CFG DDIM loop against the number of steps, with and without the trajectory."""
    rows = []
    sched = rd.linear_schedule(1000)
    g = rd.Guidance(cond=1, uncond=0, scale=S)
    for lib, dev in _targets(cuda):
        cell = Cell(lib, dev, "float32", shape)
        for n in steps:
            for traj in (False, True):
                def run(n=n, traj=traj):
                    return rd.sample(cell.model, cell.x, sched, num_inference_steps=n,
                                     guidance=g, return_trajectory=traj)
                t = None
                if not traj:
                    t = measure({"loop": run}, rounds=rounds, warmup=1, min_sample_s=0.0,
                                sync=cell.sync, budget_s=budget_s)["loop"].median * 1e3
                rows.append({"library": cell.label, "steps": n, "trajectory": traj,
                             "shape": list(shape), "ms": t, "array_mib": cell.nbytes / 2**20,
                             "peak_mib": _mib(_peak(cell, run))})
    return rows


def _mib(b: int | None) -> float | None:
    return None if b is None else b / 2**20


def wall(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
