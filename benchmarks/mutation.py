"""``python -m benchmarks.mutation``: mutation testing of the core math with mutmut, and a
markdown report of what the fast test subset kills (run it from the repository root).

    python -m benchmarks.mutation                      # every math module (tens of minutes on
                                                       # 2 cores): ./mutation_report.md and
                                                       # ./mutation_results.json
    python -m benchmarks.mutation --modules steps forward --out /tmp/mut_steps.md
    python -m benchmarks.mutation --write-docs         # the run recorded in docs/mutation.md
    python -m benchmarks.mutation --workdir /tmp/mut --report-only   # re-read a finished run

mutmut (the ``test`` extra; configured in ``[tool.mutmut]`` of pyproject.toml) mutates the
math modules and runs, for each mutant, the tests of the fast subset that cover the mutated
function. It runs in a copy of the repository (``--workdir``, default a temporary folder), so
the working tree and the shared editable install are never touched; inside the copy,
``import refdiff`` resolves to the copy (checked before the run). A kept ``--workdir`` makes a
rerun incremental: mutmut reruns only what changed.

Policy (also stated in the report): ``raise`` statements are not mutated (the conditions that
guard them are); the exception type is pinned by tests/test_errors.py and the message text is
prose. Every other mutant counts. A survivor is either equivalent (listed in ``EQUIVALENT``
below with a one-line proof) or listed in ``NOT_KILLED`` with the reason; an unlisted
survivor is reported as "unexplained", the thing to fix.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root (this folder's parent)
DOCS_PATH = ROOT / "docs" / "mutation.md"
DEFAULT_OUT = "mutation_report.md"  # in the current directory, with mutation_results.json

MODULES = ("schedules", "forward", "steps", "classifier_free", "classifier_guidance",
           "sampling", "oracle", "training", "guidance_variants", "scale_schedules", "_loop",
           "_prologue", "paths", "noise_levels", "solvers", "ode_sampling", "oracle_paths")
# mutmut's exit-code vocabulary (mutmut.stats.status_by_exit_code), folded to the report's
STATUS = {1: "killed", 3: "killed", 37: "killed", 0: "survived", 5: "no tests", 33: "no tests",
          34: "skipped", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout",
          255: "timeout", None: "not run"}
COPY_IGNORE = shutil.ignore_patterns(".git", "mutants", "__pycache__", ".hypothesis",
                                     ".pytest_cache", ".mypy_cache", "*.egg-info")

# Survivors that no test can kill because the mutant computes the same function. Key: the
# mutant's name; value: (a fragment of the mutated line, so that a renumbering after a source
# change shows up as "stale", the one-line proof).
_COPY = "x / 1.0 and x * 1.0 are both an exact copy (IEEE multiplication and division by 1 are exact)"
_CG0 = "the private body returns mean * 1.0 at s = 0 before it reads xp or g"
# Shared proofs of the sampling loop's survivors
_FLOAT_XP = ("the loop's levels are Python floats (Schedule.alpha_bar, ᾱ = 1.0), and the forward "
             "helpers read xp only through _xp.cast/_xp.sqrt of array levels, which pass floats "
             "through untouched")
_ZBT = ("zero_beta_tilde is read only for 'fixed_large' and 'learned_range' (steps._ddpm_variance, "
        "fused._guided_ddpm_coefficients); computing it for 'fixed_small' or 'learned' changes "
        "nothing")
_DDIM_FALLTHROUGH = ("for sampler='ddim' the _only calls above have already forced "
                     "variance_type=None and last_step_variance='floor', with which the DDPM "
                     "branch returns ('fixed_small', None) too")
_ANALYTIC = ("_classifier_gradient never calls log_prob when grad_log_prob is given (its "
             "analytic branch)")
_SLICES = ("pred and var are the two halves of one array `out`, whose shape was checked just "
           "above: same library, device, dtype and shape, so checking one checks both")
_MEMO = ("check_floating reads xp only on a miss of its memo of (array type, dtype) facts; here "
         "the array must have the type and dtype of x_t (returned() requires them), which the "
         "prologue has checked with the real xp, so the memo answers for NumPy, torch, JAX and "
         "array-api-strict; only a namespace outside those (asked every call) would read the "
         "None")
EQUIVALENT: dict[str, tuple[str, str]] = {
    'refdiff.oracle.x__reals__mutmut_11': (
        'kind in "XXiufOXX"',
        'dtype.kind is one character and NumPy has no kind \'X\': the same membership as in "iufO"'),
    'refdiff.oracle.x_demo_mixture__mutmut_71': (
        '[2.0] * K',
        'isotropic normalises the weights: 2/12 and 1/6 are the same rational, so every π_k is the same correctly rounded double'),
    'refdiff.oracle.xǁGaussianMixtureǁ_back__mutmut_3': (
        '(r.dtype == x_t.dtype) and False',
        'astype to the dtype r already has is a copy with the same values, dtype and device'),
    'refdiff.oracle.xǁGaussianMixtureǁ_checked__mutmut_50': (
        'warnings.simplefilter("ignore", )',
        'the default category Warning also covers RuntimeWarning, and the only warning xp.sum of a float64 array can emit is the RuntimeWarning of an overflow'),
    'refdiff.oracle.xǁGaussianMixtureǁ_inputs__mutmut_37': (
        'bits <= 32',
        'it only adds float32 x_t, for which astype(x_t, float32) is a value-identical copy: the same evaluation'),
    'refdiff.oracle.xǁGaussianMixtureǁ_inputs__mutmut_38': (
        'bits < 33',
        'as _37'),
    'refdiff.oracle.xǁGaussianMixtureǁdiagonal__mutmut_32': (
        'xp.eye(d, dtype=None)',
        'the host namespace is NumPy, whose eye defaults to float64, the dtype removed'),
    'refdiff.oracle.xǁGaussianMixtureǁdiagonal__mutmut_34': (
        'xp.eye(d, )',
        'as _32'),
    'refdiff.oracle.xǁGaussianMixtureǁisotropic__mutmut_31': (
        'if (var.ndim) or True else var',
        'a 0-d variance reshaped to (1, 1) broadcasts to the same (K, d) array of σ²'),
    'refdiff.oracle.xǁGaussianMixtureǁisotropic__mutmut_37': (
        'xp.reshape(var, (-2, 1))',
        'host NumPy only: NumPy (2.4, checked) reads any negative size as the one unknown dimension, so (-2, 1) gives (K, 1) as (-1, 1) does'),
    'refdiff.oracle.xǁGaussianMixtureǁsample__mutmut_131': (
        'k, axis=None)',
        'labels is 1-D, where take with axis=None (the flattened array) is take along axis 0'),
    'refdiff.oracle.xǁGaussianMixtureǁsample__mutmut_134': (
        'self.labels, device=device), k, )',
        'as _131: axis may be omitted for a 1-D array'),
    "refdiff.sampling.x__checked_variance__mutmut_45": ('if sampler == "XXddimXX":', _DDIM_FALLTHROUGH),
    "refdiff.sampling.x__checked_variance__mutmut_46": ('if sampler == "DDIM":', _DDIM_FALLTHROUGH),
    "refdiff.sampling.x__checked_variance__mutmut_85": ('("XXfixed_smallXX", "learned")', _ZBT),
    "refdiff.sampling.x__checked_variance__mutmut_86": ('("FIXED_SMALL", "learned")', _ZBT),
    "refdiff.sampling.x__checked_variance__mutmut_87": ('("fixed_small", "XXlearnedXX")', _ZBT),
    "refdiff.sampling.x__checked_variance__mutmut_88": ('("fixed_small", "LEARNED")', _ZBT),
    "refdiff.sampling.x__guided_step__mutmut_12": ("_classifier_gradient(xp, None, x,", _ANALYTIC),
    "refdiff.sampling.x__guided_step__mutmut_19": ("_classifier_gradient(xp, lambda z: 0, x,", _ANALYTIC),
    "refdiff.sampling.x__guided_step__mutmut_83": ("_x0_from_eps(None, x, eps, ab_t)", _FLOAT_XP),
    "refdiff.sampling.x__model_x0_eps__mutmut_62": ("_x0_eps_of(None, x, out, ab_t, ptype)", _FLOAT_XP),
    "refdiff.sampling.x__model_x0_eps__mutmut_74": ("(_prediction_from_x0_eps(None, *", _FLOAT_XP),
    "refdiff.sampling.x__model_x0_eps__mutmut_81": ("_predict_x0_eps(None, x, o, ab_t, ptype)", _FLOAT_XP),
    "refdiff.sampling.x__model_x0_eps__mutmut_91": ("_x0_eps_of(None, x, _guidance_rescale(", _FLOAT_XP),
    "refdiff.sampling.x__x0_eps_of__mutmut_4": ("_predict_x0_eps(None, x, out, ab_t, space)", _FLOAT_XP),
    "refdiff.sampling.x_ddim_invert__mutmut_82": ("_x0_eps_of(None, x, out, ab_src,", _FLOAT_XP),
    "refdiff.sampling.x_sample__mutmut_136": ("else _x0_from_eps(None, x, eps, ab_t)", _FLOAT_XP),
    "refdiff.sampling.x_ddim_invert__mutmut_69": (
        "_model_output(xp, None, model,", "_model_output only tests `if not learned`: None and "
        "False are both falsy"),
    "refdiff.sampling.x_sample__mutmut_144": (
        'noise = ""', "noise is read only when noisy (DDPM or η > 0), where it is reassigned "
        "first; at η = 0 _ddim_step returns x_prev without reading it"),
    "refdiff.sampling.x__model_output__mutmut_40": ('_xp.returned(xp, "x_t", x, model_variance=var)', _SLICES),
    "refdiff.sampling.x__model_output__mutmut_41": ("model_output=pred, )", _SLICES),
    "refdiff.sampling.x__branches__mutmut_47": (
        "xp.concat([x, x], )", "the array API's concat defaults to axis=0"),
    "refdiff.classifier_free.x__cfg_multi__mutmut_14": ("eps_uncond / 1.0", _COPY),
    "refdiff.classifier_free.x__guidance_rescale__mutmut_7": ("eps_guided / 1.0", _COPY),
    "refdiff.classifier_free.x__guidance_rescale__mutmut_49": (
        "xp.where(std_g == 0, 2.0, std_g)", "where σ(ε̃) = 0 the quotient is discarded by the "
        "outer where; any nonzero placeholder divisor gives the same result"),
    "refdiff.classifier_free.x__std_per_sample__mutmut_47": (
        "xp.where(m == 0, 2.0, m)", "where m = 0 every d is 0, so d/1 = d/2 = 0 and σ·m = 0"),
    "refdiff.classifier_free.x_guidance_rescale__mutmut_12": (
        "_xp.is_array(None)", "an array phi is then refused by _xp.number with the same "
        "TypeError; only the message changes"),
    "refdiff.classifier_guidance.x__label_log_prob__mutmut_3": (
        "dtype=None", "the class indices' integer dtype: == promotes within the integers, "
        "the booleans are the same"),
    "refdiff.classifier_guidance.x__label_log_prob__mutmut_6": (
        "xp.arange(logits.shape[1], device=", "as _3: the dtype of the class indices"),
    "refdiff.classifier_guidance.x__label_log_prob__mutmut_15": (
        "axis=+1", "labels are checked to be 1-D, where expand_dims at 1 and at -1 agree"),
    "refdiff.classifier_guidance.x__label_log_prob__mutmut_33": (
        "axis=+1", "logits are checked to be 2-D (B, K), where axis 1 is the last"),
    "refdiff.classifier_guidance.x_classifier_guided_mean__mutmut_26": (
        "_classifier_guided_mean(None", _CG0),
    "refdiff.classifier_guidance.x_classifier_guided_mean__mutmut_28": (
        "_classifier_guided_mean(xp, mean, None, None, s)", _CG0),
    "refdiff.classifier_free.x__lerp__mutmut_5": ("return a / 1.0", _COPY),
    "refdiff.classifier_free.x__lerp__mutmut_9": ("return b / 1.0", _COPY),
    "refdiff.classifier_guidance.x__classifier_guided_eps__mutmut_6": ("return eps / 1.0", _COPY),
    "refdiff.classifier_guidance.x__classifier_guided_mean__mutmut_6": ("return mean / 1.0",
                                                                        _COPY),
    "refdiff.classifier_guidance.x_classifier_guided_mean__mutmut_39": (
        "variance.ndim >= 0", "differs only for a 0-d mean with a 0-d variance, which both "
        "branches check the same way (library, floating dtype, range [0, inf]) and use as is"),
    "refdiff.classifier_guidance.x_classifier_guided_mean__mutmut_40": (
        "variance.ndim > 1", "differs only for a 1-D mean with a 1-D variance: _xp.level shapes a "
        "(B,) level against a (B,) mean as (B,), the same array, with the same checks"),
    "refdiff.classifier_guidance.x_classifier_guided_mean__mutmut_77": (
        "variance, mean, hi=math.inf)", "_xp.level's default lo is 0.0, the value removed"),
    "refdiff.steps.x__ddpm_mean_variance__mutmut_38": (
        "rederive_eps=None", "the re-derived ε̂ is discarded (`x0_hat, _ = ...`): only x̂_0 is used"),
    "refdiff.steps.x__ddpm_mean_variance__mutmut_46": (
        "rederive_eps=True", "as _38: the DDPM mean uses x̂_0 only, the ε̂ output is discarded"),
    "refdiff.training.x__clip_max__mutmut_7": (
        "a >= hi", "where a equals hi, full_like(a, hi) is hi in a's dtype: a itself"),
    "refdiff.training.x_alpha_bar_at__mutmut_27": (
        "dtype=None", "Schedule tables are float64 arrays (from_betas casts them), and asarray "
        "keeps an array's dtype"),
    "refdiff.training.x_alpha_bar_at__mutmut_30": ("xp.asarray(schedule.alphas_cumprod, "
                                                    "device=", "as _27"),
    "refdiff.training.x_alpha_bar_at__mutmut_35": (
        "axis=None", "the table is 1-D: take along the flattened array is take along axis 0"),
    "refdiff.training.x_alpha_bar_at__mutmut_38": ("xp.take(table, t, )", "as _35"),
    "refdiff.steps.x__ddim_inversion_step__mutmut_1": (
        "rederive_eps: bool = False", "a default of the private body that no caller uses: "
        "steps.ddim_inversion_step and sampling.ddim_invert both pass rederive_eps"),
}

# Survivors left alive on purpose, with the reason (not equivalent, but not worth a test or
# outside what the fast subset can see). Same format as EQUIVALENT.
_HALF = ("at s = 0.5 exactly the two forms a + s·d and b − (1 − s)·d are both the documented "
         "lerp and differ at most in the last bit; a test could only pin which rounding, not "
         "the math")
NOT_KILLED: dict[str, tuple[str, str]] = {
    "refdiff.steps.x__variance_inputs__mutmut_11": (
        '_xp.returned(None, "x_t", x_t, var_values=var_values)', _MEMO),
    "refdiff.steps.x_ddpm_mean_variance__mutmut_16": ("_variance_inputs(None, x_t,", _MEMO),
    "refdiff.steps.x_ddpm_step__mutmut_18": ("_variance_inputs(None, x_t,", _MEMO),
    "refdiff.classifier_guidance.x__classifier_gradient__mutmut_13": (
        '_xp.returned(None, "x_t", x_t, grad=g)', _MEMO),
    "refdiff.sampling.x__guided_step__mutmut_11": ("_classifier_gradient(None, lambda z: None,",
                                                    _MEMO),
    "refdiff.sampling.x__model_output__mutmut_11": (
        '_xp.returned(None, "x_t", x, model_output=out)', _MEMO),
    "refdiff.sampling.x_ddim_invert__mutmut_68": ("_model_output(None, False, model,", _MEMO),
    'refdiff.oracle.xǁGaussianMixtureǁsample_noisy__mutmut_35': (
        'gen = b.generator(generator, None)',
        "the seed's generator is made for the default device; differs only for torch on an accelerator (a CPU generator that sample's generator(gen, 'cuda') then refuses); the fast subset runs on the CPU, and NumPy and array-api-strict generators ignore the device"),
    'refdiff.oracle.xǁGaussianMixtureǁsample_noisy__mutmut_37': (
        'gen = b.generator(generator, )',
        'as _35'),
    "refdiff.sampling.x__branches__mutmut_4": ("out_c, var = _model_output(None, learned", _MEMO),
    "refdiff.sampling.x__branches__mutmut_16": ("return _model_output(None, learned", _MEMO),
    "refdiff.sampling.x__branches__mutmut_32": ("out, var = _model_output(None, learned", _MEMO),
    "refdiff.sampling.x__model_x0_eps__mutmut_8": ("out_c, var = _model_output(None, run.learned", _MEMO),
    "refdiff.sampling.x__model_x0_eps__mutmut_27": ("out, var = _model_output(None, run.learned", _MEMO),
    "refdiff.sampling.x__model_output__mutmut_32": ('_xp.returned(None, "x_t", x, model_output=pred', _MEMO),
    "refdiff.sampling.x__guided_step__mutmut_60": (
        "_x0_eps(xp, x, eps, ab_t, None, clip, True)", "clip_then_shift passes on only the ε̂ "
        "re-derived from clip(x̂_0); x̂_0 as given and rebuilt from ε̂ are equal in exact "
        "arithmetic and √ᾱ_t times their rounding difference is ~1 ulp of ε̂ (at ᾱ_t = 0 both "
        "give a non-finite x̂_0 after the shift): a test could pin only rounding"),
    "refdiff.sampling.x_ddim_invert__mutmut_98": (
        "_ddim_inversion_step(xp, x, eps, ab_src, ab_next, None,", "a v-model's x̂_0 as given "
        "vs rebuilt from ε̂: equal in exact arithmetic (both x at ᾱ_src = 1), and the step "
        "scales x̂_0 by √ᾱ_next ≤ √ᾱ_src, so they differ only by rounding"),
    "refdiff.sampling.x_sample__mutmut_61": (
        "backend.generator(generator, None)", "the generator's device matters only for torch "
        "on CUDA (torch.Generator(device)); NumPy and array-api-strict draw from host NumPy "
        "generators and torch's CPU generator is the default; the fast subset has no GPU"),
    "refdiff.sampling.x_sample__mutmut_63": ("backend.generator(generator, )", "as _61"),
    "refdiff.classifier_free.x__lerp__mutmut_16": ("s <= 0.5", _HALF),
    "refdiff.classifier_free.x__lerp__mutmut_32": ("s <= 0.5", _HALF),
    "refdiff.steps.x__check_eta__mutmut_21": (
        "r >= 1 + 1e-12", "differs only when r equals the float 1 + 1e-12 exactly, a tolerance "
        "edge with no meaning of its own"),
    "refdiff.steps.x__check_eta__mutmut_30": ("r >= 1 + 1e-12", "as _21, for array levels"),
    "refdiff.steps.x__ddim_sigma__mutmut_14": ("xp.clip(1.0 - r, )", "as _12"),
    "refdiff.training.x__backend_generator__mutmut_5": (
        "backend.generator(generator, None)", "the generator's device: NumPy and "
        "array-api-strict generators have none and torch's default is the CPU, so it differs "
        "only for CUDA tensors (a CPU generator cannot draw there); the mutation run has no GPU"),
    "refdiff.training.x__backend_generator__mutmut_7": ("backend.generator(generator, )",
                                                        "as _5"),
    "refdiff.training.x_drop_condition__mutmut_42": (
        "<= p", "differs only for a float64 draw u exactly equal to p (probability at most "
        "2⁻⁵³ per sample)"),
    "refdiff.steps.x__ddim_sigma__mutmut_12": (
        "min=None", "the clip guards 1 − r against rounding below 0 at the largest legal η "
        "with array levels; no test input found yet whose r rounds above 1 there"),
}


class UsageError(Exception):
    """A bad command-line argument: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2, via UsageError
        raise UsageError(f"{message}; see 'python -m benchmarks.mutation --help'")


