"""A fixed sample of mutants of the core math, each of which the fast test subset must kill.

The full mutation run (``python -m benchmarks.mutation``, docs/mutation.md) takes tens of
minutes; this is its CI guard, a minute or so, so that the score cannot silently decay. Each
mutant is one textual change inside one function of refdiff (the kind of change mutmut makes:
an operator, a constant, a sign, an argument). The mutator is ours and tiny: it recompiles the
function's source with the change and swaps the code object into the function in place, so
every module that imported the function by name runs the mutant. All mutants run in ONE child
process (one import of numpy/torch), each through ``pytest.main`` on the fast subset's files
for that module, stopped at the first failure; afterwards the function gets its code back.

A mutant is killed when pytest reports failing tests (exit status 1). The unmutated code
(the control) must pass the same files, or a "kill" would mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the fast subset's files for each module, cheapest first (pytest stops at the first failure)
KILL = ["tests/test_mutants_killed.py"]
FWD = ["tests/test_hand_values.py", *KILL, "tests/test_forward.py"]
STEPS = ["tests/test_hand_values.py", *KILL, "tests/test_steps.py"]
GUIDE = ["tests/test_hand_values.py", *KILL, "tests/test_guidance.py"]
GV, SV = "tests/test_guidance_variants.py", "tests/test_sampling_variants.py"
SOLV = [f"tests/test_solvers.py::test_{n}_hand_values" for n in
        ("euler_and_heun", "ancestral", "dpmpp_2m", "flow_euler")]
PATHS = [f"tests/test_paths.py::test_{n}_hand_values" for n in
         ("path", "prediction", "karras_sigmas", "shifts", "flow_times_and_vp_sigmas")]
LOOP = ["tests/test_ode_sampling.py"]

# (function, text in its source, replacement, test files): the text must occur exactly once
SAMPLE = [
    ("refdiff.forward:_q_sample", "a * x0 + b * eps", "a * x0 - b * eps", FWD),
    ("refdiff.forward:_x0_from_eps", "(x_t - b * eps) / a", "(x_t + b * eps) / a", FWD),
    ("refdiff.forward:_eps_from_x0", "(x_t - a * x0_hat) / b", "(x_t - a * x0_hat) / a", FWD),
    ("refdiff.forward:_predict_x0_eps", "b * x_t + a * model_output",
     "b * x_t - a * model_output", FWD),
    ("refdiff.forward:_v_target", "a * eps - b * x0", "a * eps + b * x0", FWD),
    ("refdiff.forward:_posterior_coefficients", "sqrt(xp, 1.0 - beta_step)",
     "sqrt(xp, 1.0 + beta_step)", FWD),
    ("refdiff.forward:_posterior_coefficients", "(1.0 - ab_prev) / (1.0 - ab_t) * beta_step",
     "(1.0 - ab_prev) / (1.0 - ab_t)", FWD),
    ("refdiff.steps:_ddim_ratio", "eta**2 *", "eta *", STEPS),      # η·β̃ for η²·β̃
    ("refdiff.steps:_ddim_sigma", "sqrt(xp, r * (1.0 - ab_prev))", "sqrt(xp, r * (1.0 - ab_t))",
     STEPS),
    ("refdiff.steps:_ddim_step", "if eta > 0 else", "if eta > 1 else", STEPS),
    ("refdiff.steps:_x0_eps", "if rederive_eps:", "if not rederive_eps:", STEPS),
    ("refdiff.steps:_ddpm_variance", "return _xp.as_array_like(xp, beta_step, x_t)",
     "return _xp.as_array_like(xp, beta_tilde, x_t)", STEPS),     # fixed_large gives β̃
    ("refdiff.steps:_ddpm_variance", "frac = (var_values + 1) / 2", "frac = (var_values + 1) / 3",
     STEPS),
    ("refdiff.classifier_free:_lerp", "return b * 1.0", "return a * 1.0", GUIDE),
    ("refdiff.classifier_free:_cfg_multi", "s * (e - eps_uncond)", "s * (e - eps)", GUIDE),
    ("refdiff.classifier_free:_guidance_rescale", "(1.0 - phi) * eps_guided",
     "(1.0 + phi) * eps_guided", GUIDE),
    ("refdiff.classifier_guidance:_classifier_guided_eps", "eps - coef * grad_log_prob",
     "eps + coef * grad_log_prob", GUIDE),
    ("refdiff.classifier_guidance:_classifier_guided_mean", "(coef,) = cast(xp, mean, s * variance)",
     "(coef,) = cast(xp, mean, s * variance ** 0.5)", GUIDE),
    ("refdiff.classifier_guidance:_log_softmax", "xp.max(logits, axis=-1, keepdims=True)",
     "xp.max(logits, axis=None, keepdims=True)", KILL),           # a survivor of the full run
    ("refdiff.schedules:cosine_schedule", "f[1:] / f[:-1]", "f[:-1] / f[1:]",
     ["tests/test_schedules.py"]),
    ("refdiff._prologue:_levels", "(t, abs_[i], abs_[i + 1])", "(t, abs_[i], abs_[i])",
     ["tests/test_sampling.py"]),
    ("refdiff.guidance_variants:_apg", "update = (delta - par) + eta * par",
     "update = (delta - par) + eta * delta", [f"{GV}::test_apg_hand_values"]),
    ("refdiff.guidance_variants:_parallel", "return (m_v * coef) * u_hat",
     "return coef * u_hat", [f"{GV}::test_apg_hand_values"]),     # the scaling not undone
    ("refdiff.guidance_variants:_cfgpp_ddim_step", "c = -sqrt(xp, ab_prev) *",
     "c = -sqrt(xp, ab_t) *", [f"{GV}::test_cfgpp_hand_values"]),
    ("refdiff.scale_schedules:_scheduled_scale", "g.sigma_lo < sigma <= g.sigma_hi",
     "g.sigma_lo <= sigma <= g.sigma_hi", [f"{GV}::test_scheduled_scale_hand_values"]),
    ("refdiff._loop:_branches", "_model_output(xp, learned, _guide(model, g), x, t, g.uncond)",
     "_model_output(xp, learned, model, x, t, g.uncond)",
     [f"{SV}::test_guiding_model_evaluates_the_unconditional_branch"]),  # autoguidance ignored
    ("refdiff._loop:_eps_pair", "_converted(xp, x, o, ab_t, ptype, \"epsilon\")",
     "_converted(xp, x, o, ab_t, \"epsilon\", \"epsilon\")",
     [f"{SV}::test_cfgpp_run_is_the_hand_loop"]),                  # v taken for ε
    ("refdiff.training:_min_snr_weight", "min(ab, gamma * (1.0 - ab))", "min(ab, gamma * ab)",
     ["tests/test_training.py"]),
    ("refdiff.oracle:GaussianMixture._softmax", "xp.max(log_joint, axis=1, keepdims=True)",
     "xp.max(log_joint, axis=None, keepdims=True)", KILL),        # a survivor of the full run
    # the σ-space and flow samplers, the paths and the lists of levels
    ("refdiff.solvers:_second_order_coefficient",
     "_xp.log(xp, sigma / sigma_next) / (2.0 * h_prev)", "_xp.log(xp, sigma / sigma_next) / h_prev",
     SOLV),                                                         # 1/r for 1/(2r)
    ("refdiff.solvers:_heun", "0.5 * (1.0 - sigma / sigma_next)",
     "0.5 * (1.0 - sigma_next / sigma)", SOLV),                     # d' over σ for σ'
    ("refdiff.solvers:_ancestral_sigmas", "down2 = sigma_next**2 - up**2",
     "down2 = sigma_next**2 - up", SOLV),
    ("refdiff.solvers:_euler_ancestral", "_euler(xp, x, denoised, sigma, down)",
     "_euler(xp, x, denoised, sigma, sigma_next)", SOLV),           # no σ_down
    ("refdiff.solvers:_flow_euler", "t_next - t", "t - t_next", SOLV),
    ("refdiff.paths:_x0_eps", "ab * (x + a_ * out)", "ab * (x - a_ * out)", PATHS),
    ("refdiff.paths:_prediction", "return eps - x0", "return x0 - eps", PATHS),
    ("refdiff.noise_levels:time_shift", "s * t / (1.0 + (s - 1.0) * t)",
     "s * t / (1.0 + s * t)", PATHS),
    ("refdiff.noise_levels:karras_sigmas", "sig = [v ** rho for v in ramp]",
     "sig = [v ** (rho - 1.0) for v in ramp]", PATHS),
    ("refdiff.ode_sampling:_ode_step", "if sigma_next == 0:", "if sigma_next < 0:", LOOP),
    ("refdiff.ode_sampling:_denoised", 'x_m = x if run.path == "ve" else k * x', "x_m = x", LOOP),
    ("refdiff.oracle_paths:_vp_x0_eps", "a * a / c2", "b * b / c2", LOOP),
]


def _function(target: str):
    import importlib
    import inspect

    module_name, _, qual = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in qual.split("."):
        obj = inspect.getattr_static(obj, part)
    return getattr(obj, "__func__", obj), importlib.import_module(module_name)


def _mutated_code(target: str, old: str, new: str):
    import inspect

    fn, module = _function(target)
    src = textwrap.dedent(inspect.getsource(fn))
    if src.count(old) != 1:
        raise AssertionError(f"{target}: {old!r} occurs {src.count(old)} times, not once")
    src = src.replace(old, new)
    lines = src.splitlines()
    while lines[0].lstrip().startswith("@"):  # staticmethod/classmethod: keep the bare function
        lines.pop(0)
    ns = dict(vars(module))
    exec(compile("\n".join(lines), f"<mutant of {target}>", "exec"), ns)
    return fn, ns[fn.__name__].__code__


def _child() -> None:
    """Run the control and every mutant; print one JSON line {label: pytest exit status}."""
    import pytest

    os.chdir(ROOT)
    args = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-o", "addopts="]
    files = sorted({f for *_, fs in SAMPLE for f in fs})
    result = {"control": int(pytest.main([*args, *files]))}
    for target, old, new, fs in SAMPLE:
        fn, code = _mutated_code(target, old, new)
        saved = fn.__code__
        fn.__code__ = code
        try:
            result[f"{target}: {old} -> {new}"] = int(pytest.main([*args, *fs]))
        finally:
            fn.__code__ = saved
    print("MUTATION-SAMPLE " + json.dumps(result))


def test_every_sampled_mutant_is_killed():
    env = dict(os.environ, CI="1", HYPOTHESIS_PROFILE="ci", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MUTATION-SAMPLE ")]
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(line[-1].removeprefix("MUTATION-SAMPLE "))
    assert result.pop("control") == 0, "the unmutated code fails its own fast subset"
    survivors = [k for k, rc in result.items() if rc != 1]
    assert not survivors, f"mutants not killed (pytest status != 1): {survivors}"
    assert len(result) == len(SAMPLE) >= 20


def test_sample_texts_match_the_source():
    """Every planted change still applies (the source moved on: update SAMPLE)."""
    for target, old, new, _ in SAMPLE:
        _, code = _mutated_code(target, old, new)
        assert code is not None


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _child()
