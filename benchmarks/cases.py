"""Each benchmarked operation, written several ways and timed side by side, interleaved.

Operations (η = 0 DDIM, scale s = 7.5, ᾱ_t = 0.3, ᾱ_prev = 0.55 for the single steps):

- ``q_sample``: x_t = √ᾱ·x_0 + √(1−ᾱ)·ε;
- ``cfg``: ε̃ = ε_u + s·(ε_c − ε_u);
- ``guided_ddim``: CFG then one DDIM step;
- ``ddpm_step``: one ancestral DDPM step with σ² = β̃ (noise passed in);
- ``loop50``: a whole 50-step DDIM sampling loop with CFG, with a trivial model that returns
  precomputed ε_u and ε_c (no work), so the loop's own cost is what is measured.

Implementations: ``refdiff`` (eager; for ``guided_ddim`` the spec form
``ddim_step(x, cfg(ε_u, ε_c, s), ...)``, for ``loop50`` :func:`refdiff.sample`, which takes
the fused path), ``fused`` (``guided_ddim`` only: :func:`refdiff.guided_ddim_step`, CFG and
the step as one linear combination A·x_t + B_u·ε_u + B_c·ε_c), ``hand`` (the same math as a
plain NumPy or torch expression, scalars as Python floats), ``diffusers``
(``DDIMScheduler.step`` / ``DDPMScheduler.step`` with hand-written CFG; torch only) and
``compiled`` (torch only: :mod:`refdiff.compiled`'s single steps, whose Python-float ᾱ and s
are specialised by TorchDynamo, and for ``loop50`` the compiled loop
:class:`refdiff.compiled.DDIMLoop`, whose step compiles once; see :mod:`benchmarks.loops`,
which also has the JAX rows).

The memory-traffic floor counts each array that must be read or written once: q_sample and
cfg read 2 and write 1; the guided DDIM step reads x_t, ε_u, ε_c and writes x_prev (4); the
DDPM step reads x_t, ε, z and writes 1 (4); the loop does the guided DDIM step 50 times
(the trivial model moves nothing).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import refdiff as rd

OPS = ("q_sample", "cfg", "guided_ddim", "ddpm_step", "loop50")
ARRAYS_MOVED = {"q_sample": 3, "cfg": 3, "guided_ddim": 4, "ddpm_step": 4, "loop50": 50 * 4}
S, AB_T, AB_PREV, STEPS = 7.5, 0.3, 0.55, 50


# --- hand-written: the same math as one plain expression (works on NumPy and torch) ---------

def hand_q_sample(x0, ab, z):
    return math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * z


def hand_cfg(u, c, s):
    return u + s * (c - u)


def hand_guided_ddim(x, u, c, s, ab_t, ab_prev):
    e = u + s * (c - u)
    x0 = (x - math.sqrt(1.0 - ab_t) * e) / math.sqrt(ab_t)
    return math.sqrt(ab_prev) * x0 + math.sqrt(1.0 - ab_prev) * e


def hand_ddpm_step(x, e, ab_t, ab_prev, z):
    beta = 1.0 - ab_t / ab_prev
    x0 = (x - math.sqrt(1.0 - ab_t) * e) / math.sqrt(ab_t)
    c0 = math.sqrt(ab_prev) * beta / (1.0 - ab_t)
    ct = math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)
    return c0 * x0 + ct * x + math.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * beta) * z


def hand_loop(x, u, c, s, alpha_bars):
    for ab_t, ab_prev in zip(alpha_bars, alpha_bars[1:]):
        x = hand_guided_ddim(x, u, c, s, ab_t, ab_prev)
    return x


# --- the environment of one (library, device, dtype, shape) cell ----------------------------


def set_loop_tables(cell: Any, shape: tuple[int, ...]) -> None:
    """The bytes of one array, the schedule, the loop's timesteps and its ᾱ list (ending at
    ᾱ = 1), shared by every cell that times the loop."""
    cell.nbytes = cell.itemsize * math.prod(shape)
    cell.schedule = rd.linear_schedule(1000)
    cell.timesteps = rd.inference_timesteps(1000, STEPS, "leading")
    cell.alpha_bars = [cell.schedule.alpha_bar(t) for t in cell.timesteps] + [1.0]

class Cell:
    """Arrays of one benchmark cell and the library's synchronise function."""

    def __init__(self, library: str, device: str, dtype: str, shape: tuple[int, ...], seed=0):
        import numpy as np

        self.library, self.device, self.dtype, self.shape = library, device, dtype, shape
        rng = np.random.default_rng(seed)
        host = [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]
        if library == "numpy":
            arrays = [h.astype(dtype) for h in host]
            self.sync: Callable[[], None] | None = None
            self.itemsize = np.dtype(dtype).itemsize
        else:
            import torch

            arrays = [torch.from_numpy(h).to(device=device, dtype=getattr(torch, dtype))
                      for h in host]
            self.sync = (lambda: torch.cuda.synchronize(device)) if device.startswith(
                "cuda") else None
            self.itemsize = arrays[0].element_size()
        self.x, self.u, self.c, self.z = arrays
        set_loop_tables(self, shape)

    @property
    def label(self) -> str:
        return f"{self.library}-{self.device}" if self.library == "torch" else "numpy"

    def model(self, x_t, t, cond):
        """Trivial model: returns the precomputed prediction of the branch (no work)."""
        return self.c if cond == 1 else self.u


