"""The search engine behind every check: Hypothesis finds, shrinks and reports a disagreement.

A check is a strategy of examples plus a ``trial(example)`` that runs the candidate and the
reference and raises :class:`~refdiff.testing.tolerance.ConformanceError` on a disagreement.
:func:`run` searches with Hypothesis (deterministic by default: ``derandomize``; or a given
``seed``; the constants Hypothesis mines from source are the kit's own, so the examples do
not depend on other code that happens to be loaded), lets it shrink the first failure to a
minimal example, and returns a :class:`CheckResult` with that example, both outputs, the size
of the difference, the number of examples and the time it took to hit the first failure, and
a copy-paste reproduction.

References
----------
D. R. MacIver et al., "Hypothesis: A new approach to property-based testing", JOSS 4(43), 2019.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from hypothesis import HealthCheck, Phase, given, reporting, settings
from hypothesis import seed as hseed

from refdiff.testing.tolerance import ConformanceError, to_numpy


@dataclass
class CheckResult:
    """The outcome of one conformance check.

    ``passed`` is True when no disagreement was found in ``examples`` examples. On a failure,
    ``counterexample`` is the shrunk example (a dict), ``actual``/``expected`` both outputs,
    ``max_abs``/``max_rel`` the difference, ``message`` what disagreed, ``examples_to_fail``
    and ``time_to_fail`` how long the search took to hit it, ``reproduction`` a snippet;
    ``classification`` (set by adapters that know their target's conventions, e.g. the
    diffusers adapters) says whether the failure is a known finding or a math disagreement.
    """

    name: str
    passed: bool
    examples: int
    seconds: float
    counterexample: dict | None = None
    actual: Any = None
    expected: Any = None
    max_abs: float = 0.0
    max_rel: float = 0.0
    message: str = ""
    examples_to_fail: int | None = None
    time_to_fail: float | None = None
    reproduction: str = ""
    settings: dict = field(default_factory=dict)
    classification: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def report(self) -> str:
        """A readable multi-line report: PASS/FAIL, the counterexample, outputs, repro."""
        if self.passed:
            return f"PASS  {self.name}  ({self.examples} examples, {self.seconds:.2f} s)"
        n = self.examples_to_fail
        lines = [f"FAIL  {self.name}  (first failure after {n} example{'s' * (n != 1)}, "
                 f"{self.time_to_fail:.2f} s; shrunk)"]
        if self.classification:
            lines.append(f"  {self.classification}")
        lines += [f"  what: {self.message}",
                 f"  max |actual - expected| = {self.max_abs:.3e}   "
                 f"max relative = {self.max_rel:.3e}",
                 "  counterexample:"]
        lines += [f"    {k} = {_short(v)}" for k, v in (self.counterexample or {}).items()]
        lines += [f"  actual:   {_short(self.actual)}", f"  expected: {_short(self.expected)}",
                  "  reproduce:"]
        lines += ["    " + line for line in self.reproduction.splitlines()]
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raise :class:`ConformanceError` with :meth:`report` if the check failed."""
        if not self.passed:
            raise ConformanceError(self.report())


def _short(v: Any, limit: int = 160) -> str:
    if isinstance(v, (list, tuple)) and v and hasattr(v[0], "shape"):
        text = "[" + ", ".join(_short(a, 60) for a in v) + "]"
    elif hasattr(v, "shape") and not isinstance(v, np.ndarray):
        text = f"{type(v).__module__.split('.')[0]} {v.dtype} " + np.array2string(to_numpy(v), precision=6)
    elif isinstance(v, np.ndarray):
        text = np.array2string(v, precision=6, separator=", ")
    else:
        text = repr(v)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def literal(v: Any) -> str:
    """Python source for a value of an example (arrays as exact ``np.array([...])``)."""
    if isinstance(v, np.ndarray):
        return f"np.array({v.tolist()!r})"
    if isinstance(v, (list, tuple)) and v and isinstance(v[0], np.ndarray):
        return "[" + ", ".join(literal(a) for a in v) + "]"
    return repr(v)


def _is_arrays(v: Any) -> bool:
    return isinstance(v, np.ndarray) or (isinstance(v, (list, tuple)) and bool(v)
                                         and all(isinstance(a, np.ndarray) for a in v))