def _parse(argv):
    p = _Parser(prog="python -m benchmarks.mutation", description=__doc__.split("\n\n")[0])
    p.add_argument("--modules", nargs="+", default=list(MODULES), metavar="MODULE",
                   help=f"math modules to mutate (default: all of {', '.join(MODULES)})")
    p.add_argument("--out", default=None,
                   help=f"markdown report (default ./{DEFAULT_OUT}); the JSON goes next to it")
    p.add_argument("--write-docs", action="store_true",
                   help="write the tracked report docs/mutation.md instead of --out")
    p.add_argument("--workdir", default=None,
                   help="the copy of the repository mutmut runs in (default: a temporary "
                        "folder, removed afterwards); kept when given, so reruns are incremental")
    p.add_argument("--report-only", action="store_true",
                   help="do not run mutmut: report the results already in --workdir")
    p.add_argument("--rerun-survivors", action="store_true",
                   help="in a kept --workdir: rerun only the mutants that were not killed "
                        "(after adding tests), with the test-to-function map recollected")
    p.add_argument("--max-children", type=int, default=1,
                   help="mutants run in parallel (default 1: the suite is CPU-bound)")
    args = p.parse_args(argv)
    bad = [m for m in args.modules if m not in MODULES]
    if bad:
        raise UsageError(f"--modules: unknown module(s) {', '.join(bad)}; choose from "
                         f"{', '.join(MODULES)}")
    if (args.report_only or args.rerun_survivors) and args.workdir is None:
        raise UsageError("--report-only and --rerun-survivors need the --workdir of a run")
    if args.report_only and args.rerun_survivors:
        raise UsageError("--report-only runs nothing; drop --rerun-survivors")
    if args.max_children < 1:
        raise UsageError(f"--max-children must be >= 1, got {args.max_children}")
    if args.write_docs and args.out is not None:
        raise UsageError("--write-docs writes docs/mutation.md; drop --out")
    out = DOCS_PATH if args.write_docs else Path(args.out or DEFAULT_OUT)
    if out.suffix != ".md":
        raise UsageError(f"--out must be a .md file, got {str(out)!r}")
    if not out.resolve().parent.is_dir():
        raise UsageError(f"directory {str(out.parent)!r} for {out.name} does not exist")
    return args, out


