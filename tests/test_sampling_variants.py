"""refdiff.sample with the guidance variants: ScaleSchedule, method="apg", method="cfg++",
guiding_model, and their refusals.

The model is exact: the ε of refdiff.oracle's demo mixture (2-D, three classes). Hand loops
of the public step functions (rd.ddim_step, rd.ddpm_step, rd.cfg, rd.apg,
rd.cfgpp_ddim_step, conversions by rd.predict_x0_eps / rd.prediction_from_x0_eps) replay a
run. Where sample() takes its spec path (a callback forces it for CFG; APG and CFG++ always
take it) the hand loop performs the same operations on the same arrays, so the comparison is
bit for bit; the fused fast path of plain CFG is checked through the scales it receives (its
rounding against the composition is bounded in tests/test_fused.py and
tests/test_sampling_fused.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import refdiff as rd
from refdiff.oracle import demo_mixture
from refdiff.testing.tolerance import to_numpy

SCH = rd.linear_schedule(1000)
MIX = demo_mixture()
B, N = 3, 10
Y = np.array([0, 1, 2])


def _x_T(dtype="float64"):
    return np.random.default_rng(0).standard_normal((B, 2)).astype(dtype)


def eps_model(calls=None, prediction_type="epsilon", schedule=SCH):
    """The exact ε (or v) of the mixture; ``calls`` records (t, c) per call."""
    def model(x, t, c):
        if calls is not None:
            calls.append((t, c))
        ab = schedule.alpha_bar(t)
        if prediction_type == "epsilon":
            return MIX.eps(x, ab, c)
        x0, e = MIX.x0_eps(x, ab, c)
        return rd.prediction_from_x0_eps(x0, e, ab, prediction_type)
    return model


def _levels(n=N, schedule=SCH):
    ts = [int(t) for t in rd.inference_timesteps(schedule.num_train_timesteps, n)]
    abs_ = [schedule.alpha_bar(t) for t in ts] + [1.0]
    return [(t, abs_[i], abs_[i + 1]) for i, t in enumerate(ts)]


def _noises(seed, shape, n=N):
    """sample()'s DDPM noise from an int seed on NumPy: standard normals of a
    default_rng(seed), zeros on the last step (as tests/test_sampling_fused.py replays it)."""
    rng = np.random.default_rng(seed)
    return [np.zeros(shape) if i == n - 1 else rng.standard_normal(shape) for i in range(n)]


def _eq(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(to_numpy(a), to_numpy(b)), float(np.max(np.abs(to_numpy(a) - to_numpy(b))))


def _cb(_i, _t, _x, _x0):
    """A callback: forces sample()'s spec path (no fusing)."""


# ----- ScaleSchedule ----------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_interval_covering_every_step_is_plain_cfg(sampler):
    """An interval (0, ∞] is Guidance(scale=s) bit for bit, with and without the fast path
    (catches a schedule that changes the scale or the path)."""
    full = rd.ScaleSchedule("interval", 4.0)
    for cb in (None, _cb):
        a = rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N, sampler=sampler,
                      guidance=rd.Guidance(cond=Y, scale=full), generator=3, callback=cb)
        b = rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N, sampler=sampler,
                      guidance=rd.Guidance(cond=Y, scale=4.0), generator=3, callback=cb)
        _eq(a, b)


def test_empty_interval_is_the_conditional_sampler_and_skips_the_unconditional_branch():
    """An empty interval is Guidance(scale=1.0) bit for bit, and the model sees only the
    condition (catches a schedule that still evaluates both branches at s = 1)."""
    calls = []
    empty = rd.ScaleSchedule("interval", 4.0, sigma_lo=2.0, sigma_hi=2.0)
    a = rd.sample(eps_model(calls), _x_T(), SCH, num_inference_steps=N,
                  guidance=rd.Guidance(cond=Y, scale=empty))
    b = rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N,
                  guidance=rd.Guidance(cond=Y, scale=1.0))
    _eq(a, b)
    assert len(calls) == N and all(c is Y for _, c in calls)


def _hand_cfg(x, sched, sampler, seed, calls=None):
    """DDIM or DDPM + CFG with s_i = scheduled_scale(i, n, σ(ᾱ_t)); one branch where s_i = 1."""
    model = eps_model(calls)
    noises = _noises(seed, x.shape)
    for i, (t, ab_t, ab_prev) in enumerate(_levels()):
        s = rd.scheduled_scale(sched, i, N, rd.sigma_from_alpha_bar(SCH.alpha_bar(t)))
        eps = model(x, t, Y) if s == 1.0 else rd.cfg(model(x, t, None), model(x, t, Y), s)
        if sampler == "ddim":
            x = rd.ddim_step(x, eps, ab_t, ab_prev)
        else:
            x = rd.ddpm_step(x, eps, ab_t, ab_prev, noises[i])
    return x


