"""Adversarial inputs to the public math: every bad input is refused by name, never a NaN, an
Inf, a silent coercion or a traceback from deep inside NumPy/torch; valid edge inputs give
finite results; float16/bfloat16 steps do not overflow where the float64 result fits.

Organised by class (the test ids start with the class):

- ``non_array``: a list, ``None``, a float or a string where an array is expected;
- ``array_scalar``: array-valued per-step scalars (ᾱ, scales, variances) that are not finite,
  out of range, of the wrong shape or of an integer dtype;
- ``coercion``: values that used to be silently coerced or ignored (float timesteps, string
  flags, options that do not apply);
- ``helper``: exported helpers that used to check less than their callers;
- ``schedule``: schedules built from values they cannot represent, non-Schedule arguments;
- ``valid``: edge inputs that are legal and must give finite results of the right shape.

The oracle and the backends' generators are covered in tests/test_adversarial_oracle_backends.py,
the command line in tests/test_cli.py and tests/test_kit_cli.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refdiff as rd

X = np.ones((2, 3))
SCH = rd.linear_schedule(100)


def _model(x, t, c):
    return 0.1 * x


# ----- non_array: each array argument of each public function, replaced by a non-array ------
# (function name, call taking the arguments by name, the valid arguments)
ARRAY_ARGS = {
    "q_sample": (lambda a: rd.q_sample(a["x0"], 0.5, a["eps"]), ("x0", "eps")),
    "predict_x0_eps": (lambda a: rd.predict_x0_eps(a["x_t"], a["model_output"], 0.5),
                       ("x_t", "model_output")),
    "prediction_from_x0_eps": (lambda a: rd.prediction_from_x0_eps(a["x0"], a["eps"], 0.5),
                               ("x0", "eps")),
    "v_target": (lambda a: rd.v_target(a["x0"], a["eps"], 0.5), ("x0", "eps")),
    "q_posterior": (lambda a: rd.q_posterior(a["x0"], a["x_t"], 0.5, 0.6), ("x0", "x_t")),
    "ddim_step": (lambda a: rd.ddim_step(a["x_t"], a["eps"], 0.5, 0.6), ("x_t", "eps")),
    "ddim_step-eta": (lambda a: rd.ddim_step(a["x_t"], a["eps"], 0.5, 0.6, eta=0.5,
                                             noise=a["noise"]), ("x_t", "eps", "noise")),
    "ddpm_step": (lambda a: rd.ddpm_step(a["x_t"], a["eps"], 0.5, 0.6, a["noise"]),
                  ("x_t", "eps", "noise")),
    "ddpm_mean_variance": (lambda a: rd.ddpm_mean_variance(a["x_t"], a["eps"], 0.5, 0.6),
                           ("x_t", "eps")),
    "ddim_inversion_step": (lambda a: rd.ddim_inversion_step(a["x_t"], a["eps"], 0.6, 0.5),
                            ("x_t", "eps")),
    "cfg": (lambda a: rd.cfg(a["eps_uncond"], a["eps_cond"], 2.0), ("eps_uncond", "eps_cond")),
    "cfg_multi": (lambda a: rd.cfg_multi(a["eps_uncond"], [a["eps_conds[0]"], X], [2.0, 1.0]),
                  ("eps_uncond", r"eps_conds\[0\]")),
    "guidance_rescale": (lambda a: rd.guidance_rescale(a["eps_guided"], a["eps_cond"], 0.7),
                         ("eps_guided", "eps_cond")),
    "classifier_guided_eps": (lambda a: rd.classifier_guided_eps(a["eps"], a["grad_log_prob"],
                                                                 0.5, 2.0),
                              ("eps", "grad_log_prob")),
    "classifier_guided_mean": (lambda a: rd.classifier_guided_mean(
        a["mean"], 0.1, a["grad_log_prob"], 2.0), ("mean", "grad_log_prob")),
    "diffusion_loss": (lambda a: rd.diffusion_loss(a["model_output"], a["x0"], a["eps"], 0.5),
                       ("model_output", "x0", "eps")),
    "guidance_distillation_target": (lambda a: rd.guidance_distillation_target(
        a["eps_uncond"], a["eps_cond"], 2.0), ("eps_uncond", "eps_cond")),
    "sample": (lambda a: rd.sample(_model, a["x_T"], SCH, num_inference_steps=3), ("x_T",)),
    "ddim_invert": (lambda a: rd.ddim_invert(_model, a["x0"], SCH, num_inference_steps=3),
                    ("x0",)),
}
NON_ARRAYS = {"list": [[0.1] * 3] * 2, "None": None, "float": 0.5, "str": "x",
              "numpy-scalar": np.float64(1.0)}


def _non_array_cases():
    for fname, (call, names) in ARRAY_ARGS.items():
        for name in names:
            for kind, bad in NON_ARRAYS.items():
                if bad is None and name == "noise":
                    continue  # a missing noise has its own message ("noise is required")
                yield pytest.param(call, name, bad, id=f"non_array-{fname}-{name}-{kind}")


@pytest.mark.parametrize("call,name,bad", list(_non_array_cases()))
def test_non_array_refused_by_name(call, name, bad):
    plain = name.replace("\\", "")
    args = {n.replace("\\", ""): X for n in ARRAY_ARGS_NAMES}
    args[plain] = bad
    with pytest.raises(TypeError, match=rf"{name} must be an array"):
        call(args)


ARRAY_ARGS_NAMES = sorted({n for _, names in ARRAY_ARGS.values() for n in names})


def test_model_returning_a_non_array_is_refused():
    for out in (None, [1.0], 0.0):
        with pytest.raises(TypeError, match="the model must return an array"):
            rd.sample(lambda x, t, c, o=out: o, X, SCH, num_inference_steps=2)


# ----- array_scalar: per-step scalars given as arrays --------------------------------------
BAD_LEVELS = {"inf": np.array([np.inf, 0.5]), "nan": np.array([np.nan, 0.5]),
              "above": np.array([1.5, 0.5]), "below": np.array([-0.1, 0.5])}
LEVEL_CALLS = {
    "q_sample-alpha_bar_t": lambda v: rd.q_sample(X, v, X),
    "v_target-alpha_bar_t": lambda v: rd.v_target(X, X, v),
    "predict_x0_eps-alpha_bar_t": lambda v: rd.predict_x0_eps(X, X, v),
    "ddim_step-alpha_bar_t": lambda v: rd.ddim_step(X, X, v, 1.0),
    "ddim_step-alpha_bar_prev": lambda v: rd.ddim_step(X, X, 0.0, v, x0_hat=X),
    "ddpm_step-alpha_bar_t": lambda v: rd.ddpm_step(X, X, v, 1.0, X),
    "q_posterior-alpha_bar_t": lambda v: rd.q_posterior(X, X, v, 1.0),
    "classifier_guided_eps-alpha_bar_t": lambda v: rd.classifier_guided_eps(X, X, v, 2.0),
    "diffusion_loss-alpha_bar_t": lambda v: rd.diffusion_loss(X, X, X, v),
    "snr-alpha_bar_t": lambda v: rd.snr(v),
    "min_snr_weight-alpha_bar_t": lambda v: rd.min_snr_weight(v),
}
SCALE_CALLS = {
    "cfg-scale": lambda v: rd.cfg(X, X, v),
    "classifier_guided_eps-scale": lambda v: rd.classifier_guided_eps(X, X, 0.5, v),
    "classifier_guided_mean-scale": lambda v: rd.classifier_guided_mean(X, 0.1, X, v),
    "guidance_distillation_target-scale": lambda v: rd.guidance_distillation_target(X, X, v),
    "guidance_scale_embedding-scale": lambda v: rd.guidance_scale_embedding(v, 8),
    "cfg_multi-scales": lambda v: rd.cfg_multi(X, [X, X], [v, 1.0]),
}


def _array_scalar_cases():
    for cid, call in LEVEL_CALLS.items():
        name = cid.split("-")[1]
        for kind, bad in BAD_LEVELS.items():
            if cid.startswith("ddim_step-alpha_bar_t") and kind == "above":
                continue  # [1.5, 0.5] is also out of order: either message is right
            yield pytest.param(call, bad, ValueError, name, id=f"array_scalar-{cid}-{kind}")
        yield pytest.param(call, np.array([1, 0]), TypeError, name, id=f"array_scalar-{cid}-int")
        if not cid.startswith(("snr", "min_snr")):  # those take any shape
            yield pytest.param(call, np.full(5, 0.5), ValueError, name,
                               id=f"array_scalar-{cid}-shape")
    for cid, call in SCALE_CALLS.items():
        name = cid.split("-")[1]
        for kind in ("inf", "nan"):
            yield pytest.param(call, BAD_LEVELS[kind], ValueError, name,
                               id=f"array_scalar-{cid}-{kind}")
    variances = {"negative": np.full((2, 1), -1.0), "nan": np.full((2, 3), np.nan),
                 "int": np.ones((2, 1), dtype=np.int64), "inf": np.full((2, 1), np.inf)}
    for kind, v in variances.items():
        exc = TypeError if kind == "int" else ValueError
        yield pytest.param(lambda var: rd.classifier_guided_mean(X, var, X, 2.0), v, exc,
                           "variance", id=f"array_scalar-classifier_guided_mean-variance-{kind}")
    yield pytest.param(lambda s: rd.sample(_model, X, SCH, num_inference_steps=2,
                                           guidance=rd.Guidance(cond=1, scale=s)),
                       BAD_LEVELS["inf"], ValueError, "Guidance.scale",
                       id="array_scalar-sample-Guidance.scale-inf")


@pytest.mark.parametrize("call,bad,exc,name", list(_array_scalar_cases()))
def test_array_scalar_refused_by_name(call, bad, exc, name):
    with pytest.raises(exc, match=rf"^{name}"):
        call(bad)


# ----- coercion: values that used to be coerced or ignored ---------------------------------
COERCIONS = {
    "float-timesteps": (lambda: rd.sample(_model, X, SCH, timesteps=[9.7, 4.2]), TypeError,
                        "timesteps"),
    "string-timesteps": (lambda: rd.sample(_model, X, SCH, timesteps="951"), TypeError,
                         "timesteps"),
    "float-array-timesteps": (lambda: rd.sample(_model, X, SCH, timesteps=np.array([9.0, 4.0])),
                              TypeError, "timesteps"),
    "alpha_bar-float-t": (lambda: SCH.alpha_bar(2.7), TypeError, "t must be an int"),
    "alpha_bar-string-t": (lambda: SCH.alpha_bar("3"), TypeError, "t must be an int"),
    "alpha_bar-bool-t": (lambda: SCH.alpha_bar(True), TypeError, "t must be an int"),
    "alpha_bar-out-of-range": (lambda: SCH.alpha_bar(100), ValueError, "t must lie in"),
    "offset-bool": (lambda: rd.inference_timesteps(10, 5, offset=True), TypeError, "offset"),
    "offset-float": (lambda: rd.inference_timesteps(10, 5, offset=1.0), TypeError, "offset"),
    "offset-negative": (lambda: rd.inference_timesteps(10, 5, offset=-1), ValueError, "offset"),
    "rederive_eps-string": (lambda: rd.ddim_step(X, X, 0.5, 0.6, clip_x0=1.0,
                                                 rederive_eps="no"), TypeError, "rederive_eps"),
    "rederive_eps-string-sample": (lambda: rd.sample(_model, X, SCH, rederive_eps="no"),
                                   TypeError, "rederive_eps"),
    "complex-betas": (lambda: rd.Schedule.from_betas([0.1 + 1j, 0.2]), TypeError, "betas"),
    "bool-betas": (lambda: rd.Schedule.from_betas([True, True]), TypeError, "betas"),
    "string-betas": (lambda: rd.Schedule.from_betas(["a", "b"]), TypeError, "betas"),
    "ddpm-with-eta": (lambda: rd.sample(_model, X, SCH, sampler="ddpm", eta=0.5, generator=0),
                      ValueError, "eta applies to sampler='ddim'"),
    "ddim-with-variance_type": (lambda: rd.sample(_model, X, SCH, variance_type="fixed_large"),
                                ValueError, "variance_type applies to sampler='ddpm'"),
    "timesteps-and-steps": (lambda: rd.sample(_model, X, SCH, timesteps=[50, 10],
                                              num_inference_steps=5), ValueError, "either"),
    "timesteps-and-spacing": (lambda: rd.ddim_invert(_model, X, SCH, timesteps=[50, 10],
                                                     spacing="trailing"), ValueError, "either"),
    "progress-string": (lambda: rd.sample(_model, X, SCH, progress="yes"), TypeError,
                        "progress"),
    "callback-not-callable": (lambda: rd.sample(_model, X, SCH, callback=3), TypeError,
                              "callback"),
    "guidance-not-Guidance": (lambda: rd.sample(_model, X, SCH, guidance={"scale": 2.0}),
                              TypeError, "guidance"),
    "bool-scale": (lambda: rd.cfg(X, X, True), TypeError, "scale"),
    "bool-alpha_bar": (lambda: rd.q_sample(X, True, X), TypeError, "alpha_bar_t"),
    "string-phi": (lambda: rd.guidance_rescale(X, X, "0.7"), TypeError, "phi"),
    "array-phi": (lambda: rd.guidance_rescale(X, X, np.array(0.7)), TypeError, "phi"),
    "bool-clip": (lambda: rd.ddim_step(X, X, 0.5, 0.6, clip_x0=True), ValueError, "clip_x0"),
    "zero-d-x_T": (lambda: rd.sample(_model, np.array(1.0), SCH), ValueError, "x_T"),
    "zero-d-invert": (lambda: rd.ddim_invert(_model, np.array(1.0), SCH), ValueError, "x0"),
    "int-x": (lambda: rd.cfg(np.ones((2, 3), dtype=np.int64), X, 2.0), TypeError, "eps_uncond"),
    "mixed-dtype": (lambda: rd.cfg(X, X.astype(np.float32), 2.0), TypeError, "eps_cond"),
    "mixed-shape": (lambda: rd.ddpm_step(X, X, 0.5, 0.6, np.ones(3)), ValueError, "noise"),
}


# ----- helper: exported helpers check what their callers check -----------------------------
HELPERS = {
    "ddim_sigma-prev-zero": (lambda: rd.ddim_sigma(0.5, 0.0, 0.0), ValueError, "alpha_bar_prev"),
    "ddim_sigma-order": (lambda: rd.ddim_sigma(0.9, 0.5, 0.5), ValueError, "alpha_bar_prev"),
    "ddim_sigma-nan": (lambda: rd.ddim_sigma(math.nan, 0.5, 0.5), ValueError, "alpha_bar_t"),
    "ddim_sigma-eta-negative": (lambda: rd.ddim_sigma(0.3, 0.5, -1.0), ValueError, "eta"),
    "ddim_sigma-eta-large": (lambda: rd.ddim_sigma(0.1, 0.9, 3.0), ValueError, "eta=3.0"),
    "ddim_sigma-array-inf": (lambda: rd.ddim_sigma(np.array([np.inf]), 0.5, 0.0), ValueError,
                             "alpha_bar_t"),
    "posterior_coefficients-order": (lambda: rd.posterior_coefficients(0.6, 0.5), ValueError,
                                     "alpha_bar_prev"),
    "posterior_coefficients-string": (lambda: rd.posterior_coefficients("a", 0.5), TypeError,
                                      "alpha_bar_t"),
    "offset-nan": (lambda: rd.inference_timesteps(10, 5, offset=math.nan), TypeError, "offset"),
    "cfg_multi-float-scales": (lambda: rd.cfg_multi(X, [X, X], 2.0), TypeError, "scales"),
    "cfg_multi-array-conds": (lambda: rd.cfg_multi(X, X, [2.0, 1.0]), TypeError, "eps_conds"),
    "cfg_multi-empty": (lambda: rd.cfg_multi(X, [], []), ValueError, "non-empty"),
    "cfg_multi-bad-scale": (lambda: rd.cfg_multi(X, [X], ["2"]), TypeError, r"scales\[0\]"),
    "classifier_gradient-returns-None": (lambda: rd.classifier_gradient(
        None, X, grad_log_prob=lambda x: None), TypeError, "grad must be an array"),
    "classifier_gradient-wrong-shape": (lambda: rd.classifier_gradient(
        None, X, grad_log_prob=lambda x: np.ones(3)), ValueError, "grad must have the shape"),
    "guidance_rescale-1d": (lambda: rd.guidance_rescale(np.ones(3), np.ones(3), 0.7), ValueError,
                            "eps_guided must have a batch axis"),
    "min_snr_weight-gamma": (lambda: rd.min_snr_weight(0.5, -1.0), ValueError, "gamma"),
    "diffusion_loss-gamma": (lambda: rd.diffusion_loss(X, X, X, 0.5, gamma=math.nan),
                             ValueError, "gamma"),
    "sinusoidal_embedding-dim": (lambda: rd.sinusoidal_embedding(np.ones(2), 3), ValueError,
                                 "dim"),
    "guidance_scale_embedding-multiplier": (lambda: rd.guidance_scale_embedding(
        np.ones(2), 8, multiplier=math.inf), ValueError, "multiplier"),
    "sample_guidance_scales-order": (lambda: rd.sample_guidance_scales(X, 3.0, 1.0, generator=0),
                                     ValueError, "scale_min"),
    "drop_condition-p": (lambda: rd.drop_condition(np.arange(3), 10, 1.5, generator=0),
                         ValueError, "p must lie"),
    "sample_timesteps-count": (lambda: rd.sample_timesteps(X, 0, generator=0), ValueError,
                               "num_train_timesteps"),
}


# ----- schedule ----------------------------------------------------------------------------
SCHEDULES = {
    "tiny-beta_start": (lambda: rd.linear_schedule(10, beta_start=1e-17), ValueError,
                        "alphas_cumprod"),
    "guided-diffusion-T-below-20": (lambda: rd.guided_diffusion_linear_schedule(10), ValueError,
                                    "num_train_timesteps must be >= 20"),
    "rescale-non-Schedule": (lambda: rd.rescale_zero_terminal_snr(np.ones(3)), TypeError,
                             "schedule must be a refdiff.Schedule"),
    "sample-non-Schedule": (lambda: rd.sample(_model, X, np.ones(3)), TypeError,
                            "schedule must be a refdiff.Schedule"),
    "invert-non-Schedule": (lambda: rd.ddim_invert(_model, X, None), TypeError,
                            "schedule must be a refdiff.Schedule"),
    "alpha_bar_at-non-Schedule": (lambda: rd.alpha_bar_at("linear", np.array([1])), TypeError,
                                  "schedule must be a refdiff.Schedule"),
    "count-float": (lambda: rd.cosine_schedule(10.0), ValueError, "num_train_timesteps"),
    "count-bool": (lambda: rd.linear_schedule(True), ValueError, "num_train_timesteps"),
    "beta-string": (lambda: rd.linear_schedule(10, beta_end="0.02"), TypeError, "beta_end"),
    "beta-nan": (lambda: rd.scaled_linear_schedule(10, beta_start=math.nan), ValueError,
                 "beta_start"),
    "cosine-s-inf": (lambda: rd.cosine_schedule(10, s=math.inf), ValueError, "s must lie"),
    "betas-2d": (lambda: rd.Schedule.from_betas(np.ones((2, 2)) * 0.1), ValueError, "1-D"),
    "betas-empty": (lambda: rd.Schedule.from_betas([]), ValueError, "non-empty"),
    "zsnr-one-step": (lambda: rd.rescale_zero_terminal_snr(rd.linear_schedule(1)), ValueError,
                      "num_train_timesteps >= 2"),
    "spacing": (lambda: rd.inference_timesteps(10, 5, "uniform"), ValueError, "spacing"),
    "steps-above-T": (lambda: rd.inference_timesteps(10, 11), ValueError, "num_inference_steps"),
}


# ----- every table above: the exception type and the argument's name --------------------
REFUSED = {f"{prefix}-{k}": case for prefix, table in (
    ("coercion", COERCIONS), ("helper", HELPERS), ("schedule", SCHEDULES))
    for k, case in table.items()}


@pytest.mark.parametrize("call,exc,match", list(REFUSED.values()), ids=list(REFUSED))
def test_refused_by_name(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----- valid edge inputs: finite results ----------------------------------------------------
VALID = {
    "empty-batch-rescale": lambda: rd.guidance_rescale(np.ones((0, 3)), np.ones((0, 3)), 0.7),
    "empty-batch-cfg": lambda: rd.cfg(np.ones((0, 3)), np.ones((0, 3)), 2.0),
    "constant-sample-rescale": lambda: rd.guidance_rescale(np.ones((2, 3)), X * 2, 1.0),
    "last-step-to-one": lambda: rd.ddpm_step(X, X, 0.3, 1.0, X),
    "zero-snr-with-x0_hat": lambda: rd.ddim_step(X, X, 0.0, 0.5, x0_hat=X),
    "ddim-eta-one": lambda: rd.ddim_step(X, X, 0.3, 0.6, eta=1.0, noise=X),
    "ab-one-q_sample": lambda: rd.q_sample(X, 1.0, X),
    "ab-zero-q_sample": lambda: rd.q_sample(X, 0.0, X),
    "numpy-int-t": lambda: SCH.alpha_bar(np.int64(5)),
    "array-timesteps": lambda: rd.sample(_model, X, SCH, timesteps=np.array([50, 10])),
    "per-sample-scale": lambda: rd.sample(_model, X, SCH, num_inference_steps=3,
                                          guidance=rd.Guidance(cond=1, scale=np.array([0.0, 3.0]))),
    "per-sample-classifier-scale": lambda: rd.sample(
        _model, X, SCH, num_inference_steps=3,
        guidance=rd.Guidance(classifier=lambda x, t: None, grad_log_prob=lambda x, t: -x,
                             classifier_scale=np.array([0.0, 2.0]))),
    "huge-scale": lambda: rd.cfg(X, X * 0.5, 1e6),
    "snr-at-one": lambda: rd.snr(np.array([1.0, 0.5]))[1:],
    "guided-diffusion-T-20": lambda: rd.guided_diffusion_linear_schedule(20).alphas_cumprod[:-1],
}


@pytest.mark.parametrize("call", list(VALID.values()), ids=[f"valid-{k}" for k in VALID])
def test_valid_edge_input_is_finite(call):
    out = call()
    for a in out if isinstance(out, tuple) else (out,):
        assert np.all(np.isfinite(np.asarray(a, dtype=np.float64)))


# ----- float16 / bfloat16: no overflow where the float64 result fits -----------------------
torch = pytest.importorskip("torch")
SCHEDULE_FNS = {"linear": rd.linear_schedule, "scaled_linear": rd.scaled_linear_schedule,
                "cosine": rd.cosine_schedule,
                "zero_snr": lambda T: rd.rescale_zero_terminal_snr(rd.linear_schedule(T))}
TABLES = {k: f(1000) for k, f in SCHEDULE_FNS.items()}
LIMITS = {torch.float16: 65504.0, torch.bfloat16: 3.38e38}


@pytest.mark.parametrize("kind", sorted(SCHEDULE_FNS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@settings(max_examples=40)
@given(data=st.data())
def test_low_precision_steps_do_not_overflow(kind, dtype, data):
    """Every schedule × timestep pair: DDIM (η = 0 and 1) and DDPM steps stay finite in
    float16/bfloat16 whenever the float64 result fits the dtype with a 4× margin."""
    sch = TABLES[kind]
    # the noisy end (ᾱ_t tiny, 1/√ᾱ_t large) is where an x̂_0 intermediate overflows
    t = data.draw(st.one_of(st.integers(990, 999), st.integers(1, 999)), label="t")
    t_prev = data.draw(st.one_of(st.just(t - 1), st.integers(-1, t - 1)), label="t_prev")
    ab_t, ab_prev = sch.alpha_bar(t), (1.0 if t_prev < 0 else sch.alpha_bar(t_prev))
    if ab_t == 0:  # zero terminal SNR: an ε model has no x̂_0 there (refused, tested above)
        return
    x, e, z = (data.draw(st.floats(-300, 300), label=n) for n in ("x_t", "eps", "z"))
    low = [torch.full((1, 2), v, dtype=dtype) for v in (x, e, z)]
    f64 = [a.to(torch.float64) for a in low]  # the same rounded inputs in float64
    steps = {
        "ddim": lambda a: rd.ddim_step(a[0], a[1], ab_t, ab_prev),
        "ddim-eta1": lambda a: rd.ddim_step(a[0], a[1], ab_t, ab_prev, eta=1.0, noise=a[2]),
        "ddpm": lambda a: rd.ddpm_step(a[0], a[1], ab_t, ab_prev, a[2],
                                       variance_type="fixed_large"),
    }
    for name, step in steps.items():
        ref = step(f64)
        if float(ref.abs().max()) * 4 > LIMITS[dtype]:
            continue
        out = step(low)
        assert torch.isfinite(out).all(), (name, kind, t, t_prev, x, e, z, out, ref)


def test_the_reported_float16_overflows_are_gone():
    """cosine t = 999: ddim_step with x_t = 3.3, ε = 0 and ddpm_step with x_t = 4.3."""
    sch = TABLES["cosine"]
    ab, ap = sch.alpha_bar(999), sch.alpha_bar(979)
    for step, v in ((lambda x, e: rd.ddim_step(x, e, ab, ap), 3.3),
                    (lambda x, e: rd.ddpm_step(x, e, ab, ap, e), 4.3)):
        x = torch.full((1, 2), v, dtype=torch.float16)
        out, ref = step(x, torch.zeros_like(x)), step(x.double(), torch.zeros_like(x.double()))
        assert torch.isfinite(out).all()
        assert abs(float(out[0, 0]) - float(ref[0, 0])) <= 2 ** -10 * abs(float(ref[0, 0])) * 2
