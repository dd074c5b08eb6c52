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
- Under CFG the two branches are two model calls, or one call on the batch of 2B with the
  conditions [uncond; cond] concatenated along axis 0 (``batch_cfg=True``, diffusers' habit).
  When nothing needs x̂_0 or ε̃, CFG and the step are one linear combination
  (:mod:`refdiff.fused`, the fast path; equal to the composition up to rounding).
- CFG is applied to the model's output (affine, so the space does not matter); guidance
  rescale acts in ``rescale_space`` (default: the model's output space, as diffusers).
- ``Guidance.scale`` may be a :class:`refdiff.ScaleSchedule` (the guidance interval in σ,
  linear/cosine ramps, a step range): one s per step, evaluated before the first model call;
  a step whose s is 1 evaluates only the conditional branch. ``Guidance.method`` chooses CFG,
  APG (in x̂_0 by default, its momentum carried between steps) or CFG++ (DDIM, η = 0);
  ``Guidance.guiding_model`` evaluates the unconditional branch with another model
  (autoguidance).
- Classifier guidance takes ∇ log p(y | x_t) at x_t with the training timestep t; DDIM uses
  CG Algorithm 2 (shift ε̂), DDPM uses CG Algorithm 1 (shift the mean by s·Σ·g, Σ the
  variance the step uses, learned or fixed). With clipping, DDIM shifts ε̂ and then clips
  (``classifier_order="shift_then_clip"``) or clips, re-derives ε̂, shifts it and does not
  clip again (``"clip_then_shift"``, guided-diffusion).
- A learned-variance model (``variance_type="learned"`` or ``"learned_range"``) returns
  the prediction and the variance channel as the two halves of axis 1.
- :mod:`refdiff.presets` names the option sets that make the loop behave like
  guided-diffusion, CompVis and diffusers.

Every argument is checked once, before the first model evaluation (:func:`_checked_run`):
the options, the timesteps, the guidance settings, and η against every step of the list.
The loop then calls the private bodies of the steps, checking only what the model (and the
classifier gradient) return.

References
----------
.. [DDPM] arXiv:2006.11239v2, Algorithm 2.   .. [DDIM] arXiv:2010.02502v4, Eq. 12.
.. [CFG] arXiv:2207.12598v1, Algorithm 2.    .. [CG] arXiv:2105.05233v4, Algorithms 1–2.
.. [IDDPM] arXiv:2102.09672v1, Eq. 15 (learned range).
.. [GI] arXiv:2404.07724v2, Eq. 6.           .. [APG] arXiv:2410.02416v1, Algorithm 1.
.. [CFGPP] arXiv:2406.08070v1, Algorithm 1.  .. [AUTO] arXiv:2406.02507v3, Eq. 3.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from refdiff import _xp
from refdiff._loop import _model_output, _one_step, _x0_eps_of
from refdiff._prologue import (CLASSIFIER_ORDERS, FINAL_ALPHA_BARS, GUIDANCE_METHODS,
                               LAST_STEP_VARIANCES, MODEL_TIMESTEPS, SAMPLERS, _batch_input,
                               _checked_run, _loop_options, _timesteps)
from refdiff.forward import PREDICTION_TYPES
from refdiff.guidance_variants import APG
from refdiff.schedules import Schedule
from refdiff.steps import _clip_bound, _ddim_inversion_step

__all__ = ["CLASSIFIER_ORDERS", "FINAL_ALPHA_BARS", "GUIDANCE_METHODS", "Guidance",
           "LAST_STEP_VARIANCES", "MODEL_TIMESTEPS", "SAMPLERS", "ddim_invert", "sample"]


@dataclass(frozen=True)
class Guidance:
    """Guidance settings of one sampling run.

    Attributes
    ----------
    cond, uncond : any
        Conditions passed to the model (the unconditional branch gets ``uncond``; a negative
        prompt goes there too).
    scale : float, (B,) array or ScaleSchedule
        CFG scale s (ε̃ = ε_u + s·(ε_c − ε_u)); a float 1 evaluates only the conditional
        branch and 0 only the unconditional one. A :class:`refdiff.ScaleSchedule` gives one
        s per step (the guidance interval, linear, cosine, step): each step whose s is 1 then
        evaluates only the conditional branch. For ``method="cfg++"`` this is λ in [0, 1].
    rescale : float
        Guidance-rescale φ (0 = off). ``rescale_space``: the space it acts in (None = the
        model's output space).
    classifier : callable, optional
        ``classifier(x_t, t) -> (B,)`` log p(y | x_t), differentiated by the backend's
        autograd; or ``grad_log_prob(x_t, t)``, the gradient ∇ log p(y | x_t) itself (used
        when given; then ``classifier`` is not needed). ``classifier_scale`` is s of CG; a
        nonzero s without either is an error.
    method : {"cfg", "apg", "cfg++"}
        How the two branches are combined: CFG (:func:`refdiff.cfg`); adaptive projected
        guidance (:func:`refdiff.apg`, with the settings ``apg``, default ``APG()``: η = 0 in
        x̂_0, the paper's); CFG++ (:func:`refdiff.cfgpp_ddim_step`: ``sampler="ddim"``, η = 0,
        no rescale, clipping or classifier guidance).
    apg : APG, optional
        APG's η, norm threshold, momentum and space (``method="apg"`` only).
    guiding_model : callable, optional
        ``guiding_model(x_t, t, c)``, evaluated in place of ``model`` for the unconditional
        branch (with ``uncond``). Autoguidance: a weaker model of the same task with the
        same condition, ``Guidance(cond=y, uncond=y, scale=w, guiding_model=weak)``.
    """

    cond: Any = None
    uncond: Any = None
    scale: Any = 1.0
    rescale: float = 0.0
    rescale_space: str | None = None
    classifier: Callable[[Any, int], Any] | None = None
    grad_log_prob: Callable[[Any, int], Any] | None = None
    classifier_scale: float = 0.0
    method: str = "cfg"
    apg: APG | None = None
    guiding_model: Callable[[Any, int, Any], Any] | None = None


def _progress(items: Sequence[Any], enabled: bool) -> Any:
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # a plain counter on stderr, about ten updates a run
        def plain() -> Any:
            every = max(1, len(items) // 10)
            for i, item in enumerate(items):
                if (i + 1) % every == 0 or i + 1 == len(items):
                    print(f"sampling: step {i + 1}/{len(items)}", file=sys.stderr)
                yield item
        return plain()
    return tqdm(items, desc="sampling", leave=False)


# ----- public functions -------------------------------------------------------------------

def sample(model: Callable[[Any, int, Any], Any], x_T: Any, schedule: Schedule, *,
           sampler: str = "ddim", num_inference_steps: int | None = None,
           spacing: str | None = None,
           timesteps: Sequence[int] | Any | None = None, prediction_type: str = "epsilon",
           guidance: Guidance | None = None, eta: float = 0.0,
           variance_type: str | None = None, last_step_variance: str = "floor",
           clip_x0: Any = None, rederive_eps: bool = True,
           classifier_order: str = "shift_then_clip", final_alpha_bar: str = "one",
           generator: Any = None, progress: bool = False,
           callback: Callable[..., None] | None = None, return_trajectory: bool = False,
           batch_cfg: bool = False) -> Any:
    """Run DDPM or DDIM from x_T to x_0, optionally guided.

    Parameters
    ----------
    model : callable
        ``model(x_t, t, c) -> array`` of the shape of ``x_t``: ε, x_0 or v; with a learned
        ``variance_type``, of shape (B, 2C, ...): the prediction, then the variance channel
        along axis 1.
    x_T : array, shape (B, ...)
        The starting noise; fixes the backend, device and dtype of the run.
    schedule : Schedule
    sampler : {"ddim", "ddpm"}
    num_inference_steps, spacing : int and str, optional
        Build ``timesteps`` with :func:`inference_timesteps` (default 50 and "leading").
    timesteps : sequence of int or int array, optional
        Strictly descending training timesteps to visit; excludes ``num_inference_steps``
        and ``spacing`` (passing both is an error).
    prediction_type : {"epsilon", "sample", "v_prediction"}
    guidance : Guidance, optional
        CFG (a constant scale or a :class:`refdiff.ScaleSchedule`), the method (CFG, APG,
        CFG++), the guiding model, guidance rescale and classifier guidance settings
        (default: none).
    eta : float
        DDIM η (``sampler="ddim"``; a nonzero η with ``sampler="ddpm"`` is an error).
    variance_type : {"fixed_small", "fixed_large", "learned", "learned_range"}, optional
        DDPM's variance (``sampler="ddpm"`` only; default "fixed_small"); see
        :func:`refdiff.ddpm_mean_variance`. Under CFG the variance channel is the
        conditional branch's (GLIDE, DiT), the unconditional one's at scale 0.
    last_step_variance : {"floor", "previous_beta_tilde"}
        β̃ at the last step (to ᾱ = 1, where β̃ = 0): floored at 1e-20 inside log β̃
        (diffusers), or replaced by the β̃ of the step before (guided-diffusion, which also
        uses it as the "fixed_large" variance there; "fixed_small" and "learned" are the
        same under both). No noise is added on the last step either way; the choice shows
        in classifier guidance's μ + s·Σ·g.
    clip_x0, rederive_eps
        See :func:`refdiff.ddim_step` (``clip_x0`` may be a :class:`DynamicThreshold`).
    classifier_order : {"shift_then_clip", "clip_then_shift"}
        DDIM with classifier guidance and ``clip_x0``: shift ε̂ (CG Algorithm 2), then clip
        the x̂_0 it gives (refdiff); or clip x̂_0, re-derive ε̂, shift it and rebuild x̂_0 from
        the shifted ε̂ without clipping again (guided-diffusion's ``condition_score``).
    final_alpha_bar : {"one", "alpha_bar_0"}
        ᾱ after the last timestep.
    generator : int or generator, optional
        Seed or generator of the backend of ``x_T`` for the step noise; checked even when no
        step draws (DDIM with η = 0), and then not advanced.
    progress : bool
        Show a progress bar (tqdm if installed).
    callback : callable, optional
        ``callback(i, t, x_t, x0_hat)`` after each step.
    return_trajectory : bool
        Also return the list [x_T, x_{t_1}, ..., x_0].
    batch_cfg : bool
        Under CFG (both branches evaluated), call the model once per step on the batch of
        2B, x_t concatenated with itself along axis 0, with the condition
        ``concat([uncond, cond], axis=0)``, and split the output back into halves (the
        unconditional first: diffusers' pipelines). ``Guidance.cond`` and ``.uncond`` must
        then be arrays of the library and device of ``x_T``, of one dtype and shape, with
        the batch size B along axis 0 (prompt embeddings; class labels with a null label);
        anything else is refused before the first model evaluation. No effect when one
        branch is evaluated (a float scale 0 or 1). A model that treats each sample on its
        own gives the same samples, bit for bit, as with ``batch_cfg=False``.

    Returns
    -------
    x_0 : array, shape, dtype and device of ``x_T`` (and the trajectory if asked)

    Raises
    ------
    TypeError
        For a non-array ``x_T``, a non-Schedule ``schedule``, non-int timesteps, a model that
        returns anything but an array like ``x_t``, or option values of the wrong type.
    ValueError
        For bad option values, unordered timesteps, an η too large for a step of the list,
        options that do not apply to the sampler, or ``timesteps`` with
        ``num_inference_steps``/``spacing``; all before the first model evaluation.

    Notes
    -----
    Fast path: under CFG (both branches) with an ε model, a fixed variance and nothing that
    needs x̂_0 or ε̃ (no guidance rescale, classifier guidance, ``clip_x0`` or dynamic
    thresholding, no ``callback``), each step is :func:`refdiff.guided_ddim_step` or
    :func:`refdiff.guided_ddpm_step`: CFG and the step as one linear combination of x_t,
    ε_u, ε_c and z. It equals the spec composition ``ddim_step(x, cfg(...))`` (or
    ``ddpm_step``) in exact arithmetic, and to rounding otherwise (bounded in
    tests/test_fused.py); a seed draws the same noise on both.

    References
    ----------
    DDPM Algorithm 2; DDIM Eq. 12; CFG Algorithm 2; CG Algorithms 1–2; IDDPM Eq. 15; GI Eq. 6;
    APG Algorithm 1; CFGPP Algorithm 1; AUTO Eq. 3 (module docstring).
    """
    from refdiff.backends import get_backend

    g = guidance or Guidance()
    run = _checked_run(x_T, schedule, g, sampler=sampler,
                       num_inference_steps=num_inference_steps, spacing=spacing,
                       timesteps=timesteps, prediction_type=prediction_type, eta=eta,
                       variance_type=variance_type, last_step_variance=last_step_variance,
                       clip_x0=clip_x0, rederive_eps=rederive_eps,
                       classifier_order=classifier_order, final_alpha_bar=final_alpha_bar)
    backend, dev = get_backend(x_T), _xp.device(x_T)
    noisy = sampler == "ddpm" or run.eta > 0
    gen = backend.generator(generator, dev)  # checked even when no step draws (η = 0 DDIM)
    progress, return_trajectory = (_xp.flag(n, v) for n, v in (
        ("progress", progress), ("return_trajectory", return_trajectory)))
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    run = _loop_options(run, g, x_T, batch_cfg, callback)
    x, trajectory, running = x_T, [x_T], None
    for i, (t, _, _) in enumerate(_progress(run.levels, progress)):
        noise = None
        if noisy:  # "is this the last step" decides: no noise after it
            last = i == len(run.levels) - 1
            noise = (backend.xp.zeros_like(x) if last else
                     backend.normal(tuple(x.shape), dtype=x.dtype, device=dev, generator=gen))
        # the callback gets x̂_0 of this step's input
        x, seen, running = _one_step(run, model, g, i, x, noise, running, callback is not None)
        if callback is not None:
            callback(i, t, x, seen)
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x


def ddim_invert(model: Callable[[Any, int, Any], Any], x0: Any, schedule: Schedule, *,
                num_inference_steps: int | None = None, spacing: str | None = None,
                timesteps: Sequence[int] | Any | None = None, prediction_type: str = "epsilon",
                cond: Any = None, clip_x0: Any = None, rederive_eps: bool = True,
                model_timestep: str = "source") -> Any:
    """DDIM inversion (η = 0 run forward) from clean data to the noisiest listed timestep.

    The inverse of :func:`sample` with ``sampler="ddim", eta=0``: the levels are visited in
    the reverse order, from ᾱ = 1 up to ᾱ_{t_0}. Each step evaluates the model at its source
    x; ``model_timestep`` says which timestep labels that call: ``"source"``, the timestep of
    x's own level (guided-diffusion's ``ddim_reverse_sample``), or ``"destination"``, the
    timestep of the level the step goes to (diffusers' DDIMInverseScheduler,
    prompt-to-prompt). The first step starts from the clean data, which has no timestep; both
    conventions label it with the smallest listed one.

    Parameters
    ----------
    model : callable
        ``model(x_t, t, c) -> array``: ε or v (an x_0-model gives no ε̂ at the clean data).
    x0 : array, shape (B, ...)
        The clean data to invert.
    schedule : Schedule
    num_inference_steps, spacing, timesteps
        As in :func:`sample`.
    prediction_type : {"epsilon", "v_prediction"}
    cond : any
        The condition passed to the model.
    clip_x0, rederive_eps
        See :func:`refdiff.ddim_inversion_step` (guided-diffusion: ``clip_x0=1.0`` with
        ε̂ re-derived; diffusers' DDIMInverseScheduler: ``clip_x0=1.0, rederive_eps=False``).
    model_timestep : {"source", "destination"}

    Returns
    -------
    x_T : array, shape, dtype and device of ``x0``

    References
    ----------
    DDIM, arXiv:2010.02502v4, §4.3 and Eq. 12 with σ = 0.
    """
    xp = _batch_input(x0, "x0")
    _xp.choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "sample":
        raise ValueError("ddim_invert needs an epsilon or v model: an x_0-model gives no "
                         "eps at the clean data (alpha_bar_t = 1); got prediction_type='sample'")
    _xp.choice("model_timestep", model_timestep, MODEL_TIMESTEPS)
    clip_x0, rederive_eps = _clip_bound(clip_x0), _xp.flag("rederive_eps", rederive_eps)
    ts = _timesteps(schedule, timesteps, num_inference_steps, spacing)[::-1]  # ascending
    x, ab_src = x0, 1.0
    for k, t_next in enumerate(ts):
        t_eval = ts[k - 1] if k > 0 and model_timestep == "source" else t_next
        ab_next = schedule.alpha_bar(t_next)
        # at ᾱ = 1 this gives x̂_0 = x and ε̂ from an ε- or v-model
        out, _ = _model_output(xp, False, model, x, t_eval, cond)
        x0_hat, eps = _x0_eps_of(xp, x, out, ab_src, prediction_type)
        x = _ddim_inversion_step(xp, x, eps, ab_src, ab_next, x0_hat, clip_x0, rederive_eps)
        ab_src = ab_next
    return x
