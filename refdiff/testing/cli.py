"""``refdiff check <target>``: run the conformance kit from the command line.

Targets:

- ``diffusers:DDIMScheduler`` or ``diffusers:DDPMScheduler``, with ``--config key=value``
  for the scheduler configuration (``timestep_spacing=trailing``, ``steps_offset=1``, ...);
  the checks judge what the configuration uses (its schedule, its own timestep list, the
  conventions it implies), and each failure is classified as a finding about diffusers (a
  known convention) or a disagreement in the math.
- ``diffusers:EulerDiscreteScheduler``, ``diffusers:EulerAncestralDiscreteScheduler``,
  ``diffusers:HeunDiscreteScheduler``, ``diffusers:DPMSolverMultistepScheduler``,
  ``diffusers:FlowMatchEulerDiscreteScheduler``, with ``--config`` likewise
  (``use_karras_sigmas=True``, ``shift=3.0``, ``use_dynamic_shifting=True`` with ``mu=0.8``):
  the step check, "timesteps" (the configured σ or flow-time list for every n), "karras" /
  "flow_times" where they apply (:mod:`refdiff.testing.diffusers_solvers`).
- ``module:function``: your own function with the adapter signature of the check chosen with
  ``--checks`` (``ddpm_learned``: the DDPM step with a learned variance, the variance channel
  as ``var_values=``; ``--option clip_x0=dynamic:0.995:1.5``: dynamic thresholding) (a function whose first parameter is named ``schedule`` gets the check's
  schedule bound to it, so ``refdiff.testing.references:ddim_step`` works as a target). The
  current directory is put first on ``sys.path`` while the command runs, as ``python -m``
  does, so a module of the directory you run in is found first.

Every reproduction printed defines ``candidate`` and builds the example's arrays in the
target's backend and dtype, so that pasting it reproduces the failure. Nothing is written to
the working directory (Hypothesis keeps no database, and its cache goes to a temporary
directory).

Exit status: 0 when every check passes, 1 on a disagreement, 2 on bad arguments (one line on
stderr, no traceback): an unknown or ill-typed ``--config``/``--option``, a target that does
not import, a missing optional dependency, ``--max-examples`` < 1, ``--seed`` < 0.

References
----------
See :mod:`refdiff.testing` (DDPM arXiv:2006.11239v2, DDIM arXiv:2010.02502v4, ...).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import importlib.util
import inspect
import math
import os
import sys
from typing import Any, Callable

from refdiff.cli import UsageError

SCHEDULE_CHECKS = ("q_sample", "posterior", "ddpm", "ddpm_learned", "ddim",
                   "classifier_guidance", "loop", "cfgpp")
ARRAY_CHECKS = ("q_sample", "posterior", "ddpm", "ddpm_learned", "ddim", "cfg",
                "classifier_guidance", "loop", "apg", "cfgpp", "euler", "heun",
                "euler_ancestral", "flow_euler", "dpmpp_2m")
# keyword arguments of a check that the command line sets itself, not through --option
STRUCTURAL = ("schedule", "target", "max_examples", "seed", "model")
EXTRAS = {"diffusers": "diffusers", "torch": "torch", "array_api_strict": "test", "jax": "jax"}
FIXED, LEARNED = ("fixed_small", "fixed_large"), ("learned", "learned_range")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


INVALID = object()


def _names(choices: tuple) -> Callable[[Any], Any]:
    """A converter of one name, or comma-separated names, out of ``choices`` to a tuple."""
    def convert(v):
        items = tuple(v.split(",")) if isinstance(v, str) else tuple(v) if isinstance(
            v, (list, tuple)) else (v,)
        return items if items and all(i in choices for i in items) else INVALID
    return convert


def _when(test: Callable[[Any], bool], convert: Callable = lambda v: v) -> Callable[[Any], Any]:
    return lambda v: convert(v) if test(v) else INVALID


def _clip(v: Any) -> Any:
    """``clip_x0``: None, a number > 0, or ``dynamic[:RATIO[:MAX]]`` (a DynamicThreshold;
    MAX may be ``inf``)."""
    if v is None or (_is_real(v) and v > 0):
        return v
    if not isinstance(v, str) or v.split(":")[0] != "dynamic" or v.count(":") > 2:
        return INVALID
    from refdiff.thresholding import DynamicThreshold
    try:
        return DynamicThreshold(*(float(f) for f in v.split(":")[1:]))
    except (TypeError, ValueError):
        return INVALID


def _option_values() -> dict[str, tuple[str, Callable[[Any], Any]]]:
    """option -> (what it takes, a converter returning the value or INVALID)."""
    import refdiff as rd
    from refdiff.testing.strategies import SCHEDULE_KINDS

    def one_of(*names):
        return " or ".join(names), _when(lambda v: v in names)

    def integer(lo):
        return f"an integer >= {lo}", _when(lambda v: _is_int(v) and v >= lo)

    boolean = ("True or False", _when(lambda v: isinstance(v, bool)))
    return {
        "eta": ("a number in [0, 1]", _when(lambda v: _is_real(v) and 0 <= v <= 1, float)),
        "variance_type": one_of("fixed_small", "fixed_large", "learned", "learned_range"),
        "final_alpha_bar": one_of("one", "alpha_bar_0"),
        "clip_x0": ("None, a number > 0 or dynamic:RATIO:MAX (RATIO in (0, 1], MAX >= 1 or "
                    "inf)", _clip),
        "rederive_eps": boolean, "exact_ends": boolean,
        "offset": integer(0), "max_steps": integer(1), "T": integer(1), "max_T": integer(1),
        "min_T": integer(2), "sampler": one_of("ddim", "ddpm"),
        "dtype": one_of("float64", "float32", "float16", "bfloat16"),
        "spacings": (f"names out of {', '.join(rd.SPACINGS)}", _names(rd.SPACINGS)),
        "kinds": (f"names out of {', '.join(SCHEDULE_KINDS)}", _names(SCHEDULE_KINDS)),
        "convention": one_of("sigma", "steps"), "formulation": one_of("paper", "diffusers"),
        "alpha_bar_index": one_of("t", "t_minus_1"),
        "norm_threshold": ("a number >= 0", _when(lambda v: _is_real(v) and v >= 0, float)),
        "momentum": ("a number in [-1, 1]", _when(lambda v: _is_real(v) and -1 <= v <= 1, float)),
    }


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[low]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _pairs(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects key=value, got {item!r}")
        out[key.strip()] = _value(value.strip())
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refdiff check",
        epilog="exit status: 0 all checks pass, 1 a disagreement, 2 bad arguments. "
               "Nothing is written to the working directory.",
        description="Property-test diffusers' DDPM/DDIM schedulers or your own function against refdiff.")
    p.add_argument("target", help="diffusers:DDIMScheduler, diffusers:DDPMScheduler or "
                   "module:function (the current directory is put first on sys.path, as "
                   "python -m does)")
    p.add_argument("--checks", default=None, help="comma-separated: " + ", ".join(_check_names()))
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="scheduler configuration (diffusers targets)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="check option: eta=0.5, variance_type=fixed_large, clip_x0=1.0, ...")
    p.add_argument("--schedule", default=None, metavar="KIND:T",
                   help="schedule of a function target (default linear:1000)")
    p.add_argument("--backend", default=None,
                   choices=["numpy", "torch", "array_api_strict", "jax"],
                   help="where a function target's inputs live (default numpy)")
    p.add_argument("--dtype", default=None, choices=["float64", "float32", "float16", "bfloat16"],
                   help="their dtype (default float64; bfloat16 needs torch or jax)")
    p.add_argument("--max-examples", type=int, default=None, help="examples per check (>= 1)")
    p.add_argument("--seed", type=int, default=None,
                   help="an integer >= 0: a seeded random search (default: deterministic)")
    return p


def _check_names() -> list[str]:
    from refdiff.testing import CHECKS
    return list(CHECKS)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = _parser()
    parser.error = lambda message: (_ for _ in ()).throw(UsageError(message))  # one line, exit 2
    args = parser.parse_args(argv)
    if args.max_examples is not None and args.max_examples < 1:
        raise UsageError(f"--max-examples must be >= 1, got {args.max_examples}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    names = None if args.checks is None else [c.strip() for c in args.checks.split(",") if c.strip()]
    if names == []:
        raise UsageError("--checks names no check")
    unknown = [c for c in names or [] if c not in _check_names()]
    if unknown:
        raise UsageError(f"--checks: unknown check {unknown[0]!r}; choose from {', '.join(_check_names())}")
    args.checks = names
    return args


def _schedule(text: str):
    from refdiff.testing.strategies import SCHEDULE_KINDS, ScheduleSpec
    kind, _, T = text.partition(":")
    if kind not in SCHEDULE_KINDS or not T.isdigit() or int(T) < 2:
        raise UsageError(f"--schedule must be KIND:T with KIND in {', '.join(SCHEDULE_KINDS)} "
                         f"and T >= 2, got {text!r}")
    return ScheduleSpec(kind, int(T))


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{module} is not installed (pip install \"refdiff[{EXTRAS[module]}]\")")


def _load(target: str) -> Callable:
    """The function of ``module:function``, importing the module with the cwd first on sys.path."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"target must be module:function or diffusers:DDIMScheduler, got {target!r}")
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:  # as `python -m` does: modules of the current directory first
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any error of the user's module is reported
        raise UsageError(f"cannot import {module_name!r}: {_one_line(exc)}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise UsageError(f"module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise UsageError(f"{target!r} is not callable")
    return fn


def _accepted(check: str) -> set[str]:
    """The options a check takes (for the loop: the step conventions of both samplers)."""
    from refdiff.testing import CHECKS
    from refdiff.testing import references as R

    def keywords(fn, skip=STRUCTURAL + ("noise",)):
        return {k for k, p in inspect.signature(fn).parameters.items()
                if p.kind is p.KEYWORD_ONLY and k not in skip}

    out = keywords(CHECKS[check])
    if check == "loop":
        out |= keywords(R.ddim_step) | keywords(R.ddpm_step)
    return out


def _options(items: list[str], checks: list[str], accepted: Callable[[str], set] = _accepted,
             fixed: Callable[[str], dict] = lambda c: {}) -> dict:
    """``--option`` values, checked, as {check: {option: value}} for the checks that take each.

    ``accepted(check)`` are the options a check takes; ``fixed(check)`` those that the
    target's configuration sets (refused: the configuration decides them).
    """
    values = _option_values()
    out: dict[str, dict] = {c: {} for c in checks}
    for key, value in _pairs(items, "--option").items():
        takers = [c for c in checks if key in accepted(c)]
        if not takers:
            known = sorted(set().union(*(accepted(c) - set(fixed(c)) for c in checks)))
            raise UsageError(f"--option {key}: not an option of {', '.join(checks)}; they take "
                             f"{', '.join(known) or 'none'}")
        if any(key in fixed(c) for c in takers):
            raise UsageError(f"--option {key}: set by the configuration (use --config)")
        if key in values:
            what, convert = values[key]
            value = convert(value)
            if value is INVALID:
                raise UsageError(f"--option {key}={_value_text(items, key)}: expected {what}")
        for c in takers:
            out[c][key] = value
    if "loop" in out:
        sampler = out["loop"].get("sampler") or fixed("loop").get("sampler", "ddim")
        for key in {"ddim": ("variance_type",), "ddpm": ("eta", "rederive_eps")}[sampler]:
            if key in out["loop"]:
                raise UsageError(f"--option {key}: not an option of the {sampler} loop")
    for check, allowed in (("ddpm", FIXED), ("loop", FIXED), ("ddpm_learned", LEARNED)):
        value = out.get(check, {}).get("variance_type")
        if value is not None and value not in allowed:
            other = "ddpm_learned" if check != "ddpm_learned" else "ddpm"
            raise UsageError(f"--option variance_type={value}: check {check!r} takes "
                             f"{' or '.join(allowed)} (use --checks {other})")
    return out


def _value_text(items: list[str], key: str) -> str:
    return next(i.partition("=")[2].strip() for i in reversed(items)
                if i.partition("=")[0].strip() == key)


def _run_diffusers(args) -> list:
    from refdiff.testing.diffusers_adapters import DiffusersScheduler, run_checks
    for flag, value in (("--backend", args.backend), ("--dtype", args.dtype),
                        ("--schedule", args.schedule)):
        if value is not None:
            raise UsageError(f"{flag} applies to module:function targets (diffusers targets run "
                             "on torch float64 with the configured schedule)")
    _require("diffusers")
    _require("torch")
    config = _pairs(args.config, "--config")
    name = args.target.split(":", 1)[1]
    from refdiff.testing import diffusers_solvers as DS
    if name in DS.NAMES:
        return _run_diffusers_solver(args, DS, name, config)
    try:
        adapter = DiffusersScheduler(name, **config)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--config {exc}" if name in ("DDIMScheduler", "DDPMScheduler")
                         else f"{args.target}: {exc}") from None
    checks, options = _adapter_checks(args, adapter)
    c = adapter.config
    notes = [f"schedule {adapter.schedule_spec()!r}",
             f"timesteps: every n, {c['timestep_spacing']} spacing, steps_offset={c['steps_offset']}",
             "step checks on refdiff's float64 table"]
    if c.get("thresholding"):
        notes.append(f"x0 thresholded: {adapter.conventions('ddim' if adapter.is_ddim else 'ddpm')['clip_x0']!r}")
    if adapter.learned:
        notes.append(f"variance_type={c['variance_type']!r}: step check ddpm_learned, no loop "
                     "check (its model returns eps only)")
    print(f"target: {adapter!r} ({'; '.join(notes)}; see docs/testing.md)")
    return run_checks(adapter, checks, max_examples=args.max_examples, seed=args.seed, **options)


