"""The checked prologue: every argument of a public call is validated once, never twice.

Each validator of ``refdiff._xp`` that looks at an argument (``check_floating``, ``level``,
``number``, ``count``, ``choice``) is wrapped to record which argument (by name and object) it
validated; a public call passes when no argument is validated twice. The bodies behind the
prologue call only other bodies, so a public function calling another public function (and
re-validating what it already checked) shows up here. Arrays a user's callable returns (the
model's output at each step, a classifier gradient) are new arguments and are checked once each.
"""

from __future__ import annotations

import ast
import inspect
from collections import Counter

import numpy as np
import pytest

import refdiff as rd
from refdiff import _xp
from refdiff.oracle import demo_mixture

VALIDATORS = {"check_floating": 1, "level": 1, "number": 0, "count": 0, "choice": 0}


@pytest.fixture
def validated(monkeypatch):
    """A list of (argument name, object) each outermost validator call saw."""
    seen: list[tuple[str, object]] = []
    depth = [0]

    def wrap(fn, at):
        def wrapper(*args, **kwargs):
            if depth[0] == 0:
                seen.append((args[at], args[at + 1]))  # keeps the object alive: ids stay unique
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
        return wrapper

    for name, at in VALIDATORS.items():
        monkeypatch.setattr(_xp, name, wrap(getattr(_xp, name), at))
    return seen


def _twice(seen):
    counts = Counter((name, id(obj)) for name, obj in seen)
    return sorted(name for (name, _), k in counts.items() if k > 1)


rng = np.random.default_rng(0)
X, U, C, Z = (rng.standard_normal((2, 3)) for _ in range(4))
AB = np.array([0.3, 0.4])
SCH = rd.linear_schedule(100)
GM = demo_mixture()
XG = rng.standard_normal((4, 2))


def _model(x, t, c):
    return 0.1 * x + (0.0 if c is None else 0.05)


CALLS = {
    "q_sample": lambda: rd.q_sample(X, AB, Z),
    "predict_x0_eps": lambda: rd.predict_x0_eps(X, U, AB, "v_prediction"),
    "prediction_from_x0_eps": lambda: rd.prediction_from_x0_eps(X, U, 0.3, "v_prediction"),
    "v_target": lambda: rd.v_target(X, U, 0.3),
    "posterior_coefficients": lambda: rd.posterior_coefficients(AB, AB + 0.1, like=X),
    "q_posterior": lambda: rd.q_posterior(X, Z, 0.3, 0.55),
    "ddim_sigma": lambda: rd.ddim_sigma(0.3, 0.55, 0.5),
    "ddim_step": lambda: rd.ddim_step(X, U, AB, 0.55, eta=1.0, noise=Z, clip_x0=1.0),
    "ddpm_step": lambda: rd.ddpm_step(X, U, 0.3, 0.55, Z, variance_type="fixed_large",
                                      clip_x0=1.0),
    "ddpm_mean_variance": lambda: rd.ddpm_mean_variance(X, U, 0.3, 0.55, x0_hat=Z),
    "ddim_inversion_step": lambda: rd.ddim_inversion_step(X, U, 0.55, 0.3),
    "cfg": lambda: rd.cfg(U, C, AB),
    "cfg_multi": lambda: rd.cfg_multi(U, [C, Z], [2.0, -1.0]),
    "guidance_rescale": lambda: rd.guidance_rescale(U, C, 0.7),
    "classifier_guided_eps": lambda: rd.classifier_guided_eps(U, C, 0.3, 2.0),
    "classifier_guided_mean": lambda: rd.classifier_guided_mean(U, 0.1, C, 2.0),
    "classifier_gradient": lambda: rd.classifier_gradient(None, X, grad_log_prob=lambda v: -v),
    "linear_schedule": lambda: rd.linear_schedule(50),
    "cosine_schedule": lambda: rd.cosine_schedule(50),
    "inference_timesteps": lambda: rd.inference_timesteps(100, 10, "trailing"),
    "sample-ddim-cfg-rescale": lambda: rd.sample(
        _model, X, SCH, num_inference_steps=5, eta=0.5, clip_x0=1.0, generator=0,
        guidance=rd.Guidance(cond=1, scale=3.0, rescale=0.7, rescale_space="sample")),
    "sample-ddpm-classifier": lambda: rd.sample(  # callables that call no refdiff function
        _model, X, SCH, sampler="ddpm", num_inference_steps=5, generator=0,
        guidance=rd.Guidance(classifier=lambda x, t: None, classifier_scale=2.0,
                             grad_log_prob=lambda x, t: -x)),
    "ddim_invert": lambda: rd.ddim_invert(_model, X, SCH, num_inference_steps=5),
    "diffusion_loss": lambda: rd.diffusion_loss(U, X, Z, AB, "v_prediction",
                                                weighting="min_snr"),
    "snr": lambda: rd.snr(AB),
    "min_snr_weight": lambda: rd.min_snr_weight(AB, 5.0, "sample"),
    "cross_entropy": lambda: rd.cross_entropy(X, np.array([0, 2])),
    "noisy_classifier_loss": lambda: rd.noisy_classifier_loss(
        lambda x, t: x, X, np.array([0, 2]), np.array([3, 4]), AB, Z),
    "guidance_scale_embedding": lambda: rd.guidance_scale_embedding(AB, 8),
    "guidance_distillation_target": lambda: rd.guidance_distillation_target(U, C, AB),
    "oracle.x0_eps": lambda: GM.x0_eps(XG, 0.4, 1),
    "oracle.grad_log_prob_class": lambda: GM.grad_log_prob_class(XG, 0.4, 1),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_no_argument_is_validated_twice(validated, name):
    CALLS[name]()
    assert validated, "the call validated nothing: the recorder is not wired"
    assert _twice(validated) == [], f"{name} validates these arguments more than once"


def test_the_recorder_catches_a_second_validation(validated):
    """A public function that calls another public function is caught (the test can fail)."""
    rd.q_sample(X, 0.3, Z)
    rd.v_target(X, Z, 0.3)  # X and Z again: as a public-calls-public chain would
    assert "x0" in _twice(validated)


# Arrays of the math (data, predictions, noise, guidance terms): a body line that does
# arithmetic on one of them is an equation line.
ARRAYS = {"x0", "x_t", "x0_hat", "eps", "noise", "eps_uncond", "eps_cond", "eps_guided",
          "mean", "grad_log_prob", "model_output", "x_prev", "e"}
CITES = ("Eq.", "Algorithm", "Appendix", "§")


def _equation_lines(module) -> list[str]:
    """Lines of the private bodies that combine the math's arrays with arithmetic."""
    src = inspect.getsource(module)
    lines, text = [], src.splitlines()
    for fn in ast.parse(src).body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("_")):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.BinOp) and any(
                    isinstance(v, ast.Name) and v.id in ARRAYS for v in ast.walk(node)):
                lines.append(text[node.lineno - 1])
    return sorted(set(lines))


@pytest.mark.parametrize("module", ["forward", "steps", "classifier_free",
                                    "classifier_guidance"])
def test_equation_lines_cite_and_do_not_cast(module):
    """No cast on an equation line, and every equation line names its equation."""
    lines = _equation_lines(__import__(f"refdiff.{module}", fromlist=["_"]))
    assert lines
    assert [ln for ln in lines if "cast(" in ln or "astype(" in ln] == []
    uncited = [ln.strip() for ln in lines if "#" not in ln or not any(
        c in ln.split("#", 1)[1] for c in CITES)]
    assert uncited == [], f"equation lines without an equation number in refdiff.{module}"