SCHEDULES = {
    "step": rd.ScaleSchedule("step", 5.0, start=0.2, stop=0.7),
    "interval": rd.ScaleSchedule("interval", 3.0, sigma_lo=0.3, sigma_hi=3.0),
    "linear": rd.ScaleSchedule("linear", 2.5),
    "cosine": rd.ScaleSchedule("cosine", 2.5),
}


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_schedule_run_is_the_hand_loop(name, sampler, monkeypatch):
    """The spec path (callback) equals the hand loop bit for bit, the same model calls; the
    fast path gets exactly the hand loop's s_i at the steps it fuses (catches σ of the wrong
    level, p = i/n, a schedule evaluated once per run)."""
    import refdiff._loop as _loop
    sched = SCHEDULES[name]
    calls, hand_calls = [], []
    got = rd.sample(eps_model(calls), _x_T(), SCH, num_inference_steps=N, sampler=sampler,
                    guidance=rd.Guidance(cond=Y, scale=sched), generator=11, callback=_cb)
    want = _hand_cfg(_x_T(), sched, sampler, 11, hand_calls)
    _eq(got, want)
    assert sorted(map(repr, calls)) == sorted(map(repr, hand_calls))
    seen, real = [], _loop._loop_step
    monkeypatch.setattr(_loop, "_loop_step", lambda run, x, u, c, s, *a: seen.append(s)
                        or real(run, x, u, c, s, *a))
    fast = rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N, sampler=sampler,
                     guidance=rd.Guidance(cond=Y, scale=sched), generator=11)
    want_s = [rd.scheduled_scale(sched, i, N, rd.sigma_from_alpha_bar(ab)) for i, (_, ab, _)
              in enumerate(_levels())]
    assert seen == [s for s in want_s if s not in (0.0, 1.0)]
    np.testing.assert_allclose(fast, got, rtol=0, atol=1e-9)  # fused vs spec: rounding only
    if name == "step":
        assert 1.0 in want_s and 5.0 in want_s


# ----- APG ---------------------------------------------------------------------------------

def _hand_apg(x, a, s, sched=None, prediction_type="epsilon", record=None):
    """DDIM with APG in a.space: convert both branches, rd.apg carrying ``running`` across the
    steps that evaluate both branches, convert back, rd.ddim_step on the ε."""
    model = eps_model(prediction_type=prediction_type)
    running = None
    for i, (t, ab_t, ab_prev) in enumerate(_levels()):
        s_i = s if sched is None else rd.scheduled_scale(sched, i, N, rd.sigma_from_alpha_bar(ab_t))
        if s_i == 1.0:
            out = model(x, t, Y)
        else:
            out_u, out_c = model(x, t, None), model(x, t, Y)
            space = prediction_type if a.space is None else a.space
            conv = [o if space == prediction_type else rd.prediction_from_x0_eps(
                *rd.predict_x0_eps(x, o, ab_t, prediction_type), ab_t, space)
                for o in (out_u, out_c)]
            g, running = rd.apg(*conv, s_i, eta=a.eta, norm_threshold=a.norm_threshold,
                                momentum=a.momentum, running=running)
            out = g if space == prediction_type else rd.prediction_from_x0_eps(
                *rd.predict_x0_eps(x, g, ab_t, space), ab_t, prediction_type)
        x0, eps = rd.predict_x0_eps(x, out, ab_t, prediction_type)
        if record is not None:
            record.append(x0)
        x = rd.ddim_step(x, eps, ab_t, ab_prev) if prediction_type == "epsilon" else \
            rd.ddim_step(x, eps, ab_t, ab_prev, x0_hat=x0)
    return x


def test_apg_run_is_the_hand_loop_in_x0_space():
    """method="apg" (x̂_0 space, β = −0.5, r = 1, η = 0) equals the hand loop bit for bit,
    twice (the running Δ̄ is reset every call); the callback receives x̂_0 of the guided ε.
    Catches Δ̄ not carried, carried across calls, or APG applied to ε instead of x̂_0."""
    a = rd.APG(eta=0.0, norm_threshold=1.0, momentum=-0.5)
    g = rd.Guidance(cond=Y, scale=6.0, method="apg", apg=a)
    seen = []
    got = rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N, guidance=g,
                    callback=lambda i, t, x, x0: seen.append(x0))
    again = rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N, guidance=g)
    record = []
    want = _hand_apg(_x_T(), a, 6.0, record=record)
    _eq(got, want)
    _eq(again, want)
    for k, (s0, r0) in enumerate(zip(seen, record)):
        np.testing.assert_allclose(s0, r0, rtol=0, atol=1e-12, err_msg=str(k))
    no_momentum = _hand_apg(_x_T(), rd.APG(eta=0.0, norm_threshold=1.0), 6.0)
    assert np.max(np.abs(no_momentum - want)) > 1e-3  # β matters in this run
    in_eps = _hand_apg(_x_T(), rd.APG(eta=0.0, norm_threshold=1.0, momentum=-0.5, space=None),
                       6.0)
    assert np.max(np.abs(in_eps - want)) > 1e-3       # so does the space