def _moved(call: str, names: dict) -> str:
    """The candidate's call with each array argument (not a keyword's name) on the target."""
    for name, value in names.items():
        put = (f"[target.put(a) for a in {name}]" if isinstance(value, (list, tuple))
               else f"target.put({name})")
        call = re.sub(rf"(?<![\w.]){re.escape(name)}\b(?!\s*=[^=])", put, call)
    return call


def bind_reproduction(result: "CheckResult", candidate: list[str], target: Any = None) -> None:
    """Make a failed result's reproduction runnable as pasted, for one candidate and target.

    ``candidate`` are the source lines that define ``candidate`` (an import, an adapter);
    they go just before refdiff's ``expected = ...`` line. For a ``target`` (a
    :class:`~refdiff.testing.Target`) other than NumPy float64, the example's arrays are
    rounded to the target's dtype (kept in float64: the values refdiff and the error bound
    are computed on), the candidate's call moves them to the target's backend and dtype, and
    the final ``assert_close`` names the dtype and device.
    """
    if result.passed or not result.reproduction:
        return
    lines = result.reproduction.splitlines()
    at = next((i for i, ln in enumerate(lines) if ln.startswith("expected = ")), len(lines))
    head = list(candidate)
    if target is not None and (target.backend, target.dtype) != ("numpy", "float64"):
        arrays = {k: v for k, v in (result.counterexample or {}).items() if _is_arrays(v)}
        head += ["from refdiff.testing import Target",
                 f"target = Target({target.backend!r}, {target.dtype!r}, {target.device!r})"]
        if target.dtype != "float64":
            head.append(f"# rounded to {target.dtype}, kept in float64: what refdiff computes on")
            head += [f"{k} = [target.rounded(a) for a in {k}]" if isinstance(v, (list, tuple))
                     else f"{k} = target.rounded({k})" for k, v in arrays.items()]
        claim = f"assert_close(actual, expected, dtype={target.dtype!r}, device={target.device!r}"
        lines = [_moved(ln, arrays) if ln.startswith("actual = ") else
                 claim + ln.split("#")[0].rstrip()[len("assert_close(actual, expected"):]
                 if ln.startswith("assert_close(actual, expected") else ln for ln in lines]
    lines[at:at] = head
    result.reproduction = "\n".join(lines)


@contextlib.contextmanager
def scratch_storage():
    """Send Hypothesis' own files (its cache of source constants) to a temporary directory.

    ``database=None`` keeps examples out of ``.hypothesis/``, but Hypothesis still caches the
    constants it collects from local modules under ``./.hypothesis``; inside this block that
    cache lives in a temporary directory, removed on exit, so nothing is written to the
    working directory.
    """
    from hypothesis import configuration

    previous = configuration.storage_directory(intent_to_write=False).home_directory
    with tempfile.TemporaryDirectory(prefix="refdiff-hypothesis-") as scratch:
        configuration.set_hypothesis_home_dir(scratch)
        try:
            yield
        finally:
            configuration.set_hypothesis_home_dir(previous)


_KIT_CONSTANTS: list = []  # the pool of _kit_constants, built on first use


def _kit_constants(providers):
    """The literals of this package's own source files (refdiff/testing/*.py, in sorted
    order), as Hypothesis' constant pool: fixed for a given version of the kit."""
    if not _KIT_CONSTANTS:
        import pathlib

        from hypothesis.internal.constants_ast import _constants_from_source
        from sortedcontainers import SortedSet

        from hypothesis.internal.floats import float_to_int

        pool = providers.Constants(integers=SortedSet(), floats=SortedSet(key=float_to_int),
                                   bytes=SortedSet(), strings=SortedSet())
        for path in sorted(pathlib.Path(__file__).parent.glob("*.py")):
            try:
                pool = pool | _constants_from_source(path.read_bytes(), limit=True)
            except Exception:  # noqa: BLE001 - a file Hypothesis cannot parse adds nothing
                continue
        _KIT_CONSTANTS.append(pool)
    return _KIT_CONSTANTS[0]