def _adapter_checks(args, adapter) -> tuple[list, dict]:
    """The --checks (all that apply by default) and their --option values for an adapter."""
    checks = args.checks or list(adapter.checks())
    bad = [c for c in checks if c not in adapter.checks()]
    if bad:
        raise UsageError(f"--checks {bad[0]} does not apply to {args.target}; choose from "
                         f"{', '.join(adapter.checks())}")
    options = _options(args.option, checks, fixed=adapter.conventions,
                       accepted=lambda c: set() if c == "timesteps" else _accepted(c))
    return checks, options


def _run_diffusers_solver(args, DS, name: str, config: dict) -> list:
    """A σ-space or flow scheduler (:mod:`refdiff.testing.diffusers_solvers`)."""
    try:
        adapter = DS.DiffusersSolver(name, **config)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--config {exc}") from None
    checks, options = _adapter_checks(args, adapter)
    t = adapter.target
    print(f"target: {adapter!r} (timesteps: its own list for n = 1 ... 200, 250, 500, 1000; "
          f"step checks on {t.backend} {t.dtype}; see docs/testing.md)")
    return DS.run_solver_checks(adapter, checks, max_examples=args.max_examples, seed=args.seed,
                                **options)


def _run_function(args) -> list:
    from refdiff.testing import CHECKS, Target
    from refdiff.testing._engine import bind_reproduction
    if args.config:
        raise UsageError("--config applies to diffusers targets (use --option for a function)")
    fn = _load(args.target)
    if not args.checks:
        raise UsageError("a module:function target needs --checks (e.g. --checks ddim)")
    spec = _schedule(args.schedule or "linear:1000")
    target = Target(args.backend or "numpy", args.dtype or "float64")
    if target.backend != "numpy":
        _require(target.backend)
    if target.dtype == "bfloat16" and target.backend not in ("torch", "jax"):
        raise UsageError("--dtype bfloat16 needs --backend torch or jax")
    if target.backend == "jax" and target.dtype == "float64":
        import jax  # float64 arrays need JAX's 64-bit mode; this process is the command's own
        jax.config.update("jax_enable_x64", True)
    module, attr = args.target.split(":", 1)
    candidate = [f"from {module} import {attr} as candidate"]
    params = list(inspect.signature(fn).parameters)
    if params and params[0] == "schedule":
        fn = functools.partial(fn, spec.build())
        candidate += ["import functools", f"candidate = functools.partial(candidate, {spec!r})"]
    options = _options(args.option, args.checks)
    print(f"target: {args.target} on {target.backend} {target.dtype}")
    results = []
    for name in args.checks:
        kwargs = dict(options[name], seed=args.seed)
        if args.max_examples is not None:
            kwargs["max_examples"] = args.max_examples
        if name in SCHEDULE_CHECKS:
            kwargs["schedule"] = spec
        if name in ARRAY_CHECKS:
            kwargs["target"] = target
        try:
            result = CHECKS[name](fn, **kwargs)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--option does not fit check {name!r}: {_one_line(exc)}") from None
        bind_reproduction(result, candidate, target if name in ARRAY_CHECKS else None)
        results.append(result)
    return results


@contextlib.contextmanager
def _restored_path():
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def main(argv: list[str]) -> int:
    """Run the checks on the target, print a report per check; 1 if any check fails."""
    from refdiff.testing._engine import scratch_storage

    args = _parse(argv)
    run = _run_diffusers if args.target.startswith("diffusers:") else _run_function
    with scratch_storage(), _restored_path():
        results = run(args)
    for result in results:
        print(result.report())
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0