def _env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the copy is found from its own folder, nothing else
    env.update(CI="1", HYPOTHESIS_PROFILE="ci",  # derandomized Hypothesis: repeatable verdicts
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # one core per mutant
    return env


def prepare(workdir: Path) -> None:
    """Copy the repository into ``workdir`` (sources refreshed, earlier results kept)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for item in ROOT.iterdir():
        if item.name in (".git", "mutants", "__pycache__", ".hypothesis", ".pytest_cache"):
            continue
        dest = workdir / item.name
        if item.is_dir():
            shutil.copytree(item, dest, ignore=COPY_IGNORE, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dest)
    found = subprocess.run([sys.executable, "-c", "import refdiff; print(refdiff.__file__)"],
                           cwd=workdir, env=_env(), text=True, capture_output=True,
                           check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(workdir.resolve()):
        raise RuntimeError(f"in the copy, refdiff resolves to {found}, not to {workdir}")


def unkilled(workdir: Path, modules) -> list[str]:
    """The mutants of ``modules`` in ``workdir`` whose last verdict is not "killed"."""
    names = []
    for m in modules:
        meta = workdir / "mutants" / "refdiff" / f"{m}.py.meta"
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        names += [k for k, c in codes.items() if STATUS.get(c, "suspicious") != "killed"]
    return names


def run_mutmut(workdir: Path, modules, max_children: int, *, names=None,
               quiet: bool = False) -> float:
    """Run mutmut on ``modules`` (or on the mutants ``names``) inside ``workdir``; returns the
    wall time in seconds. Named mutants are rerun even when they have a verdict."""
    if names is None:
        names = [f"refdiff.{m}.*" for m in modules]
    else:  # new tests: recollect which tests cover which function (mutmut caches it)
        (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        if not names:
            return 0.0
    cmd = ["mutmut", "run", "--max-children", str(max_children), *names]
    t0 = time.perf_counter()
    with open(workdir / "mutmut_run.log", "w") as log:  # mutmut's progress line, redrawn
        rc = subprocess.run(cmd, cwd=workdir, env=_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"mutmut exited with {rc}; see {workdir / 'mutmut_run.log'}")
    if not quiet:
        print(f"mutmut: {wall:.0f} s", file=sys.stderr)
    return wall


_LITERAL = re.compile(r"""[rbuf]*"(?:[^"\\]|\\.)*"|[rbuf]*'(?:[^'\\]|\\.)*'|\bNone\b""")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[.*\])?$")