@contextlib.contextmanager
def _kit_constants_only():
    """Draw Hypothesis' "local constants" from the kit's own source, not from whatever is
    loaded.

    Hypothesis (6.131+) now and then draws a literal it found in the source of any local
    module loaded in the process (refdiff's, the tests', the caller's). The "derandomized"
    search then depends on the text of unrelated code and on which modules happen to be
    imported: an edit anywhere, or running one test instead of the suite, changes the
    examples. Inside this block the pool is the literals of refdiff/testing/*.py (boundary
    values such as 0.5, 1e-20, 1000 keep their pull), the same whatever else is loaded, so a
    check searches the same examples for the same kit and code under test. The cache of
    permitted constants is cleared on entry and exit. A Hypothesis without this mechanism
    is left as it is.
    """
    try:
        from hypothesis.internal.conjecture import providers
        original, cache = providers._get_local_constants, providers.CONSTANTS_CACHE.cache
        pool = _kit_constants(providers)
    except (ImportError, AttributeError):  # another Hypothesis: nothing to do
        yield
        return
    cache.clear()
    providers._get_local_constants = lambda: pool
    try:
        yield
    finally:
        providers._get_local_constants = original
        cache.clear()


class _Failure(Exception):
    pass


def run(name: str, strategy, trial: Callable[[Any], None], *, describe: Callable[[Any], dict],
        reproduce: Callable[[dict], str],
        max_examples: int = 100, seed: int | None = None) -> CheckResult:
    """Search ``strategy`` for an example on which ``trial`` raises; shrink; report.

    ``trial(example)`` returns normally on agreement and raises on a disagreement; a
    :class:`ConformanceError` raised by it should carry ``actual``, ``expected`` attributes
    (see :func:`disagree`). Any other exception raised by the candidate also counts as a
    failure and is reported with its type and message. ``describe(example)`` names the
    parts of an example (the reported counterexample); ``reproduce(named)`` writes the
    snippet from it. ``seed=None`` derandomizes (the same
    examples every run, as CI needs); an int seeds a random search.
    """
    state: dict[str, Any] = {"n": 0, "first": None, "last": None, "t0": time.perf_counter()}

    def inner(example):
        state["n"] += 1
        try:
            trial(example)
        except Exception as exc:  # noqa: BLE001 - any candidate error is a finding
            if state["first"] is None:
                state["first"] = (state["n"], time.perf_counter() - state["t0"])
            state["last"] = (example, exc)
            raise _Failure() from exc

    test = _settings(max_examples, seed)(given(strategy)(inner))
    if seed is not None:
        test = hseed(seed)(test)
    with reporting.with_reporter(lambda *_: None), _kit_constants_only():
        try:
            test()
        except _Failure:
            pass
        except Exception:
            if state["last"] is None:
                raise
    seconds = time.perf_counter() - state["t0"]
    meta = {"max_examples": max_examples, "seed": seed}
    if state["last"] is None:
        return CheckResult(name, True, state["n"], seconds, settings=meta)
    example, exc = state["last"]
    return _failed(name, describe(example), exc, state, seconds, reproduce, meta)


def _settings(max_examples: int, seed: int | None) -> settings:
    """Deterministic (``derandomize``) unless seeded; no database, deadline or health checks."""
    return settings(max_examples=max_examples, derandomize=seed is None, database=None,
                    deadline=None, print_blob=False, report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=list(HealthCheck))


def _failed(name: str, named: dict, exc: Exception, state: dict, seconds: float,
            reproduce: Callable[[dict], str], meta: dict) -> CheckResult:
    """The CheckResult of a failed search, from the shrunk example and its exception."""
    message = str(exc) if isinstance(exc, ConformanceError) else f"{type(exc).__name__}: {exc}"
    return CheckResult(
        name, False, state["n"], seconds, counterexample=named,
        actual=getattr(exc, "actual", None), expected=getattr(exc, "expected", None),
        max_abs=getattr(exc, "max_abs", float("nan")), max_rel=getattr(exc, "max_rel", float("nan")),
        message=message.splitlines()[0] if message else type(exc).__name__,
        examples_to_fail=state["first"][0], time_to_fail=state["first"][1],
        reproduction=reproduce(named), settings=meta)


def disagree(message: str, actual: Any, expected: Any, max_abs: float = float("inf"),
             max_rel: float = float("inf")) -> ConformanceError:
    """A :class:`ConformanceError` carrying both outputs and the size of the difference."""
    err = ConformanceError(message)
    err.actual, err.expected, err.max_abs, err.max_rel = actual, expected, max_abs, max_rel
    return err
