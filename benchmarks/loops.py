"""The compiled sampling loop (:class:`refdiff.compiled.DDIMLoop`) and JAX's jitted step.

Three things measured here, next to the eager rows of :mod:`benchmarks.cases`:

- **torch loop**: ``DDIMLoop(backend="inductor").sample`` over the 50 steps of
  :mod:`benchmarks.cases` (``loop50``, CFG s = 7.5, η = 0), with the cell's trivial model
  (it returns the precomputed ε_u or ε_c, no work), so the time is the loop's own: the
  compiled step, TorchDynamo's guard checks and the Python of the loop. The memory-traffic
  floor of one step is the guided DDIM step's: read x_t, ε_u, ε_c and write x_prev, i.e.
  4 arrays of the cell's shape and dtype (the model's reads and writes are excluded, since
  it does none). :func:`torch_loop` also records what the loop compiled
  (``loop.last_run``): the compilations of the first run, the ones after its first step
  (0 means no recompilation), and those of two later runs with another scale and another
  number of steps (0: the step is reused).
- **JAX step**: ``jax.jit`` of :func:`refdiff.guided_ddim_step` (the fused one linear
  combination), of its definition ``ddim_step(x, cfg(ε_u, ε_c, s), ᾱ_t, ᾱ_prev)`` and of the
  hand-written expression, with s, ᾱ_t and ᾱ_prev passed as traced 0-d float32 arrays, so
  one compilation serves every step.
- **JAX loop**: ``DDIMLoop().sample`` on JAX arrays, one ``jax.jit`` of a ``lax.scan`` over
  the 50 steps, and the hand-written step in the same scan. Its model returns its condition
  argument: ``Guidance(cond=ε_c, uncond=ε_u)``, so the traced model does no work either.
  Its later run keeps the number of steps (the scan's length is static: another number
  compiles again, by design) and changes the scale.

Every JAX call blocks on its result (``block_until_ready``) before the next call and before
the clock is read: JAX dispatches asynchronously, torch on the CPU does not, so the two are
timed alike.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import refdiff as rd
from benchmarks.cases import AB_PREV, AB_T, S, hand_guided_ddim, set_loop_tables

LOOP_STEPS_LATER = 25  # steps of the later run that checks a new schedule does not recompile
LOOP_SCALE_LATER = 5.0  # its scale


# --- torch: DDIMLoop ------------------------------------------------------------------------

def torch_loop(cell: Any, backend: str = "inductor") -> tuple[Callable[[], Any], dict]:
    """A fresh ``DDIMLoop`` on a torch cell: the timed call and what its runs compiled.

    ``backend`` is the TorchDynamo backend (the tests use "aot_eager": no code generation).

    Returns ``(call, info)``: ``call()`` runs the 50-step loop (already compiled);
    ``info`` has ``first_run_s`` (the run that compiled), ``steady_run_s`` (the next, same
    arguments), ``compile_s`` (their difference), ``compilations`` and ``after_first_step``
    of the first run, and ``later_compilations`` (the second run plus a run with another
    scale and number of steps; 0 when the one graph is reused).
    """
    import torch
    from refdiff import compiled

    torch._dynamo.reset()  # a fresh cache: this loop's compilation is counted, not reused
    loop = compiled.DDIMLoop(backend=backend)
    g = rd.Guidance(cond=1, uncond=0, scale=S)
    sync = cell.sync or (lambda: None)

    def call(steps=None, guidance=g):
        kw = dict(num_inference_steps=steps) if steps else dict(timesteps=cell.timesteps)
        return loop.sample(cell.model, cell.x, cell.schedule, guidance=guidance, **kw)

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    first = timed(call)
    run1 = loop.last_run
    steady = timed(call)
    later = loop.last_run.compilations
    timed(lambda: call(LOOP_STEPS_LATER, rd.Guidance(cond=1, uncond=0, scale=LOOP_SCALE_LATER)))
    later += loop.last_run.compilations
    info = {"backend": cell.label, "shape": list(cell.shape), "dtype": cell.dtype,
            "impl": "compiled", "steps": run1.steps, "first_run_s": first,
            "steady_run_s": steady, "compile_s": max(first - steady, 0.0),
            "compilations": run1.compilations, "after_first_step": run1.after_first_step,
            "later_compilations": later, "cuda_graphs": run1.cuda_graphs}
    return call, info


# --- JAX -----------------------------------------------------------------------------------

def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def _identity_model(x_t, t, cond):
    """The JAX loop's trivial model: its condition is the precomputed ε of the branch."""
    return cond


def _hand_step_xp(x, u, c, s, ab_t, ab_prev, sqrt):
    """The hand-written guided DDIM step with a library's sqrt (traced ᾱ need jnp.sqrt)."""
    e = u + s * (c - u)
    x0 = (x - sqrt(1.0 - ab_t) * e) / sqrt(ab_t)
    return sqrt(ab_prev) * x0 + sqrt(1.0 - ab_prev) * e