def _parameters(source: Path) -> dict[str, set[str]]:
    """Function name -> its parameter names (methods under their own name too)."""
    import ast

    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            names = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
            out.setdefault(node.name, set()).update(names)
    return out


def _is_message_text(name: str, minus: list[str], plus: list[str], params) -> bool:
    """True if the mutant only renames an argument's name where it is handed to a check
    (``_xp.level(xp, "alpha_bar_t", ...)`` -> ``"XXalpha_bar_tXX"`` or ``None``): that
    string only ever reaches an error message."""
    if len(minus) != 1 or len(plus) != 1:
        return False
    if _LITERAL.sub("S", minus[0]) != _LITERAL.sub("S", plus[0]):
        return False
    old = [m.group(0) for m in _LITERAL.finditer(minus[0])]
    new = [m.group(0) for m in _LITERAL.finditer(plus[0])]
    changed = [o for o, n in zip(old, new) if o != n]
    fn = re.sub(r"__mutmut_\d+$", "", name.rpartition(".")[2]).removeprefix("x_")
    fn = fn.split("\u01c1")[-1]  # methods: mutmut joins class and method with "ǁ"
    own = params.get(fn, set())
    for lit in changed:
        text = lit.strip("rbuf")[1:-1] if lit != "None" else ""
        base = re.sub(r"\[.*", "", text.replace("{", "").replace("}", ""))
        if not (_NAME.match(text.replace("{", "").replace("}", "")) and base in own):
            return False
    return bool(changed)