def refdiff_cases(cell: Cell) -> dict[str, Callable[[], Any]]:
    x, u, c, z = cell.x, cell.u, cell.c, cell.z
    g = rd.Guidance(cond=1, uncond=0, scale=S)
    return {
        "q_sample": lambda: rd.q_sample(x, AB_T, z),
        "cfg": lambda: rd.cfg(u, c, S),
        "guided_ddim": lambda: rd.ddim_step(x, rd.cfg(u, c, S), AB_T, AB_PREV),
        "ddpm_step": lambda: rd.ddpm_step(x, u, AB_T, AB_PREV, z),
        "loop50": lambda: rd.sample(cell.model, x, cell.schedule, timesteps=cell.timesteps,
                                    guidance=g),
    }


def fused_cases(cell: Cell) -> dict[str, Callable[[], Any]]:
    """refdiff's fast path: the guided DDIM step as one linear combination (eager)."""
    x, u, c = cell.x, cell.u, cell.c
    return {"guided_ddim": lambda: rd.guided_ddim_step(x, u, c, S, AB_T, AB_PREV)}


def hand_cases(cell: Cell) -> dict[str, Callable[[], Any]]:
    x, u, c, z = cell.x, cell.u, cell.c, cell.z
    return {
        "q_sample": lambda: hand_q_sample(x, AB_T, z),
        "cfg": lambda: hand_cfg(u, c, S),
        "guided_ddim": lambda: hand_guided_ddim(x, u, c, S, AB_T, AB_PREV),
        "ddpm_step": lambda: hand_ddpm_step(x, u, AB_T, AB_PREV, z),
        "loop50": lambda: hand_loop(x, u, c, S, cell.alpha_bars),
    }


def diffusers_available() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


def diffusers_cases(cell: Cell) -> dict[str, Callable[[], Any]]:
    """diffusers' schedulers with hand-written CFG (torch only; same β schedule as refdiff).

    ``DDPMScheduler.step`` draws its noise inside the step (``randn_tensor``), so its time
    includes one normal draw that the other implementations receive as an argument.
    """
    if cell.library != "torch" or not diffusers_available():
        return {}
    from diffusers import DDIMScheduler, DDPMScheduler

    kw = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
              clip_sample=False)  # refdiff does not clip unless asked
    ddim, ddpm = DDIMScheduler(**kw), DDPMScheduler(**kw)
    ddim.set_timesteps(STEPS)
    ddpm.set_timesteps(STEPS)
    t_ddim, t_ddpm = ddim.timesteps[10], ddpm.timesteps[10]
    x, u, c = cell.x, cell.u, cell.c

    def loop():
        loop_sched = DDIMScheduler(**kw)
        loop_sched.set_timesteps(STEPS)
        y = x
        for t in loop_sched.timesteps:
            y = loop_sched.step(hand_cfg(u, c, S), t, y, return_dict=False)[0]
        return y

    return {
        "guided_ddim": lambda: ddim.step(hand_cfg(u, c, S), t_ddim, x, return_dict=False)[0],
        "ddpm_step": lambda: ddpm.step(u, t_ddpm, x, return_dict=False)[0],
        "loop50": loop,
    }


