"""refdiff's benchmarks: timings, memory traffic, overhead and scaling of the sampling math.

Run from the repository root as ``python -m benchmarks`` (see :mod:`benchmarks.cli`). This
folder is tooling kept next to the package, not part of it: it is not installed with
refdiff, it may import NumPy and torch (the math modules may not), and nothing in
``refdiff/`` imports it.

Modules: :mod:`.timer` (interleaved timing with synchronisation, medians and spread),
:mod:`.bandwidth` (this machine's copy bandwidth), :mod:`.cases` (each operation as refdiff,
hand-written NumPy/torch, and diffusers), :mod:`.loops` (the compiled sampling loop
``DDIMLoop`` on torch and JAX, and JAX's jitted guided step), :mod:`.overhead` (per-call cost
on tiny arrays, every public function), :mod:`.scaling` (time and peak memory against batch
size and steps), :mod:`.gpu` (the GPU preset, ``python -m benchmarks --gpu``: the CUDA tests
and the CUDA rows, merged into a recorded report; without CUDA it says so and exits 0),
:mod:`.targets` (the benchmark targets: met, not met or not measured, with the reason),
:mod:`.report` (the markdown report), :mod:`.plot` and :mod:`.cli` (``python -m benchmarks``).

Use :func:`run` from Python; it returns the raw results as a JSON-ready dict.
"""

def __getattr__(name):  # lazy: importing a submodule does not run the CLI module
    if name in ("main", "run"):
        from benchmarks import cli
        return getattr(cli, name)
    raise AttributeError(name)

__all__ = ["main", "run"]