def _changed_lines(diff: str) -> tuple[list[str], list[str]]:
    lines = diff.splitlines()[2:]  # drop the ---/+++ header
    minus = [ln[1:].strip() for ln in lines if ln.startswith("-")]
    plus = [ln[1:].strip() for ln in lines if ln.startswith("+")]
    return minus, plus


def collect(workdir: Path, modules) -> dict:
    """Per module: counts by status, and each survivor's diff and classification."""
    cwd = os.getcwd()
    os.chdir(workdir)  # mutmut's helpers read mutants/ relative to the current directory
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        res = {}
        for m in modules:
            params = _parameters(Path(f"refdiff/{m}.py"))
            meta = json.loads(Path(f"mutants/refdiff/{m}.py.meta").read_text())
            codes = meta["exit_code_by_key"]
            counts = Counter(STATUS.get(c, "suspicious") for c in codes.values())
            survivors = []
            for name, code in sorted(codes.items(), key=lambda kv: _natural(kv[0])):
                status = STATUS.get(code, "suspicious")
                if status in ("killed", "not run"):
                    continue
                diff = get_diff_for_mutant(name, path=f"refdiff/{m}.py")
                minus, plus = _changed_lines(diff)
                kind, reason = "unexplained", ""
                if status == "survived" and _is_message_text(name, minus, plus, params):
                    kind = "message text"
                for table, label in ((EQUIVALENT, "equivalent"), (NOT_KILLED, "not killed")):
                    if name in table:
                        fragment, reason = table[name]
                        kind = label if any(fragment in p for p in plus) else "stale annotation"
                survivors.append({"name": name, "status": status, "kind": kind,
                                  "reason": reason, "minus": minus, "plus": plus})
            kinds = Counter(s["kind"] for s in survivors if s["status"] == "survived")
            res[m] = {"generated": len(codes), "killed": counts["killed"],
                      "survived": counts["survived"], "equivalent": kinds["equivalent"],
                      "not_killed": kinds["not killed"],
                      "message_text": kinds["message text"], "unexplained": kinds["unexplained"]
                      + kinds["stale annotation"], "no_tests": counts["no tests"],
                      "timeout": counts["timeout"], "other": counts["suspicious"]
                      + counts["skipped"] + counts["not run"], "survivors": survivors}
        return res
    finally:
        os.chdir(cwd)


