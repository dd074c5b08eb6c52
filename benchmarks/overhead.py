"""Per-call overhead: every public function of refdiff on tiny arrays (shape (2, 3)).

On arrays this small the arithmetic costs well under a microsecond, so the time per call is
the cost of the Python around it: namespace inference, argument checks, scalar handling.
Property tests call these functions millions of times, which is why this is measured. The
step functions are also timed as the hand-written expression of the same math, which is
the floor for any Python implementation.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Callable

import refdiff as rd
from benchmarks.timer import measure

TINY = (2, 3)
# The step functions the per-call benchmark target (< ~20 µs on NumPy) applies to.
STEP_FUNCTIONS = ("q_sample", "cfg", "ddim_step", "ddpm_step", "ddim_inversion_step",
                  "ddpm_mean_variance", "q_posterior", "predict_x0_eps")


def _hand(x, u, c, z):
    """Hand-written tiny-array versions of the step functions (floats precomputed per call)."""
    def q_sample():
        return math.sqrt(0.3) * x + math.sqrt(0.7) * z

    def cfg():
        return u + 7.5 * (c - u)

    def ddim_step():
        x0 = (x - math.sqrt(0.7) * u) / math.sqrt(0.3)
        return math.sqrt(0.55) * x0 + math.sqrt(0.45) * u

    def ddpm_step():
        beta = 1.0 - 0.3 / 0.55
        c0 = math.sqrt(0.55) * beta / 0.7
        ct = math.sqrt(1.0 - beta) * 0.45 / 0.7
        x0 = (x - math.sqrt(0.7) * u) / math.sqrt(0.3)
        return c0 * x0 + ct * x + math.sqrt(0.45 / 0.7 * beta) * z

    return {"q_sample": q_sample, "cfg": cfg, "ddim_step": ddim_step, "ddpm_step": ddpm_step}


def public_calls(library: str = "numpy") -> dict[str, Callable[[], Any]]:
    """A zero-argument call of every public function of refdiff on tiny inputs.

    Parameters
    ----------
    library : {"numpy", "torch"}
        NumPy float64 or torch CPU float32 inputs of shape (2, 3).

    Returns
    -------
    dict
        Label (the function's name, then a note where one function has two calls) to a
        zero-argument call; grouped as guidance, forward process, steps, schedules,
        sampling loops, then training and conditioning.
    """
    inputs = _tiny_inputs(library)
    calls: dict[str, Callable[[], Any]] = {}
    for group in (_guidance_calls, _forward_calls, _step_calls, _schedule_calls,
                  _sampling_calls, _training_calls, _path_calls, _solver_calls):
        calls.update(group(inputs))
    return calls


def _tiny_inputs(library: str) -> SimpleNamespace:
    """The tiny arrays, schedule, model and classifier that the calls share."""
    import numpy as np

    rng = np.random.default_rng(0)
    if library == "numpy":
        def arr(a, dtype="float64"):
            return np.asarray(a, dtype=dtype)
    else:
        import torch

        def arr(a, dtype="float32"):
            return torch.asarray(np.asarray(a)).to(getattr(torch, dtype))
    x, u, c, z = (arr(rng.standard_normal(TINY)) for _ in range(4))
    ab = arr(np.array([0.3, 0.4]), "float64")
    labels = arr(np.array([0, 2]), "int64")
    logits = arr(rng.standard_normal((2, 3)))
    sched = rd.linear_schedule(1000)

    def model(x_t, t, cond):
        return u if cond is None else c

    def log_prob(v):
        return rd.label_log_prob(v, labels)

    def classifier(v, t):
        return v

    return SimpleNamespace(x=x, u=u, c=c, z=z, ab=ab, labels=labels, logits=logits,
                           sched=sched, model=model, log_prob=log_prob,
                           classifier=classifier, gen=0)


def _guidance_calls(a: SimpleNamespace) -> dict[str, Callable[[], Any]]:
    """Classifier-free and classifier guidance."""
    x, u, c, z, log_prob = a.x, a.u, a.c, a.z, a.log_prob
    return {
        "cfg": lambda: rd.cfg(u, c, 7.5),
        "cfg_multi": lambda: rd.cfg_multi(u, [c, z], [2.0, -1.0]),
        "cfg_scale_from_w": lambda: rd.cfg_scale_from_w(6.5),
        "w_from_cfg_scale": lambda: rd.w_from_cfg_scale(7.5),
        "guidance_rescale": lambda: rd.guidance_rescale(u, c, 0.7),
        "classifier_guided_eps": lambda: rd.classifier_guided_eps(u, c, 0.3, 2.0),
        "classifier_guided_mean": lambda: rd.classifier_guided_mean(u, 0.1, c, 2.0),
        "classifier_gradient": lambda: rd.classifier_gradient(
            log_prob, x, grad_log_prob=lambda v: v * 1.0),
        "apg": lambda: rd.apg(u, c, 7.5, norm_threshold=1.0),
        "cfgpp_ddim_step": lambda: rd.cfgpp_ddim_step(x, u, c, 0.6, 0.3, 0.55),
        "scheduled_scale": lambda: rd.scheduled_scale(_INTERVAL, 10, 50, 1.3),
        "sigma_from_alpha_bar": lambda: rd.sigma_from_alpha_bar(0.3),
        "interval_from_steps": lambda: rd.interval_from_steps([8.0, 4.0, 2.0, 1.0], 1, 2),
    }


_INTERVAL = rd.ScaleSchedule("interval", 7.5, sigma_lo=0.28, sigma_hi=5.42)


def _forward_calls(a: SimpleNamespace) -> dict[str, Callable[[], Any]]:
    """The forward process and conversions between parameterisations."""
    x, u, z, ab = a.x, a.u, a.z, a.ab
    return {
        "q_sample": lambda: rd.q_sample(x, 0.3, z),
        "q_sample (per-sample ᾱ)": lambda: rd.q_sample(x, ab, z),
        "predict_x0_eps": lambda: rd.predict_x0_eps(x, u, 0.3),
        "prediction_from_x0_eps": lambda: rd.prediction_from_x0_eps(x, u, 0.3, "v_prediction"),
        "v_target": lambda: rd.v_target(x, u, 0.3),
    }


def _step_calls(a: SimpleNamespace) -> dict[str, Callable[[], Any]]:
    """The posterior and the DDPM / DDIM steps."""
    x, u, z = a.x, a.u, a.z
    return {
        "posterior_coefficients": lambda: rd.posterior_coefficients(0.3, 0.55),
        "q_posterior": lambda: rd.q_posterior(x, z, 0.3, 0.55),
        "ddim_sigma": lambda: rd.ddim_sigma(0.3, 0.55, 0.5),
        "ddim_step": lambda: rd.ddim_step(x, u, 0.3, 0.55),
        "ddim_step (eta=1)": lambda: rd.ddim_step(x, u, 0.3, 0.55, eta=1.0, noise=z),
        "ddpm_step": lambda: rd.ddpm_step(x, u, 0.3, 0.55, z),
        "ddpm_mean_variance": lambda: rd.ddpm_mean_variance(x, u, 0.3, 0.55),
        "ddim_inversion_step": lambda: rd.ddim_inversion_step(x, u, 0.55, 0.3),
        "ddpm_step (learned_range)": lambda: rd.ddpm_step(x, u, 0.3, 0.55, z,
                                                          variance_type="learned_range",
                                                          var_values=0.5 * u),
        "dynamic_threshold": lambda: rd.dynamic_threshold(x),
        "ddim_step (thresholding)": lambda: rd.ddim_step(x, u, 0.3, 0.55,
                                                         clip_x0=rd.DynamicThreshold()),
    }


def _schedule_calls(a: SimpleNamespace) -> dict[str, Callable[[], Any]]:
    """Noise schedules and inference timesteps."""
    sched = a.sched
    return {
        "linear_schedule": lambda: rd.linear_schedule(1000),
        "guided_diffusion_linear_schedule": lambda: rd.guided_diffusion_linear_schedule(1000),
        "scaled_linear_schedule": lambda: rd.scaled_linear_schedule(1000),
        "cosine_schedule": lambda: rd.cosine_schedule(1000),
        "rescale_zero_terminal_snr": lambda: rd.rescale_zero_terminal_snr(sched),
        "inference_timesteps": lambda: rd.inference_timesteps(1000, 50, "trailing"),
        "guided_diffusion_timesteps": lambda: rd.guided_diffusion_timesteps(1000, "ddim50"),
        "compvis_timesteps": lambda: rd.compvis_timesteps(1000, 50),
    }


def _sampling_calls(a: SimpleNamespace) -> dict[str, Callable[[], Any]]:
    """The sampling and inversion loops (10 steps each)."""
    model, x, sched = a.model, a.x, a.sched
    return {
        "sample (10 DDIM steps, CFG)": lambda: rd.sample(
            model, x, sched, num_inference_steps=10,
            guidance=rd.Guidance(cond=1, uncond=None, scale=7.5)),
        "ddim_invert (10 steps)": lambda: rd.ddim_invert(model, x, sched, num_inference_steps=10),
    }


def _training_calls(a: SimpleNamespace) -> dict[str, Callable[[], Any]]:
    """Training losses, weights, embeddings and condition dropout."""
    x, u, c, z, ab, labels, logits, sched, cls, gen = (
        a.x, a.u, a.c, a.z, a.ab, a.labels, a.logits, a.sched, a.classifier, a.gen)
    return {
        "alpha_bar_at": lambda: rd.alpha_bar_at(sched, labels),
        "sample_timesteps": lambda: rd.sample_timesteps(x, 1000, generator=gen),
        "drop_condition": lambda: rd.drop_condition(labels, 3, 0.1, generator=gen),
        "snr": lambda: rd.snr(0.3),
        "min_snr_weight": lambda: rd.min_snr_weight(0.3),
        "diffusion_loss": lambda: rd.diffusion_loss(u, x, z, ab),
        "label_log_prob": lambda: rd.label_log_prob(logits, labels),
        "cross_entropy": lambda: rd.cross_entropy(logits, labels),
        "noisy_classifier_loss": lambda: rd.noisy_classifier_loss(cls, x, labels, labels, ab, z),
        "sinusoidal_embedding": lambda: rd.sinusoidal_embedding(ab, 8),
        "guidance_scale_embedding": lambda: rd.guidance_scale_embedding(ab, 8),
        "sample_guidance_scales": lambda: rd.sample_guidance_scales(x, 1.0, 8.0, generator=gen),
        "guidance_distillation_target": lambda: rd.guidance_distillation_target(u, c, 7.5),
        "guided_ddim_step": lambda: rd.guided_ddim_step(x, u, c, 7.5, 0.3, 0.55),
        "guided_ddpm_step": lambda: rd.guided_ddpm_step(x, u, c, 7.5, 0.3, 0.55, z),
    }


def _path_calls(a: SimpleNamespace) -> dict[str, Callable[[], Any]]:
    """Gaussian paths, conversions between predictions, and lists of noise levels."""
    x, u = a.x, a.u
    return {
        "path_coefficients": lambda: rd.path_coefficients("vp", 0.3),
        "path_sigma": lambda: rd.path_sigma("flow", 0.6),
        "path_level": lambda: rd.path_level("vp", 2.0),
        "change_path": lambda: rd.change_path(x, "ve", 2.0, "flow"),
        "path_x0_eps": lambda: rd.path_x0_eps(x, u, 0.4, 0.6, "velocity"),
        "path_prediction": lambda: rd.path_prediction(x, u, 0.4, 0.6, "v_prediction"),
        "convert_prediction": lambda: rd.convert_prediction(x, u, 0.4, 0.6, "epsilon", "velocity"),
        "karras_sigmas": lambda: rd.karras_sigmas(30, 0.002, 80.0),
        "vp_sigmas": lambda: rd.vp_sigmas(a.sched, [999, 499, 0]),
        "time_shift": lambda: rd.time_shift(0.4, 3.0),
        "exponential_time_shift": lambda: rd.exponential_time_shift(0.4, 1.15),
        "dynamic_shift": lambda: rd.dynamic_shift(1024),
        "flow_times": lambda: rd.flow_times(28, shift=3.0),
    }


def _solver_calls(a: SimpleNamespace) -> dict[str, Callable[[], Any]]:
    """The σ-space and flow steps, and their loops (10 steps each)."""
    x, u, c, z = a.x, a.u, a.c, a.z
    state = rd.MultistepState(c, 4.0)
    sig = [float(v) for v in rd.karras_sigmas(10, 0.002, 80.0)]

    def denoiser(x_m, sigma, cond):
        return u if cond is None else c

    return {
        "euler_step": lambda: rd.euler_step(x, u, 2.0, 1.0),
        "heun_step": lambda: rd.heun_step(x, u, 2.0, 1.0, c),
        "ancestral_sigmas": lambda: rd.ancestral_sigmas(2.0, 1.0),
        "euler_ancestral_step": lambda: rd.euler_ancestral_step(x, u, 2.0, 1.0, z),
        "flow_euler_step": lambda: rd.flow_euler_step(x, u, 0.8, 0.6),
        "dpmpp_2m_step": lambda: rd.dpmpp_2m_step(x, u, 2.0, 1.0, state),
        "sample_ode (10 DPM-Solver++(2M) steps, CFG)": lambda: rd.sample_ode(
            denoiser, x, sig, solver="dpmpp_2m",
            guidance=rd.Guidance(cond=1, uncond=None, scale=3.0)),
        "sample_flow (10 steps, CFG)": lambda: rd.sample_flow(
            denoiser, x, [float(t) for t in rd.flow_times(10, shift=3.0)],
            guidance=rd.Guidance(cond=1, uncond=None, scale=3.0)),
    }


def covered_names() -> set[str]:
    """The public names that :func:`public_calls` times (the first word of each key)."""
    return {k.split(" ")[0] for k in public_calls("numpy")}


def run_overhead(libraries=("numpy", "torch"), *, rounds: int = 7,
                 min_sample_s: float = 0.002, budget_s: float | None = None) -> list[dict]:
    """Time per call (µs) of every public function on tiny arrays, per library."""
    import numpy as np

    rows = []
    for lib in libraries:
        calls = public_calls(lib)
        for name in calls:
            calls[name]()  # raise here, not inside the timer, if a call spec is wrong
        rng = np.random.default_rng(1)
        if lib == "numpy":
            arrays = [rng.standard_normal(TINY) for _ in range(4)]
        else:
            import torch

            arrays = [torch.asarray(rng.standard_normal(TINY)).float() for _ in range(4)]
        hand = _hand(*arrays)
        cases = dict(calls)
        cases.update({f"hand:{k}": v for k, v in hand.items()})
        stats = measure(cases, rounds=rounds, warmup=3, min_sample_s=min_sample_s,
                        budget_s=budget_s)
        for name in calls:
            key = name.split(" ")[0]
            h = stats.get(f"hand:{name}")
            rows.append({"library": lib, "dtype": "float64" if lib == "numpy" else "float32",
                         "function": name, "us": stats[name].median * 1e6,
                         "spread": stats[name].spread, "hand_us": h.median * 1e6 if h else None,
                         "step_function": key in STEP_FUNCTIONS and name == key})
    return rows