def test_apg_with_a_step_schedule_updates_running_only_at_guided_steps():
    """A "step" schedule under APG: the hand loop that skips the unguided steps (no branch
    pair, no Δ̄ update) reproduces the run bit for bit."""
    a = rd.APG(eta=0.2, momentum=-0.5)
    sched = rd.ScaleSchedule("step", 5.0, start=0.1, stop=0.6)
    got = rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N,
                    guidance=rd.Guidance(cond=Y, scale=sched, method="apg", apg=a))
    _eq(got, _hand_apg(_x_T(), a, None, sched=sched))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_apg_space_none_acts_on_the_model_output(prediction_type):
    """APG(space=None) projects the model's own output (ε or v), diffusers' guider."""
    a = rd.APG(eta=0.0, momentum=-0.3, space=None)
    got = rd.sample(eps_model(prediction_type=prediction_type), _x_T(), SCH,
                    num_inference_steps=N, prediction_type=prediction_type,
                    guidance=rd.Guidance(cond=Y, scale=4.0, method="apg", apg=a))
    _eq(got, _hand_apg(_x_T(), a, 4.0, prediction_type=prediction_type))


def test_apg_eta1_in_output_space_is_cfg_bitwise():
    """APG(η = 1, space=None) is CFG bit for bit, on the fast path (no callback) and on the
    spec path (a callback); the default APG (η = 0, x̂_0) is not."""
    for cb in (None, _cb):
        cfg = rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N,
                        guidance=rd.Guidance(cond=Y, scale=4.0), callback=cb)
        apg1 = rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N, callback=cb,
                         guidance=rd.Guidance(cond=Y, scale=4.0, method="apg",
                                              apg=rd.APG(eta=1.0, space=None)))
        _eq(apg1, cfg)
    apg0 = rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N,
                     guidance=rd.Guidance(cond=Y, scale=4.0, method="apg"))
    assert np.max(np.abs(apg0 - cfg)) > 1e-3


# ----- CFG++ -------------------------------------------------------------------------------

def _hand_cfgpp(x, lam, prediction_type="epsilon", record=None, schedule=SCH, ts=None):
    model = eps_model(prediction_type=prediction_type, schedule=schedule)
    for t, ab_t, ab_prev in (ts or _levels()):
        e_u, e_c = (rd.prediction_from_x0_eps(*rd.predict_x0_eps(x, model(x, t, c), ab_t,
                                                                  prediction_type),
                                              ab_t, "epsilon") for c in (None, Y))
        if record is not None:
            record.append(rd.predict_x0_eps(x, rd.cfg(e_u, e_c, lam), ab_t)[0])
        x = rd.cfgpp_ddim_step(x, e_u, e_c, lam, ab_t, ab_prev)
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_cfgpp_run_is_the_hand_loop(prediction_type):
    """method="cfg++" equals the hand loop of rd.cfgpp_ddim_step bit for bit (ε or v model,
    converted to ε); the callback receives x̂_0 of ε_λ. Catches λ used as a CFG scale."""
    seen, record = [], []
    got = rd.sample(eps_model(prediction_type=prediction_type), _x_T(), SCH,
                    num_inference_steps=N, prediction_type=prediction_type,
                    guidance=rd.Guidance(cond=Y, scale=0.6, method="cfg++"),
                    callback=lambda i, t, x, x0: seen.append(x0))
    _eq(got, _hand_cfgpp(_x_T(), 0.6, prediction_type, record))
    assert len(seen) == N
    for a, b in zip(seen, record):
        _eq(a, b)
    cfg_at_lam = rd.sample(eps_model(prediction_type=prediction_type), _x_T(), SCH,
                           num_inference_steps=N, prediction_type=prediction_type,
                           guidance=rd.Guidance(cond=Y, scale=0.6))
    assert np.max(np.abs(cfg_at_lam - got)) > 1e-3