def _natural(name: str):
    head, _, n = name.rpartition("_")
    return (head, int(n) if n.isdigit() else 0)


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "refdiff", "tests", "pyproject.toml"], cwd=ROOT, text=True,
                               capture_output=True).stdout.strip()
        return sha + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fast_subset() -> list[str]:
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return conf["pytest_add_cli_args_test_selection"]


def markdown(res: dict, meta: dict) -> str:
    cols = ("generated", "killed", "survived", "equivalent", "message_text", "not_killed",
            "unexplained", "no_tests", "timeout", "other")
    total = {c: sum(r[c] for r in res.values()) for c in cols}
    non_eq = total["generated"] - total["equivalent"] - total["message_text"]
    lines = [
        "# Mutation testing of the core math",
        "",
        "Written by `python -m benchmarks.mutation --write-docs` from one real run; every "
        "number below is from that run (see the header). Rerun it after changing the math "
        "or the fast test subset.",
        "",
        f"- date: {meta['date']}; commit: {meta['commit']}; machine: {meta['machine']}",
        f"- tool: mutmut {meta['mutmut']} (config: `[tool.mutmut]` in pyproject.toml), "
        f"{meta['max_children']} mutant(s) at a time; wall time of the mutmut runs in this "
        f"work folder: {meta['wall']}",
        f"- modules: {', '.join(f'refdiff/{m}.py' for m in res)}"
        + (f"; not run in this record: {', '.join(m for m in MODULES if m not in res)} "
           f"(`--modules` to add them)" if len(res) < len(MODULES) else ""),
        f"- fast test subset (mutmut runs, per mutant, the tests of this subset that cover "
        f"the mutated function; `-x`, Hypothesis CI profile): "
        f"{', '.join(t.removeprefix('tests/') for t in meta['subset'])}",
        "",
        "## Policy",
        "",
        "- `raise` statements are not mutated (`do_not_mutate_patterns`): the condition that "
        "guards each one is mutated and must be killed; the exception type is pinned by "
        "tests/test_errors.py; the message text is prose, so mutating it (mutmut's "
        "`\"XX\" + text + \"XX\"`) measures nothing. Every other mutant counts, string "
        "options (`\"fixed_small\"`, `\"leading\"`) included.",
        "- *equivalent*: the mutant computes the same function; each one has a one-line "
        "proof below. *not killed*: a real change that the subset does not kill, with the "
        "reason. *unexplained*: a survivor with neither, the thing to fix. *no tests*: the "
        "mutated function is not run by the fast subset at all.",
        "- *message text*: a surviving mutant that only changes the name of an argument where "
        "it is handed to a check (`_xp.level(xp, \"alpha_bar_t\", ...)` → `\"XXalpha_bar_tXX\"` "
        "or `None`): that string only reaches an error message, so it falls under the same "
        "policy as the `raise` statements. Counted, classified automatically "
        "(`_is_message_text` in benchmarks/mutation.py), listed by function, and left out of "
        "the score.",
        "- Score = killed / (generated − equivalent − message text). Survivors, no-tests and "
        "timeouts count against it.",
        "",
        "## Counts",
        "",
        "| module | " + " | ".join(c.replace("_", " ") for c in cols) + " | score |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for m, r in res.items():
        denom = r["generated"] - r["equivalent"] - r["message_text"]
        score = f"{100 * r['killed'] / denom:.1f} %" if denom else "–"
        lines.append(f"| {m} | " + " | ".join(str(r[c]) for c in cols) + f" | {score} |")
    score = f"{100 * total['killed'] / non_eq:.1f} %" if non_eq else "–"
    lines.append("| **all** | " + " | ".join(f"**{total[c]}**" for c in cols)
                 + f" | **{score}** |")
    for title, keep in (("Equivalent mutants", lambda s: s["kind"] == "equivalent"),
                        ("Survivors not killed (with the reason)",
                         lambda s: s["kind"] == "not killed"),
                        ("Unexplained survivors (to kill or to explain)",
                         lambda s: s["status"] == "survived"
                         and s["kind"] in ("unexplained", "stale annotation")),
                        ("Message-text mutants", lambda s: s["kind"] == "message text"),
                        ("Mutants no test of the subset runs", lambda s: s["status"] == "no tests"),
                        ("Timeouts and others", lambda s: s["status"] not in ("survived",
                                                                              "no tests"))):
        rows = [s for r in res.values() for s in r["survivors"] if keep(s)]
        lines += ["", f"## {title} ({len(rows)})", ""]
        if not rows:
            lines.append("None.")
            continue
        if title.startswith(("Mutants no test", "Message")):  # one line per function
            by_fn = Counter(re.sub(r"__mutmut_\d+$", "", s["name"]).replace(".x_", ".", 1)
                            for s in rows)
            lines += [f"- `{fn}`: {n}" for fn, n in sorted(by_fn.items())]
            continue
        for s in rows:
            change = "; ".join(re.sub(r"\s+#.*$", "", p) for p in s["plus"])[:160]
            change = change or "(line removed)"
            why = f" — {s['reason']}" if s["reason"] else ""
            stale = " (STALE: mutated line no longer matches)" if s["kind"] == "stale annotation" else ""
            lines.append(f"- `{s['name']}` ({s['status']}): `{change}`{why}{stale}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """``python -m benchmarks.mutation``: 0 on success; a bad argument prints one line, 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, out = _parse(argv)
    except UsageError as exc:
        print(f"python -m benchmarks.mutation: {exc}", file=sys.stderr)
        return 2
    import mutmut  # the test extra

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="refdiff-mutation-")
        workdir = Path(tmp.name)
    else:
        workdir = Path(args.workdir).resolve()
    try:
        log = workdir / "mutation_wall.json"  # one entry per mutmut run in this workdir
        phases = json.loads(log.read_text()) if log.exists() and not tmp else []
        if not args.report_only:
            prepare(workdir)
            names = unkilled(workdir, args.modules) if args.rerun_survivors else None
            wall = run_mutmut(workdir, args.modules, args.max_children, names=names)
            phases.append({"what": f"rerun of {len(names)} unkilled mutants" if names is not None
                           else "all mutants", "modules": args.modules, "wall_s": wall,
                           "max_children": args.max_children})
            log.write_text(json.dumps(phases))
        res = collect(workdir, args.modules)
    finally:
        if tmp is not None:
            tmp.cleanup()
    meta = {"date": _dt.date.today().isoformat(), "commit": _commit(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}",
            "mutmut": getattr(mutmut, "__version__", "?"),
            "max_children": "/".join(sorted({str(p.get("max_children", "?")) for p in phases}))
            or str(args.max_children),  # as run (a --report-only call runs nothing)
            "wall": "; ".join(f"{p['what']} of {', '.join(p['modules'])}: {p['wall_s'] / 60:.1f} min"
                              for p in phases) or "not recorded",
            "subset": _fast_subset()}
    out.write_text(markdown(res, meta))
    json_p = out.with_suffix(".json") if not args.write_docs else None
    if json_p is not None:
        json_p.write_text(json.dumps({"meta": meta, "modules": res}, indent=1))
    print(f"wrote {out}" + (f" and {json_p}" if json_p else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