def compiled_cases(cell: Cell) -> dict[str, Callable[[], Any]]:
    """refdiff.compiled on this cell (compiled on first call, i.e. during warm-up)."""
    if cell.library != "torch":
        return {}
    from refdiff import compiled

    if not compiled.is_available():
        return {}
    x, u, c, z = cell.x, cell.u, cell.c, cell.z
    return {
        "q_sample": lambda: compiled.q_sample(x, AB_T, z),
        "cfg": lambda: compiled.cfg(u, c, S),
        "guided_ddim": lambda: compiled.guided_ddim_step(x, u, c, S, AB_T, AB_PREV),
        "ddpm_step": lambda: compiled.ddpm_step(x, u, AB_T, AB_PREV, z),
    }


def compile_times(cell: Cell) -> dict[str, dict]:
    """Seconds to compile each function of refdiff.compiled on this cell (first call minus
    an eager call), with fresh compiled wrappers so earlier compilations do not count."""
    import time

    from refdiff import compiled

    fns = {
        "guided_ddim": (compiled.compile_fn(compiled._guided_ddim_step),
                        lambda ab: (cell.x, cell.u, cell.c, S, ab, AB_PREV)),
        "ddpm_step": (compiled.compile_fn(rd.ddpm_step),
                      lambda ab: (cell.x, cell.u, ab, AB_PREV, cell.z)),
        "q_sample": (compiled.compile_fn(rd.q_sample), lambda ab: (cell.x, ab, cell.z)),
        "cfg": (compiled.compile_fn(rd.cfg), lambda ab: (cell.u, cell.c, S + ab)),
    }
    sync = cell.sync or (lambda: None)

    def timed(f, args):
        sync()
        t0 = time.perf_counter()
        f(*args)
        sync()
        return time.perf_counter() - t0

    out = {}
    for name, (fn, args) in fns.items():
        first = timed(fn, args(AB_T))
        eager = timed(fn.eager, args(AB_T))
        # a new Python-float ᾱ (or s): TorchDynamo specialised the first value, so it
        # traces and compiles again; this is what each further step of a schedule costs
        again = timed(fn, args(AB_T + 0.01))
        out[name] = {"first_call_s": first, "compile_s": max(first - eager, 0.0),
                     "recompile_s": max(again - eager, 0.0)}
    return out


_COLD_SCRIPT = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import torch
torch.set_num_threads({threads})
from benchmarks import cases as C
cell = C.Cell("torch", "cpu", "float32", {shape})
t_import = time.perf_counter() - t0
t0 = time.perf_counter()
torch.compile(lambda a: a * 2.0 + 1.0)(torch.ones(8))
t_start = time.perf_counter() - t0
times = C.compile_times(cell)
from benchmarks import loops as L
loop = L.torch_loop(cell)[1]
print(json.dumps({{"import_s": t_import, "startup_s": t_start, "times": times, "loop": loop}}))
"""


def cold_compile_times(shape=(16, 4, 64, 64), threads: int = 1, timeout: float = 300) -> dict:
    """Compile times in a fresh Python process with an empty Inductor cache directory.

    In a long-lived process (and across runs, through the on-disk cache) Inductor reuses
    generated kernels, so in-process compile times understate what a new user or a new
    server process pays; this measures that first, cold compilation. The first function
    process first compiles a trivial function, so Inductor's start-up is reported apart
    (``startup_s``); the compiled loop (:func:`benchmarks.loops.torch_loop`) compiles
    last. Returns ``{"import_s", "startup_s", "times": {op: {...}}, "loop": {...}}`` or
    ``{"error": ...}``.
    """
    import json
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        # the fresh process imports this package from its folder's parent, whatever the cwd
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=cache,
                   PYTHONPATH=path)
        script = _COLD_SCRIPT.format(threads=threads, shape=tuple(shape))
        try:
            proc = subprocess.run([sys.executable, "-c", script], env=env, text=True,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])