class JaxCell:
    """JAX CPU arrays of one shape (float32), the same numbers as :class:`cases.Cell`."""

    library, device, dtype = "jax", "cpu", "float32"
    sync = None  # each call blocks on its own result (see the module docstring)

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        import jax.numpy as jnp
        import numpy as np

        self.shape = shape
        rng = np.random.default_rng(seed)
        host = [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]
        self.x, self.u, self.c, self.z = (jnp.asarray(h) for h in host)
        self.itemsize = 4
        set_loop_tables(self, shape)

    @property
    def label(self) -> str:
        return "jax-cpu"


def jax_cases(cell: JaxCell) -> tuple[dict[str, dict[str, Callable[[], Any]]], dict]:
    """The jitted JAX implementations, by impl then op, and the JAX loop's compile info.

    ``guided_ddim``: ``refdiff`` (jit of the composition), ``fused`` (jit of
    :func:`refdiff.guided_ddim_step`) and ``hand``; ``loop50``: ``compiled``
    (``DDIMLoop().sample``) and ``hand`` (the hand-written step in one jitted ``lax.scan``).
    Every callable blocks on its result.
    """
    import jax
    import jax.numpy as jnp
    from refdiff import compiled

    x, u, c = cell.x, cell.u, cell.c
    f32 = jnp.float32  # the traced scalars in float32, also where jax_enable_x64 is on
    s, ab_t, ab_prev = (jnp.asarray(v, dtype=f32) for v in (S, AB_T, AB_PREV))  # traced 0-d
    spec = jax.jit(lambda x, u, c, s, a, ap: rd.ddim_step(x, rd.cfg(u, c, s), a, ap))
    fused = jax.jit(rd.guided_ddim_step)
    hand = jax.jit(lambda x, u, c, s, a, ap: _hand_step_xp(x, u, c, s, a, ap, jnp.sqrt))
    abs_t = jnp.asarray(cell.alpha_bars[:-1], dtype=f32)
    abs_prev = jnp.asarray(cell.alpha_bars[1:], dtype=f32)

    @jax.jit
    def hand_scan(x, u, c, s, a_t, a_prev):
        def body(y, level):
            return _hand_step_xp(y, u, c, s, level[0], level[1], jnp.sqrt), None
        return jax.lax.scan(body, x, (a_t, a_prev))[0]

    loop = compiled.DDIMLoop()
    g = rd.Guidance(cond=c, uncond=u, scale=S)

    def run_loop(steps=None, guidance=g):
        kw = dict(num_inference_steps=steps) if steps else dict(timesteps=cell.timesteps)
        return loop.sample(_identity_model, x, cell.schedule, guidance=guidance,
                           **kw).block_until_ready()

    t0 = time.perf_counter()
    run_loop()
    first = time.perf_counter() - t0
    run1 = loop.last_run
    t0 = time.perf_counter()
    run_loop()
    steady = time.perf_counter() - t0
    later = loop.last_run.compilations
    run_loop(None, rd.Guidance(cond=c, uncond=u, scale=LOOP_SCALE_LATER))  # same steps, new s
    later += loop.last_run.compilations
    info = {"backend": cell.label, "shape": list(cell.shape), "dtype": cell.dtype,
            "impl": "compiled", "steps": run1.steps, "first_run_s": first,
            "steady_run_s": steady, "compile_s": max(first - steady, 0.0),
            "compilations": run1.compilations, "after_first_step": run1.after_first_step,
            "later_compilations": later, "cuda_graphs": False}
    impls = {
        "refdiff": {"guided_ddim": lambda: spec(x, u, c, s, ab_t, ab_prev).block_until_ready()},
        "fused": {"guided_ddim": lambda: fused(x, u, c, s, ab_t, ab_prev).block_until_ready()},
        "hand": {"guided_ddim": lambda: hand(x, u, c, s, ab_t, ab_prev).block_until_ready(),
                 "loop50": lambda: hand_scan(x, u, c, s, abs_t, abs_prev).block_until_ready()},
        "compiled": {"loop50": run_loop},
    }
    return impls, info


def jax_matches_numpy(shape=(2, 4, 3, 3)) -> dict[str, float]:
    """Largest |JAX − NumPy float64 hand-written| of each JAX case (for the tests)."""
    import numpy as np

    cell = JaxCell(shape)
    impls, _ = jax_cases(cell)
    x, u, c = (np.asarray(a, dtype=np.float64) for a in (cell.x, cell.u, cell.c))
    step = hand_guided_ddim(x, u, c, S, AB_T, AB_PREV)
    loop = x
    for a_t, a_prev in zip(cell.alpha_bars, cell.alpha_bars[1:]):
        loop = hand_guided_ddim(loop, u, c, S, a_t, a_prev)
    want = {"guided_ddim": step, "loop50": loop}
    return {f"{impl}:{op}": float(np.max(np.abs(np.asarray(fn(), dtype=np.float64) - want[op])))
            for impl, fns in impls.items() for op, fn in fns.items()}
