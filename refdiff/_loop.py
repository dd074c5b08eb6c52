"""One step of the sampling loop: evaluate the branches, guide, step (math only).

Called by :func:`refdiff.sampling.sample` after its checked prologue (``run`` is the
``sampling._Run`` of the call, every option already valid); nothing here validates an option
again, only what the model (and the classifier gradient) return. Which branches a step
evaluates follows from its scale s_i and the method:

- ``"cfg"``: both under guidance; only the conditional one at s = 1 and only the
  unconditional (guiding) one at s = 0 (Python floats), so those ends are exact.
- ``"apg"``: both, except at s = 1 (APG at s = 1 is D_c).
- ``"cfg++"``: both, except at λ = 0 (unconditional DDIM).

The unconditional branch is ``guiding_model(x_t, t, uncond)`` when ``Guidance.guiding_model``
is given (autoguidance: a weaker model of the same condition), else ``model(x_t, t, uncond)``.
APG's running average Δ̄ is updated at the steps that evaluate both branches.

References
----------
.. [CFG] arXiv:2207.12598v1, Algorithm 2.    .. [CG] arXiv:2105.05233v4, Algorithms 1–2.
.. [APG] arXiv:2410.02416v1, Algorithm 1.    .. [CFGPP] arXiv:2406.08070v1, Algorithm 1.
.. [AUTO] T. Karras et al., "Guiding a Diffusion Model with a Bad Version of Itself",
   arXiv:2406.02507v3, Eq. 3.
"""

from __future__ import annotations

from typing import Any

from refdiff import _xp
from refdiff.classifier_free import _cfg, _guidance_rescale
from refdiff.classifier_guidance import (_classifier_gradient, _classifier_guided_eps,
                                         _classifier_guided_mean)
from refdiff.forward import _predict_x0_eps, _prediction_from_x0_eps, _x0_from_eps
from refdiff.fused import _is_end, _loop_step
from refdiff.guidance_variants import _apg, _cfgpp_ddim_step
from refdiff.steps import _ddim_step, _ddpm_mean_variance, _x0_eps


def _one_step(run: Any, model: Any, g: Any, i: int, x: Any, noise: Any, running: Any,
              want_x0: bool) -> Any:
    """(x_prev, x̂_0 or None, running) of step i; x̂_0 (of this step's input) if ``want_x0``."""
    xp, (t, ab_t, ab_prev), s = run.xp, run.levels[i], run.scales[i]
    if run.method == "cfg++":                                       # CFGPP Algorithm 1
        eps_u, eps_c = _eps_pair(run, model, g, x, t, ab_t, s)
        seen = _x0_from_eps(xp, x, _cfg(xp, eps_u, eps_c, s), ab_t) if want_x0 else None
        return _cfgpp_ddim_step(xp, x, eps_u, eps_c, s, ab_t, ab_prev), seen, running
    if run.fused and not _is_end(s):                                # refdiff.fused
        eps_u, eps_c, _ = _branches(run, model, g, x, t)
        return _loop_step(run, x, eps_u, eps_c, s, ab_t, ab_prev, noise), None, running
    x0_hat, eps, var, running = _model_x0_eps(run, model, g, x, t, ab_t, s, running)
    seen = None
    if want_x0:
        seen = x0_hat if x0_hat is not None else _x0_from_eps(xp, x, eps, ab_t)
    return _guided_step(run, g, x, x0_hat, eps, var, t, ab_t, ab_prev, noise), seen, running


def _model_x0_eps(run: Any, model: Any, g: Any, x: Any, t: int, ab_t: float, s: Any,
                  running: Any) -> Any:
    """Evaluate the model (both branches under guidance), guide, and return (x̂_0, ε̂, v,
    running): x̂_0 is None for an ε output, which the step then folds in (the precision rule
    of refdiff.steps); v is the variance channel of a learned-variance model (None
    otherwise); running is APG's Δ̄ after this step."""
    xp, ptype = run.xp, run.prediction_type
    if not _xp.is_array(s) and s == 1:
        out_c, var = _model_output(xp, run.learned, model, x, t, g.cond)
        out = out_c
    elif not _xp.is_array(s) and s == 0 and run.method == "cfg":
        out, var = _model_output(xp, run.learned, _guide(model, g), x, t, g.uncond)
        out_c = out
    else:                                                           # CFG Algorithm 2, line 5
        out_u, out_c, var = _branches(run, model, g, x, t)          # Σ of the conditional branch
        if run.method == "apg":
            out, running = _apg_output(run, x, out_u, out_c, ab_t, s, running)
        else:
            out = _cfg(xp, out_u, out_c, s)
    if run.rescale == 0:
        return (*_x0_eps_of(xp, x, out, ab_t, ptype), var, running)
    space = run.rescale_space
    # always through (x̂_0, ε̂), also when space is the output's: _converted would skip that
    # round trip for v and change the rescaled results of 0.4 in the last bits
    guided, cond = (_prediction_from_x0_eps(xp, *_predict_x0_eps(xp, x, o, ab_t, ptype), ab_t,
                                            space) for o in (out, out_c))
    return (*_x0_eps_of(xp, x, _guidance_rescale(xp, guided, cond, run.rescale), ab_t, space),
            var, running)


def _apg_output(run: Any, x: Any, out_u: Any, out_c: Any, ab_t: float, s: Any,
                running: Any) -> Any:
    """APG in its space (x̂_0 by default), returned in the model's output space."""
    xp, ptype, a = run.xp, run.prediction_type, run.apg
    space = ptype if a.space is None else a.space
    d_u, d_c = (_converted(xp, x, o, ab_t, ptype, space) for o in (out_u, out_c))
    guided, running = _apg(xp, d_u, d_c, s, a.eta, a.norm_threshold, a.momentum, running)
    return _converted(xp, x, guided, ab_t, space, ptype), running


