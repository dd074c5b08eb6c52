"""The sampling loop: DDPM or DDIM over a list of timesteps, with CFG or classifier guidance.

The loop is the only place in refdiff that draws random numbers, from a generator (or an int
seed) that the caller passes, through the backend of ``x_T``.

Conventions (see the README table):

- ``timesteps`` is a descending list of training timesteps; t_prev is the next element of the
  list, never ``t − T // n``. After the last element the step goes to ᾱ = 1 (``final_alpha_bar
  = "one"``, as guided-diffusion, k-diffusion and diffusers' DDPM) or to ᾱ_0 (``"alpha_bar_0"``,
  as the CompVis sampler and diffusers' DDIM with ``set_alpha_to_one=False``).
- No noise is added on the last step; "last" is decided by position in the list, not by t > 0.
- The model is called as ``model(x_t, t, c)`` with t the training timestep (a Python int) and
  c the condition (``cond``, or ``uncond`` for the unconditional branch). It returns ε, x_0 or
  v according to ``prediction_type``.
- CFG is applied to the model's output (affine, so the space does not matter); guidance
  rescale acts in ``rescale_space`` (default: the model's output space, as diffusers).
- Classifier guidance takes ∇ log p(y | x_t) at x_t with the training timestep t; DDIM uses
  CG Algorithm 2 (shift ε̂), DDPM uses CG Algorithm 1 (shift the mean by s·Σ·g).

References
----------
.. [DDPM] arXiv:2006.11239v2, Algorithm 2.   .. [DDIM] arXiv:2010.02502v4, Eq. 12.
.. [CFG] arXiv:2207.12598v1, Algorithm 2.    .. [CG] arXiv:2105.05233v4, Algorithms 1–2.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from refdiff import _xp
from refdiff.classifier_free import cfg, guidance_rescale
from refdiff.classifier_guidance import classifier_gradient, classifier_guided_eps, classifier_guided_mean
from refdiff.forward import PREDICTION_TYPES, predict_x0_eps, prediction_from_x0_eps
from refdiff.schedules import Schedule, inference_timesteps
from refdiff.steps import ddim_inversion_step, ddim_step, ddpm_mean_variance

SAMPLERS = ("ddim", "ddpm")
FINAL_ALPHA_BARS = ("one", "alpha_bar_0")


@dataclass(frozen=True)
class Guidance:
    """Guidance settings of one sampling run.

    Attributes
    ----------
    cond, uncond : any
        Conditions passed to the model (the unconditional branch gets ``uncond``; a negative
        prompt goes there too).
    scale : float or (B,) array
        CFG scale s (ε̃ = ε_u + s·(ε_c − ε_u)); a float 1 evaluates only the conditional
        branch and 0 only the unconditional one.
    rescale : float
        Guidance-rescale φ (0 = off). ``rescale_space``: the space it acts in (None = the
        model's output space).
    classifier : callable, optional
        ``classifier(x_t, t) -> (B,)`` log p(y | x_t); ``classifier_grad(x_t, t)`` gives an
        analytic gradient instead of autograd. ``classifier_scale`` is s of CG.
    """

    cond: Any = None
    uncond: Any = None
    scale: float = 1.0
    rescale: float = 0.0
    rescale_space: str | None = None
    classifier: Callable[[Any, int], Any] | None = None
    classifier_grad: Callable[[Any, int], Any] | None = None
    classifier_scale: float = 0.0


def _model_x0_eps(model, x, t: int, ab_t: float, g: Guidance, prediction_type: str):
    """Evaluate the model (both branches under CFG), guide, and return (x̂_0, ε̂)."""
    per_sample = _xp.is_array(g.scale)  # a (B,) scale needs both branches
    if not per_sample and g.scale == 1:
        out_c = out = model(x, t, g.cond)
    elif not per_sample and g.scale == 0:
        out_c = out = model(x, t, g.uncond)
    else:
        out_c = model(x, t, g.cond)
        out = cfg(model(x, t, g.uncond), out_c, g.scale)
    if g.rescale == 0:
        return predict_x0_eps(x, out, ab_t, prediction_type)
    space = g.rescale_space or prediction_type
    to_space = [prediction_from_x0_eps(*predict_x0_eps(x, o, ab_t, prediction_type), ab_t, space)
                for o in (out, out_c)]
    return predict_x0_eps(x, guidance_rescale(to_space[0], to_space[1], g.rescale), ab_t, space)


def _progress(items: Sequence[Any], enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # a plain counter on stderr, about ten updates a run
        def plain():
            every = max(1, len(items) // 10)
            for i, item in enumerate(items):
                if (i + 1) % every == 0 or i + 1 == len(items):
                    print(f"sampling: step {i + 1}/{len(items)}", file=sys.stderr)
                yield item
        return plain()
    return tqdm(items, desc="sampling", leave=False)


def _timesteps(schedule: Schedule, timesteps, num_inference_steps: int, spacing: str) -> list[int]:
    if timesteps is None:
        timesteps = inference_timesteps(schedule.num_timesteps, num_inference_steps, spacing)
    ts = [int(t) for t in timesteps]
    T = schedule.num_timesteps
    if not ts or any(not 0 <= t < T for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be a non-empty, strictly descending list in "
                         f"[0, {T - 1}], got {ts[:8]}{'...' if len(ts) > 8 else ''}")
    return ts


def _classifier_grad(g: Guidance, x, t: int):
    """∇ log p(y | x_t) at the training timestep t, or None without classifier guidance."""
    if g.classifier is None or g.classifier_scale == 0:
        return None
    grad_fn = None if g.classifier_grad is None else (lambda z: g.classifier_grad(z, t))
    return classifier_gradient(lambda z: g.classifier(z, t), x, grad_fn=grad_fn)


def _guided_step(x, x0, eps, ab_t, ab_prev, grad, noise, *, sampler, eta, variance, clip_x0,
                 rederive_eps, classifier_scale):
    """One DDIM or DDPM step from (x̂_0, ε̂), with classifier guidance if ``grad`` is given."""
    if sampler == "ddim":
        if grad is not None:
            eps, x0 = classifier_guided_eps(eps, grad, ab_t, classifier_scale), None
        return ddim_step(x, eps, ab_t, ab_prev, eta=eta, noise=noise if eta > 0 else None,
                         clip_x0=clip_x0, rederive_eps=rederive_eps, x0=x0)
    mean, var = ddpm_mean_variance(x, eps, ab_t, ab_prev, variance=variance, clip_x0=clip_x0,
                                   x0=x0)
    if grad is not None:
        mean = classifier_guided_mean(mean, var, grad, classifier_scale)
    xp = _xp.namespace(x=x)
    return mean + xp.sqrt(var) * noise


def sample(model: Callable[[Any, int, Any], Any], x_T: Any, schedule: Schedule, *,
           sampler: str = "ddim", num_inference_steps: int = 50, spacing: str = "leading",
           timesteps: Sequence[int] | None = None, prediction_type: str = "epsilon",
           guidance: Guidance | None = None, eta: float = 0.0, variance: str = "fixed_small",
           clip_x0: float | None = None, rederive_eps: bool = True,
           final_alpha_bar: str = "one", generator: Any = None, progress: bool = False,
           callback: Callable[..., None] | None = None, return_trajectory: bool = False):
    """Run DDPM or DDIM from x_T to x_0, optionally guided.

    Parameters
    ----------
    model : callable
        ``model(x_t, t, c) -> array`` of the shape of ``x_t``: ε, x_0 or v.
    x_T : array, shape (B, ...)
        The starting noise; fixes the backend, device and dtype of the run.
    schedule : Schedule
    sampler : {"ddim", "ddpm"}
    num_inference_steps, spacing
        Used to build ``timesteps`` when it is not given (:func:`inference_timesteps`).
    timesteps : sequence of int, optional
        Strictly descending training timesteps to visit.
    prediction_type : {"epsilon", "sample", "v_prediction"}
    guidance : Guidance, optional
        CFG, guidance rescale and classifier guidance settings (default: none).
    eta : float
        DDIM η (``sampler="ddim"``). ``variance`` is DDPM's ("fixed_small", "fixed_large").
    clip_x0, rederive_eps
        See :func:`refdiff.ddim_step`.
    final_alpha_bar : {"one", "alpha_bar_0"}
        ᾱ after the last timestep.
    generator : int or generator, optional
        Seed or generator of the backend of ``x_T`` for the step noise.
    progress : bool
        Show a progress bar (tqdm if installed).
    callback : callable, optional
        ``callback(i, t, x_t, x0_hat)`` after each step.
    return_trajectory : bool
        Also return the list [x_T, x_{t_1}, ..., x_0].

    Returns
    -------
    x_0 : array, shape, dtype and device of ``x_T`` (and the trajectory if asked)

    References
    ----------
    DDPM Algorithm 2; DDIM Eq. 12; CFG Algorithm 2; CG Algorithms 1–2 (module docstring).
    """
    from refdiff.backends import get_backend

    _xp.choice("sampler", sampler, SAMPLERS)
    _xp.choice("prediction_type", prediction_type, PREDICTION_TYPES)
    _xp.choice("final_alpha_bar", final_alpha_bar, FINAL_ALPHA_BARS)
    g = guidance or Guidance()
    if g.rescale_space is not None:
        _xp.choice("Guidance.rescale_space", g.rescale_space, PREDICTION_TYPES)
    ts = _timesteps(schedule, timesteps, num_inference_steps, spacing)
    final = 1.0 if final_alpha_bar == "one" else schedule.alpha_bar(0)
    backend, dev = get_backend(x_T), _xp.device(x_T)
    gen = backend.generator(generator, dev) if (sampler == "ddpm" or eta > 0) else None
    x, trajectory = x_T, [x_T]
    for i, t in enumerate(_progress(ts, progress)):
        last = i == len(ts) - 1
        ab_t, ab_prev = schedule.alpha_bar(t), final if last else schedule.alpha_bar(ts[i + 1])
        x0, eps = _model_x0_eps(model, x, t, ab_t, g, prediction_type)
        grad = _classifier_grad(g, x, t)
        noise = None
        if gen is not None:  # "is this the last step" decides: no noise after it
            noise = (backend.xp.zeros_like(x) if last else
                     backend.normal(tuple(x.shape), dtype=x.dtype, device=dev, generator=gen))
        x = _guided_step(x, x0, eps, ab_t, ab_prev, grad, noise, sampler=sampler, eta=eta,
                         variance=variance, clip_x0=clip_x0, rederive_eps=rederive_eps,
                         classifier_scale=g.classifier_scale)
        if callback is not None:
            callback(i, t, x, x0)
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x


def ddim_invert(model: Callable[[Any, int, Any], Any], x0: Any, schedule: Schedule, *,
                num_inference_steps: int = 50, spacing: str = "leading",
                timesteps: Sequence[int] | None = None, prediction_type: str = "epsilon",
                cond: Any = None):
    """DDIM inversion (η = 0 run forward) from clean data to the noisiest listed timestep.

    The inverse of :func:`sample` with ``sampler="ddim", eta=0``: the levels are visited in
    the reverse order, from ᾱ = 1 up to ᾱ_{t_0}. ε̂ is evaluated at the source level (x at
    ᾱ_{t_k} with timestep t_k), as guided-diffusion does; the first step starts from the clean
    data, which has no timestep, and evaluates the model there with the smallest listed one.

    Returns
    -------
    x_T : array, shape, dtype and device of ``x0``

    References
    ----------
    DDIM, arXiv:2010.02502v4, §4.3 and Eq. 12 with σ = 0.
    """
    _xp.choice("prediction_type", prediction_type, PREDICTION_TYPES)
    ts = _timesteps(schedule, timesteps, num_inference_steps, spacing)[::-1]  # ascending
    x, ab_src = x0, 1.0
    for k, t_next in enumerate(ts):
        t_eval = ts[k - 1] if k > 0 else t_next  # the source level's timestep
        ab_next = schedule.alpha_bar(t_next)
        # at ᾱ = 1 this gives x̂_0 = x and ε̂ from an ε- or v-model; an x_0-model has no ε̂
        x0_hat, eps = predict_x0_eps(x, model(x, t_eval, cond), ab_src, prediction_type)
        x = ddim_inversion_step(x, eps, ab_src, ab_next, x0=x0_hat)
        ab_src = ab_next
    return x
