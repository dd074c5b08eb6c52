"""``refdiff bench``: timings, memory traffic, overhead and scaling of refdiff's sampling math.

Tooling, not math: these modules may import NumPy and torch (the math modules may not).

Modules: :mod:`.timer` (interleaved timing with synchronisation, medians and spread),
:mod:`.bandwidth` (this machine's copy bandwidth), :mod:`.cases` (each operation as refdiff,
hand-written NumPy/torch, and diffusers), :mod:`.overhead` (per-call cost on tiny arrays, every
public function), :mod:`.scaling` (time and peak memory against batch size and steps),
:mod:`.targets` (the issue's targets: met, not met or not measured, with the reason),
:mod:`.report` (BENCHMARKS.md), :mod:`.plot` and :mod:`.cli` (``refdiff bench``).

Use :func:`run` from Python; it returns the raw results as a JSON-ready dict.
"""

def __getattr__(name):  # lazy: importing a submodule does not run the CLI module
    if name in ("main", "run"):
        from refdiff.bench import cli
        return getattr(cli, name)
    raise AttributeError(name)

__all__ = ["main", "run"]