def _converted(xp: Any, x: Any, out: Any, ab_t: float, space: str, to: str) -> Any:
    """A prediction of ``space`` at (x_t, ᾱ_t) expressed in the space ``to`` (as is if equal)."""
    if space == to:
        return out
    return _prediction_from_x0_eps(xp, *_predict_x0_eps(xp, x, out, ab_t, space), ab_t, to)


def _eps_pair(run: Any, model: Any, g: Any, x: Any, t: int, ab_t: float, lam: Any) -> Any:
    """(ε_u, ε_c) of CFG++: only the unconditional branch at λ = 0 (then ε_c is ε_u)."""
    xp, ptype = run.xp, run.prediction_type
    if not _xp.is_array(lam) and lam == 0:
        out_u = out_c = _model_output(xp, False, _guide(model, g), x, t, g.uncond)[0]
    else:
        out_u, out_c, _ = _branches(run, model, g, x, t)
    return tuple(_converted(xp, x, o, ab_t, ptype, "epsilon") for o in (out_u, out_c))


def _guide(model: Any, g: Any) -> Any:
    """The model of the unconditional (guiding) branch: Guidance.guiding_model, or the model."""
    return model if g.guiding_model is None else g.guiding_model


def _branches(run: Any, model: Any, g: Any, x: Any, t: int) -> Any:
    """(out_u, out_c, v) of the two CFG branches: two model calls, or with ``batch_cfg`` one
    call on [x; x] (2B) with the condition [uncond; cond], split back (uncond first, as
    diffusers). v is the conditional branch's variance channel (None for a fixed variance)."""
    xp, learned = run.xp, run.learned
    if run.cond_pair is None:
        out_c, var = _model_output(xp, learned, model, x, t, g.cond)
        return _model_output(xp, learned, _guide(model, g), x, t, g.uncond)[0], out_c, var
    B = x.shape[0]
    out, var = _model_output(xp, learned, model, xp.concat([x, x], axis=0), t, run.cond_pair)
    return out[:B, ...], out[B:, ...], None if var is None else var[B:, ...]


def _x0_eps_of(xp: Any, x: Any, out: Any, ab_t: float, space: str) -> Any:
    """(x̂_0, ε̂) of an output in ``space``; (None, ε̂) for an ε output."""
    if space == "epsilon":
        return None, out
    return _predict_x0_eps(xp, x, out, ab_t, space)


def _model_output(xp: Any, learned: bool, model: Any, x: Any, t: int, c: Any) -> Any:
    """The model's prediction and, for a learned-variance model, its variance channel: the
    output's two halves along axis 1 (guided-diffusion's and diffusers' layout)."""
    out = model(x, t, c)
    if not _xp.is_array(out):
        raise TypeError(f"the model must return an array like x_t, got {type(out).__name__}")
    if not learned:
        _xp.returned(xp, "x_t", x, model_output=out)
        return out, None
    want = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
    if tuple(out.shape) != want:
        raise ValueError(f"a learned-variance model returns the prediction and the variance "
                         f"channel along axis 1: shape {want} for x_t of shape "
                         f"{tuple(x.shape)}, got {tuple(out.shape)}")
    C = x.shape[1]
    pred, var = out[:, :C, ...], out[:, C:, ...]
    _xp.returned(xp, "x_t", x, model_output=pred, model_variance=var)
    return pred, var


def _guided_step(run: Any, g: Any, x: Any, x0_hat: Any, eps: Any, var: Any, t: int,
                 ab_t: float, ab_prev: float, noise: Any) -> Any:
    """One DDIM or DDPM step from (x̂_0, ε̂), with classifier guidance if it is on."""
    xp, s = run.xp, run.classifier_scale
    grad = None
    classifier, analytic = g.classifier, g.grad_log_prob
    if analytic is not None and (_xp.is_array(s) or s != 0):       # ∇ log p(y | x_t) given
        grad = _classifier_gradient(xp, lambda z: None, x, lambda z: analytic(z, t))
    elif classifier is not None and (_xp.is_array(s) or s != 0):    # ∇ log p(y | x_t) by autograd
        grad = _classifier_gradient(xp, lambda z: classifier(z, t), x, None)
    clip = run.clip_x0
    if run.sampler == "ddim":
        if grad is not None and run.classifier_order == "clip_then_shift" and clip is not None:
            x0_hat, eps = _x0_eps(xp, x, eps, ab_t, x0_hat, clip, True)  # clip, re-derive ε̂
            eps = _classifier_guided_eps(xp, eps, grad, ab_t, s)    # CG Algorithm 2
            x0_hat, clip = _x0_from_eps(xp, x, eps, ab_t), None     # rebuilt, not clipped again
        elif grad is not None:                                      # CG Algorithm 2, then clip
            eps, x0_hat = _classifier_guided_eps(xp, eps, grad, ab_t, s), None
        return _ddim_step(xp, x, eps, ab_t, ab_prev, run.eta, noise, clip, run.rederive_eps,
                          x0_hat)
    mean, variance = _ddpm_mean_variance(xp, x, eps, ab_t, ab_prev, run.variance_type, clip,
                                         x0_hat, var, run.zero_beta_tilde)
    if grad is not None:                                            # CG Algorithm 1, Σ as used
        mean = _classifier_guided_mean(xp, mean, variance, grad, s)
    return mean + xp.sqrt(variance) * noise                         # DDPM Algorithm 2, line 4