def test_cfgpp_lambda_zero_is_unconditional_ddim():
    """λ = 0: Guidance(scale=0.0) bit for bit, one (unconditional) model call per step."""
    calls = []
    got = rd.sample(eps_model(calls), _x_T(), SCH, num_inference_steps=N,
                    guidance=rd.Guidance(cond=Y, scale=0.0, method="cfg++"))
    want = rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N,
                     guidance=rd.Guidance(cond=Y, scale=0.0))
    _eq(got, want)
    assert len(calls) == N and all(c is None for _, c in calls)


ZTSNR = rd.rescale_zero_terminal_snr(SCH)
REFUSALS = {
    "sampler": (dict(sampler="ddpm"), {}, "sampler"),
    "eta": (dict(eta=0.5), {}, "eta"),
    "rescale": (dict(), dict(rescale=0.5), "Guidance.rescale"),
    "clip_x0": (dict(clip_x0=1.0), {}, "clip_x0"),
    "classifier_scale": (dict(), dict(classifier_scale=1.0,
                                      grad_log_prob=lambda x, t: x * 0), "classifier_scale"),
    "lambda>1": (dict(), dict(scale=1.5), "Guidance.scale"),
    "lambda<0": (dict(), dict(scale=-0.5), "Guidance.scale"),
    "lambda schedule": (dict(), dict(scale=rd.ScaleSchedule("linear", 1.0 + 0.3)),
                        "Guidance.scale"),
    "zero terminal SNR": (dict(schedule=ZTSNR, timesteps=[999, 500, 0],
                               prediction_type="v_prediction"), {}, "alpha_bar_t"),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_cfgpp_refusals(name):
    """Each option CFG++'s DDIM step excludes is a ValueError naming it, before any model
    call (the linear schedule's λ ramp reaches 1.6 > 1 at the last step)."""
    kw, gkw, message = REFUSALS[name]
    kw = dict(kw)
    schedule = kw.pop("schedule", SCH)
    calls = []
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        rd.sample(eps_model(calls), _x_T(), schedule,
                  **({"num_inference_steps": N} if "timesteps" not in kw else {}),
                  guidance=rd.Guidance(cond=Y, method="cfg++", **{"scale": 0.5, **gkw}), **kw)
    assert calls == []


def test_zero_terminal_snr_is_fine_for_cfg_and_refused_for_cfgpp():
    """The same v-model run at ᾱ_t = 0 is allowed under CFG (x̂_0 from v), so the refusal above
    is CFG++'s own."""
    out = rd.sample(eps_model(prediction_type="v_prediction", schedule=ZTSNR), _x_T(), ZTSNR,
                    timesteps=[999, 500, 0], prediction_type="v_prediction",
                    guidance=rd.Guidance(cond=Y, scale=0.5))
    assert np.all(np.isfinite(out))


# ----- guiding_model and the option checks ---------------------------------------------------

def test_guiding_model_evaluates_the_unconditional_branch():
    """Autoguidance: guiding_model(x_t, t, uncond) replaces model for the unconditional branch;
    model sees only the condition; the run is CFG of the two (spec path, bit for bit)."""
    main_calls, weak_calls = [], []
    weak = MIX  # the guide: a broader mixture's ε stands in for a weaker model
    broad = demo_mixture(spread=0.6)

    def guide(x, t, c):
        weak_calls.append((t, c, x.shape))
        return broad.eps(x, SCH.alpha_bar(t), c)
    got = rd.sample(eps_model(main_calls), _x_T(), SCH, num_inference_steps=N, callback=_cb,
                    guidance=rd.Guidance(cond=Y, uncond=Y, scale=2.0, guiding_model=guide))
    ts = [t for t, _, _ in _levels()]
    assert [t for t, _ in main_calls] == ts and all(c is Y for _, c in main_calls)
    assert [t for t, _, _ in weak_calls] == ts
    assert all(c is Y and shape == (B, 2) for _, c, shape in weak_calls)
    x = _x_T()
    for t, ab_t, ab_prev in _levels():
        x = rd.ddim_step(x, rd.cfg(broad.eps(x, ab_t, Y), weak.eps(x, ab_t, Y), 2.0),
                         ab_t, ab_prev)
    _eq(got, x)


def test_guidance_option_errors():
    """guiding_model with batch_cfg, a non-callable guiding_model, an APG with method="cfg",
    a non-APG apg: each refused, the message naming the option."""
    g = rd.Guidance(cond=Y, uncond=Y, scale=2.0, guiding_model=eps_model())
    with pytest.raises(ValueError, match="guiding_model"):
        rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N, guidance=g, batch_cfg=True)
    with pytest.raises(TypeError, match="Guidance.guiding_model"):
        rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N,
                  guidance=rd.Guidance(cond=Y, scale=2.0, guiding_model=3))
    with pytest.raises(ValueError, match="Guidance.apg"):
        rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N,
                  guidance=rd.Guidance(cond=Y, scale=2.0, apg=rd.APG()))
    with pytest.raises(TypeError, match="Guidance.apg"):
        rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N,
                  guidance=rd.Guidance(cond=Y, scale=2.0, method="apg", apg={"eta": 0}))
    with pytest.raises(ValueError, match="Guidance.method"):
        rd.sample(eps_model(), _x_T(), SCH, num_inference_steps=N,
                  guidance=rd.Guidance(cond=Y, scale=2.0, method="pag"))


