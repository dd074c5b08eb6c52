"""``refdiff check <target>``: run the conformance kit from the command line.

Targets:

- ``diffusers:DDIMScheduler`` or ``diffusers:DDPMScheduler``, with ``--config key=value``
  for the scheduler configuration (``timestep_spacing=trailing``, ``steps_offset=1``, ...);
  the checks that apply run with the conventions the configuration implies.
- ``module:function``: your own function with the adapter signature of the check chosen with
  ``--checks`` (a function whose first parameter is named ``schedule`` gets the check's
  schedule bound to it, so ``refdiff.testing.references:ddim_step`` works as a target).

Exit status: 0 when every check passes, 1 on a disagreement, 2 on bad arguments.

References
----------
See :mod:`refdiff.testing` (DDPM arXiv:2006.11239v2, DDIM arXiv:2010.02502v4, ...).
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import inspect
import os
import sys
from typing import Any

from refdiff.cli import UsageError

SCHEDULE_CHECKS = ("q_sample", "posterior", "ddpm", "ddim", "classifier_guidance", "loop")


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[low]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _pairs(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} expects key=value, got {item!r}")
        out[key.strip()] = _value(value.strip())
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refdiff check", epilog="exit status: 0 all checks pass, 1 a disagreement, 2 bad arguments",
        description="Property-test diffusers' DDPM/DDIM schedulers or your own function against refdiff.")
    p.add_argument("target", help="diffusers:DDIMScheduler, diffusers:DDPMScheduler or module:function")
    p.add_argument("--checks", default=None, help="comma-separated: " + ", ".join(_check_names()))
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="scheduler configuration (diffusers targets)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="check option: eta=0.5, variance_type=fixed_large, clip_x0=1.0, ...")
    p.add_argument("--schedule", default="linear:1000", metavar="KIND:T",
                   help="schedule of a function target (default linear:1000)")
    p.add_argument("--backend", default="numpy", choices=["numpy", "torch", "array_api_strict"])
    p.add_argument("--dtype", default="float64", choices=["float64", "float32", "float16", "bfloat16"])
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="random search (default: deterministic)")
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
    names = None if args.checks is None else [c.strip() for c in args.checks.split(",") if c.strip()]
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


def _load(target: str):
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"target must be module:function or diffusers:DDIMScheduler, got {target!r}")
    if os.getcwd() not in sys.path:  # as `python -m` does: modules of the current directory
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load {target!r}: {exc}") from None


def _run_diffusers(args) -> list:
    from refdiff.testing.diffusers_adapters import DiffusersScheduler, run_checks
    try:
        adapter = DiffusersScheduler(args.target.split(":", 1)[1], **_pairs(args.config, "--config"))
    except ImportError:
        raise UsageError("diffusers is not installed (pip install 'refdiff[diffusers]')") from None
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{args.target}: {exc}") from None
    print(f"target: {adapter!r} (step checks on refdiff's float64 table; see docs/testing.md)")
    options = _pairs(args.option, "--option")
    per_check = {name: options for name in ("ddim", "ddpm", "loop")}
    return run_checks(adapter, args.checks, max_examples=args.max_examples, seed=args.seed,
                      **per_check)


def _run_function(args) -> list:
    from refdiff.testing import CHECKS, Target
    fn = _load(args.target)
    if not args.checks:
        raise UsageError("a module:function target needs --checks (e.g. --checks ddim)")
    spec = _schedule(args.schedule)
    params = list(inspect.signature(fn).parameters)
    if params and params[0] == "schedule":
        fn = functools.partial(fn, spec.build())
    options = _pairs(args.option, "--option")
    print(f"target: {args.target} on {args.backend} {args.dtype}")
    results = []
    for name in args.checks:
        kwargs = dict(options, seed=args.seed)
        if args.max_examples is not None:
            kwargs["max_examples"] = args.max_examples
        if name in SCHEDULE_CHECKS:
            kwargs["schedule"] = spec
        if name not in ("schedule", "timesteps"):
            kwargs["target"] = Target(args.backend, args.dtype)
        try:
            results.append(CHECKS[name](fn, **kwargs))
        except TypeError as exc:
            raise UsageError(f"--option does not fit check {name!r}: {exc}") from None
    return results


def main(argv: list[str]) -> int:
    """Run the checks on the target, print a report per check; 1 if any check fails."""
    args = _parse(argv)
    results = _run_diffusers(args) if args.target.startswith("diffusers:") else _run_function(args)
    for result in results:
        print(result.report())
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0