@pytest.mark.parametrize("extra, message", [
    (dict(scale=rd.ScaleSchedule("linear", 3.0)), "ScaleSchedule"),
    (dict(method="apg"), "method"),
    (dict(apg=rd.APG()), "apg"),
    (dict(guiding_model=lambda x, t, c: x), "guiding_model"),
])
def test_compiled_sample_ddim_refuses_the_variants(extra, message):
    """refdiff.compiled.sample_ddim has none of the variants: ValueError naming each."""
    torch = pytest.importorskip("torch")
    from refdiff.compiled import sample_ddim
    g = rd.Guidance(cond=None, **{"scale": 2.0, **extra})
    with pytest.raises(ValueError, match=message):
        sample_ddim(lambda x, t, c: x, torch.zeros(1, 2), SCH, num_inference_steps=3,
                    guidance=g)


# ----- other backends -------------------------------------------------------------------------

def _backend(name):
    if name == "torch":
        torch = pytest.importorskip("torch")
        return (lambda a: torch.asarray(a, dtype=torch.float32)), torch.float32
    xs = pytest.importorskip("array_api_strict")
    return (lambda a: xs.asarray(a, dtype=xs.float32)), xs.float32


@pytest.mark.parametrize("lib", ["torch", "array_api_strict"])
def test_variants_on_other_backends(lib):
    """torch float32 and array-api-strict float32: a ScaleSchedule run, APG (x̂_0) and CFG++
    equal the same hand loops on that backend bit for bit, in the input's dtype."""
    put, dtype = _backend(lib)
    x_T, y = put(_x_T()), put(Y.astype(np.float64))
    y = y if lib != "torch" else y.long()
    if lib == "array_api_strict":
        import array_api_strict as xs
        y = xs.astype(y, xs.int64)

    def model(x, t, c):
        return MIX.eps(x, SCH.alpha_bar(t), c)
    levels = _levels()
    # CFG++
    got = rd.sample(model, x_T, SCH, num_inference_steps=N,
                    guidance=rd.Guidance(cond=y, scale=0.6, method="cfg++"))
    x = x_T
    for t, ab_t, ab_prev in levels:
        x = rd.cfgpp_ddim_step(x, model(x, t, None), model(x, t, y), 0.6, ab_t, ab_prev)
    assert got.dtype == dtype
    _eq(got, x)
    # APG in x̂_0
    a = rd.APG(eta=0.0, momentum=-0.5, norm_threshold=1.0)
    got = rd.sample(model, x_T, SCH, num_inference_steps=N,
                    guidance=rd.Guidance(cond=y, scale=5.0, method="apg", apg=a))
    x, running = x_T, None
    for t, ab_t, ab_prev in levels:
        x0u, x0c = (rd.prediction_from_x0_eps(*rd.predict_x0_eps(x, model(x, t, c), ab_t),
                                              ab_t, "sample") for c in (None, y))
        g, running = rd.apg(x0u, x0c, 5.0, eta=0.0, norm_threshold=1.0, momentum=-0.5,
                            running=running)
        _, eps = rd.predict_x0_eps(x, g, ab_t, "sample")
        x = rd.ddim_step(x, eps, ab_t, ab_prev)
    assert got.dtype == dtype
    _eq(got, x)
    # a step schedule (spec path, forced by a callback)
    sched = rd.ScaleSchedule("step", 4.0, start=0.2, stop=0.7)
    got = rd.sample(model, x_T, SCH, num_inference_steps=N, callback=_cb,
                    guidance=rd.Guidance(cond=y, scale=sched))
    x = x_T
    for i, (t, ab_t, ab_prev) in enumerate(levels):
        s = rd.scheduled_scale(sched, i, N, rd.sigma_from_alpha_bar(ab_t))
        eps = model(x, t, y) if s == 1.0 else rd.cfg(model(x, t, None), model(x, t, y), s)
        x = rd.ddim_step(x, eps, ab_t, ab_prev)
    _eq(got, x)
