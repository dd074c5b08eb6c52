"""The σ-space and flow sampling loops (refdiff.sample_ode, refdiff.sample_flow).

- Convergence order on a one-component anisotropic Gaussian (the exact PF-ODE map is
  refdiff.oracle_paths.gaussian_ode_solution): Euler 1, Heun and DPM-Solver++(2M) 2, whatever
  path the model is written on; the flow Euler sampler 1.
- Loop identities: the loops equal hand loops of the public steps bit for bit; Euler over the
  σ's of a VP table equals rd.sample(sampler="ddim", eta=0) and Euler-ancestral equals
  DDIM η = 1 with the same noise, to float64 rounding bounded along the trajectory.
- Guidance: scales 0/1 are the single-branch runs, the interval schedule guides exactly the
  steps with σ in (σ_lo, σ_hi], APG(η = 1) is CFG, the guiding model gets the unconditional
  branch; seeds reproduce; torch in, torch out.
- Errors name the argument.
"""

from __future__ import annotations


import numpy as np
import pytest

import refdiff as rd
from refdiff.backends import get_backend
from refdiff.oracle import GaussianMixture
from refdiff.oracle_paths import exact_model, exact_prediction, gaussian_ode_solution

U64 = 2.0**-53
G1 = GaussianMixture.full([1.0], [[0.5, -1.0]], [[[2.0, 0.6], [0.6, 0.5]]])
G2 = GaussianMixture.isotropic([0.4, 0.6], [[1.0, 0.0], [-1.0, 0.5]], [0.3, 0.5])
Z = np.random.default_rng(11).standard_normal((4, 2))


def _slope(ns, errs):
    """Least-squares slope of −log err against log n over the given points."""
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


# ----- convergence order ------------------------------------------------------------------

NS = [8, 16, 32, 64, 128]
RUNS = [("euler", "ve", "sample", (0.9, 1.1)), ("heun", "ve", "sample", (1.85, 2.3)),
        ("dpmpp_2m", "ve", "sample", (1.85, 2.3)), ("heun", "vp", "epsilon", (1.85, 2.3)),
        ("dpmpp_2m", "vp", "epsilon", (1.85, 2.3)), ("heun", "flow", "velocity", (1.85, 2.3)),
        ("dpmpp_2m", "flow", "velocity", (1.85, 2.3))]


@pytest.mark.parametrize("solver, path, ptype, window", RUNS,
                         ids=[f"{r[0]}-{r[1]}-{r[2]}" for r in RUNS])
def test_convergence_order(solver, path, ptype, window):
    """From σ = 10 to 0.05 on karras_sigmas(n, 0.05, 10)[:-1], exact model on ``path``: the
    max error against gaussian_ode_solution falls as n^−p with p fitted over the last three
    doublings (n = 16 … 128) in ``window`` (Euler 1, Heun and DPM++(2M) 2, for every path)."""
    x = G1.means[0] + 10.0 * Z
    want = gaussian_ode_solution(G1, x, 10.0, 0.05)
    model = exact_model(G1, path, ptype)
    errs = []
    for n in NS:
        got = rd.sample_ode(model, x, rd.karras_sigmas(n, 0.05, 10.0)[:-1], solver=solver,
                            model_path=path, prediction_type=ptype)
        errs.append(float(np.max(np.abs(got - want))))
    p = _slope(NS[1:], errs[1:])
    assert window[0] <= p <= window[1], (p, errs)


def test_flow_sampler_convergence_order():
    """sample_flow with the exact flow velocity model on flow_times from t = 10/11 (σ = 10) to
    0.05/1.05 (σ = 0.05): error against the exact solution mapped to the flow path falls as
    n^−1 (fitted slope over n = 16 … 128 in [0.9, 1.1])."""
    x = G1.means[0] + 10.0 * Z
    want, t_end = rd.change_path(gaussian_ode_solution(G1, x, 10.0, 0.05), "ve", 0.05, "flow")
    x_flow, t0 = rd.change_path(x, "ve", 10.0, "flow")
    errs = []
    for n in NS:
        times = rd.flow_times(n, t_max=t0, t_min=t_end)[:-1]
        got = rd.sample_flow(exact_model(G1, "flow", "velocity"), x_flow, times)
        errs.append(float(np.max(np.abs(got - want))))
    p = _slope(NS[1:], errs[1:])
    assert 0.9 <= p <= 1.1, (p, errs)


# ----- hand loops, bit for bit --------------------------------------------------------------

SIG = [float(s) for s in rd.karras_sigmas(6, 0.05, 10.0)]


def _hand(solver, model, x, sigmas, noises=None, lower_order_final=False):
    """The loop written with the public steps (ve/sample model: D = the model's output)."""
    state, n = None, len(sigmas) - 1
    for i in range(n):
        s, sn = sigmas[i], sigmas[i + 1]
        d = model(x, s, None)
        if solver == "euler":
            x = rd.euler_step(x, d, s, sn)
        elif solver == "heun":
            x_e = rd.euler_step(x, d, s, sn)
            x = rd.heun_step(x, d, s, sn, model(x_e, sn, None) if sn > 0 else None)
        elif solver == "euler_ancestral":
            x = rd.euler_ancestral_step(x, d, s, sn, noises[i] if sn > 0 else 0 * x)
        else:
            x, state = rd.dpmpp_2m_step(x, d, s, sn, state,
                                        first_order=lower_order_final and i == n - 1)
    return x


@pytest.mark.parametrize("solver, lof", [("euler", False), ("heun", False),
                                         ("euler_ancestral", False), ("dpmpp_2m", False),
                                         ("dpmpp_2m", True)])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_sample_ode_is_the_hand_loop_bitwise(solver, lof, final):
    """sample_ode equals the loop of public steps bit for bit (Euler-ancestral: the noise drawn
    by hand from the same backend generator, seed 7, one draw per step with σ' > 0)."""
    sig = [float(s) for s in (rd.karras_sigmas(6, 0.05, 10.0) if final == "zero" else
                              rd.vp_sigmas(SCHED, [999, 700, 400, 150, 30], final=final))]
    model = exact_model(G1, "ve", "sample")
    x = 10.0 * Z
    noises = None
    if solver == "euler_ancestral":
        be = get_backend(x)
        gen = be.generator(7, "cpu")
        noises = [be.normal(x.shape, dtype=x.dtype, device="cpu", generator=gen)
                  for s in sig[1:] if s > 0]
    got = rd.sample_ode(model, x, sig, solver=solver, lower_order_final=lof,
                        generator=7 if noises else None)
    want = _hand(solver, model, x, sig, noises, lof)
    assert np.array_equal(got, want)
    if solver == "dpmpp_2m" and final == "sigma_min":  # a last step to σ_min > 0 changes
        other = rd.sample_ode(model, x, sig, solver=solver, lower_order_final=not lof)
        assert not np.array_equal(other, got)


def test_karras_sigma_min_list_is_accepted_by_sample_ode():
    """karras_sigmas(final="sigma_min") ends σ_min, σ_min (its docstring: "the last step goes
    from σ_min to σ_min"); sample_ode must take the list it is documented to be built for."""
    sig = rd.karras_sigmas(4, 0.05, 10.0, final="sigma_min")
    got = rd.sample_ode(exact_model(G1, "ve", "sample"), 10.0 * Z, sig)
    want = rd.sample_ode(exact_model(G1, "ve", "sample"), 10.0 * Z, sig[:-1])
    assert np.array_equal(got, want)   # a step from σ_min to σ_min is the identity (r = 1)


def test_sample_ode_vp_epsilon_model_is_the_public_conversion_bitwise():
    """A VP ε-model: x_m = √ᾱ·x at ᾱ = path_level("vp", σ), D = path_x0_eps(x_m, ε, a, b)[0];
    the Euler loop with that D is sample_ode bit for bit."""
    model = exact_model(G1, "vp", "epsilon")
    x = 10.0 * Z
    want = x
    for s, sn in zip(SIG, SIG[1:]):
        lev = rd.path_level("vp", s)
        a, b = rd.path_coefficients("vp", lev)
        x_m = a * want
        d = rd.path_x0_eps(x_m, model(x_m, lev, None), a, b, "epsilon")[0]
        want = rd.euler_step(want, d, s, sn)
    got = rd.sample_ode(model, x, SIG, model_path="vp", prediction_type="epsilon")
    assert np.array_equal(got, want)


def test_sample_flow_is_the_hand_loop_bitwise():
    """sample_flow = flow_euler_step over the times (velocity model), bit for bit; an x_0-model
    is converted to u = ε̂ − x̂_0 through path_x0_eps."""
    times = [float(t) for t in rd.flow_times(5, shift=3.0)]
    x = Z.copy()
    for ptype in ("velocity", "sample"):
        model = exact_model(G1, "flow", ptype)
        want = x
        for t, tn in zip(times, times[1:]):
            out = model(want, t, None)
            if ptype != "velocity":
                x0, eps = rd.path_x0_eps(want, out, 1 - t, t, ptype)
                out = rd.path_prediction(x0, eps, 1 - t, t, "velocity")
            want = rd.flow_euler_step(want, out, t, tn)
        got = rd.sample_flow(model, x, times, prediction_type=ptype)
        assert np.array_equal(got, want)


# ----- DDIM on the same levels --------------------------------------------------------------

SCHED = rd.linear_schedule(1000)
TS = [int(t) for t in rd.inference_timesteps(1000, 10)]


def _ddim_model(x_t, t, c):
    return exact_prediction(G1, x_t, "vp", SCHED.alpha_bar(t), "epsilon")


def _kappa(s, sn):
    """ᾱ = 1/(1 + σ²) holds 1 − ᾱ to u64 absolutely: the ε-terms of DDIM carry u64/σ (u64/σ'
    at σ') relative; tests/test_solvers.py's step identities."""
    return 1.0 + 1.0 / s**2 + (1.0 / (s * sn) + 1.0 / sn**2 if sn > 0 else 0.0)


def _trajectory_bound(sigmas, xs, ds, zs=None, C=64):
    """Σ_i C·u64·κ_i·(|x_i| + |D_i| + σ_up,i|z_i|): each step's rounding (the step identity's
    C = 32, the model evaluated at ᾱ vs σ: 32 more), carried to the end with gain ≤ 1 (for one
    Gaussian every step is x ↦ μ + U diag(r + (1 − r)λ/(λ + σ²)) Uᵀ(x − μ), entries in (0, 1])."""
    total = 0.0
    for i, (x, d) in enumerate(zip(xs, ds)):
        s, sn = sigmas[i], sigmas[i + 1]
        kap = _kappa(s, sn)
        term = np.abs(x) + np.abs(d)
        if zs is not None and sn > 0:
            kap += (1 + s * s) / (s * s - sn * sn)
            term = term + rd.ancestral_sigmas(s, sn)[1] * np.abs(zs[i])
        total = total + C * U64 * kap * term
    return total


def test_euler_over_vp_sigmas_is_ddim_eta0():
    """sample_ode(solver="euler", vp ε-model) over vp_sigmas(schedule, timesteps) from
    x = x_T/√ᾱ_{t_0} = rd.sample(sampler="ddim", eta=0) over the same timesteps, last level
    ᾱ = 1 (σ = 0, where x_VP = x_VE): within _trajectory_bound."""
    sig = [float(s) for s in rd.vp_sigmas(SCHED, TS)]
    x_T = Z.copy()
    want = rd.sample(_ddim_model, x_T, SCHED, sampler="ddim", timesteps=TS)
    xs, ds = [], []
    x_ve, _ = rd.change_path(x_T, "vp", SCHED.alpha_bar(TS[0]), "ve")
    got = rd.sample_ode(exact_model(G1, "vp", "epsilon"), x_ve, sig, model_path="vp",
                        prediction_type="epsilon",
                        callback=lambda i, s, x, d: (xs.append(x), ds.append(d)))
    xs = [x_ve] + xs[:-1]
    bound = _trajectory_bound(sig, xs, ds)
    assert np.all(np.abs(got - want) <= bound), np.max(np.abs(got - want) / bound)
    assert np.max(np.abs(got - want) / bound) < 1
    # the bound is not loose: DDIM with η = 0.1 instead of 0 differs by > 1e3 bounds
    noisy = rd.sample(_ddim_model, x_T, SCHED, sampler="ddim", timesteps=TS, eta=0.1,
                      generator=0)
    assert np.max(np.abs(noisy - want) / bound) > 1e3


def test_euler_ancestral_over_vp_sigmas_is_ddim_eta1_with_the_same_noise():
    """sample_ode(solver="euler_ancestral", generator=3) = rd.sample(ddim, eta=1, generator=3):
    both draw z with the backend's normal(x.shape, dtype, device, generator) once per step
    except the last (σ' = 0 / ᾱ' = 1), so the same seed gives the same z; the noises are also
    captured (DDIM's from its callback: z = (x_prev − DDIM_{η=0}-mean)/σ_t is not needed, the
    hand draw below checks the sequence) and the result bounded along the trajectory."""
    sig = [float(s) for s in rd.vp_sigmas(SCHED, TS)]
    x_T = Z.copy()
    want = rd.sample(_ddim_model, x_T, SCHED, sampler="ddim", timesteps=TS, eta=1.0,
                     generator=3)
    be = get_backend(x_T)
    gen = be.generator(3, "cpu")
    zs = [be.normal(x_T.shape, dtype=x_T.dtype, device="cpu", generator=gen)
          for _ in range(len(TS) - 1)] + [np.zeros_like(x_T)]
    x_ve, _ = rd.change_path(x_T, "vp", SCHED.alpha_bar(TS[0]), "ve")
    xs, ds = [], []
    got = rd.sample_ode(exact_model(G1, "vp", "epsilon"), x_ve, sig, solver="euler_ancestral",
                        model_path="vp", prediction_type="epsilon", generator=3,
                        callback=lambda i, s, x, d: (xs.append(x), ds.append(d)))
    # the hand DDIM loop with the hand-drawn z gives rd.sample's result bit for bit: the same z
    x = x_T
    levels = [SCHED.alpha_bar(t) for t in TS] + [1.0]
    for i, t in enumerate(TS):
        x = rd.ddim_step(x, _ddim_model(x, t, None), levels[i], levels[i + 1], eta=1.0,
                         noise=zs[i])
    assert np.array_equal(x, want)
    bound = _trajectory_bound(sig, [x_ve] + xs[:-1], ds, zs)
    assert np.max(np.abs(got - want) / bound) < 1
    other = rd.sample_ode(exact_model(G1, "vp", "epsilon"), x_ve, sig, solver="euler_ancestral",
                          model_path="vp", prediction_type="epsilon", generator=4)
    assert np.max(np.abs(other - want) / bound) > 1e3


# ----- guidance -----------------------------------------------------------------------------

class Counting:
    """A ve/sample model that records (level, c) of every call: the exact x̂_0 of G2."""

    def __init__(self, mixture=G2):
        self.calls, self.m = [], exact_model(mixture, "ve", "sample")

    def __call__(self, x, level, c):
        self.calls.append((level, c))
        return self.m(x, level, c)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m"])
def test_cfg_scale_zero_and_one_are_the_single_branch_runs(solver):
    """Scale 1 is the conditional run and scale 0 the unconditional one, bit for bit, with one
    model call per evaluation."""
    x = 10.0 * Z
    m = exact_model(G2, "ve", "sample")
    for scale, c in ((1.0, 1), (0.0, None)):
        cm = Counting()
        got = rd.sample_ode(cm, x, SIG, solver=solver,
                            guidance=rd.Guidance(cond=1, uncond=None, scale=scale))
        want = rd.sample_ode(lambda xx, lv, _: m(xx, lv, c), x, SIG, solver=solver)
        assert np.array_equal(got, want)
        assert {cc for _, cc in cm.calls} == {c}


def test_interval_schedule_guides_exactly_the_steps_inside():
    """ScaleSchedule("interval", 3, σ_lo, σ_hi): steps with σ_i in (σ_lo, σ_hi] evaluate both
    branches, the others the conditional one only (counted per level); Heun's correction at
    σ_{i+1} uses step i's s."""
    lo, hi = SIG[4], SIG[1]           # steps 1, 2, 3 guided (σ_1 ≤ hi closed, σ_4 = lo open)
    sched = rd.ScaleSchedule("interval", 3.0, sigma_lo=lo, sigma_hi=hi)
    for solver in ("euler", "heun"):
        cm = Counting()
        rd.sample_ode(cm, 10.0 * Z, SIG, solver=solver,
                      guidance=rd.Guidance(cond=1, uncond=None, scale=sched))
        uncond = sorted({lv for lv, c in cm.calls if c is None}, reverse=True)
        want = SIG[1:4] if solver == "euler" else sorted(set(SIG[1:5]), reverse=True)
        assert uncond == want, (solver, uncond)
        assert {lv for lv, c in cm.calls if c == 1} >= set(SIG[:-1])


def test_apg_eta1_is_cfg_and_autoguidance_uses_the_guiding_model():
    """APG(η = 1, r = 0, β = 0) in x̂_0 space = CFG bit for bit (ve/sample model: the space
    conversions are the identity); a guiding model is called for every unconditional branch
    and the main model for every conditional one."""
    x = 10.0 * Z
    m = exact_model(G2, "ve", "sample")
    cfg = rd.sample_ode(m, x, SIG, solver="dpmpp_2m",
                        guidance=rd.Guidance(cond=1, uncond=0, scale=2.5))
    apg = rd.sample_ode(m, x, SIG, solver="dpmpp_2m",
                        guidance=rd.Guidance(cond=1, uncond=0, scale=2.5, method="apg",
                                             apg=rd.APG(eta=1.0)))
    assert np.array_equal(cfg, apg)
    main, weak = Counting(), Counting(GaussianMixture.isotropic([1.0], [[0.0, 0.0]], [1.0],
                                                                 labels=[1]))
    rd.sample_ode(main, x, SIG, solver="heun",
                  guidance=rd.Guidance(cond=1, uncond=1, scale=2.0, guiding_model=weak))
    assert len(main.calls) == len(weak.calls) == 2 * (len(SIG) - 1) - 1
    assert [lv for lv, _ in main.calls] == [lv for lv, _ in weak.calls]


def test_seeds_reproduce_and_torch_in_torch_out():
    """The same seed gives the same Euler-ancestral run, another seed another; torch float32
    in gives torch float32 out for every solver and sample_flow."""
    torch = pytest.importorskip("torch")
    m = exact_model(G1, "ve", "sample")
    x = 10.0 * Z
    a = rd.sample_ode(m, x, SIG, solver="euler_ancestral", generator=5)
    b = rd.sample_ode(m, x, SIG, solver="euler_ancestral", generator=5)
    c = rd.sample_ode(m, x, SIG, solver="euler_ancestral", generator=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    xt = torch.tensor(x, dtype=torch.float32)
    for solver in rd.SOLVERS:
        out = rd.sample_ode(m, xt, SIG, solver=solver, generator=1)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert out.shape == xt.shape
    out = rd.sample_flow(exact_model(G1, "flow", "velocity"), xt / 11,
                         [float(t) for t in rd.flow_times(4, t_max=10 / 11)])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32


# ----- errors -------------------------------------------------------------------------------

M = exact_model(G1, "ve", "sample")
XE = np.ones((2, 2))


def _ode(**kw):
    return lambda: rd.sample_ode(M, XE, kw.pop("sigmas", SIG), **kw)


ERRORS = [
    ("solver", _ode(solver="rk4"), ValueError, "solver"),
    ("model_path", _ode(model_path="edm"), ValueError, "model_path"),
    ("prediction_type", _ode(prediction_type="score"), ValueError, "prediction_type"),
    ("eta non-ancestral", _ode(eta=0.5), ValueError, "eta"),
    ("eta<0", _ode(solver="euler_ancestral", eta=-1.0), ValueError, "eta"),
    ("lower_order_final", _ode(solver="euler", lower_order_final=True), ValueError,
     "lower_order_final"),
    ("rescale", _ode(guidance=rd.Guidance(scale=2.0, rescale=0.7)), ValueError,
     "Guidance.rescale"),
    ("classifier", _ode(guidance=rd.Guidance(classifier=lambda x, t: x, classifier_scale=1.0)),
     ValueError, "Guidance.classifier"),
    ("cfg++", _ode(guidance=rd.Guidance(scale=0.5, method="cfg++")), ValueError,
     "Guidance.method"),
    ("not descending", _ode(sigmas=[1.0, 2.0, 0.0]), ValueError, "sigmas"),
    ("repeated", _ode(sigmas=[2.0, 2.0, 1.0]), ValueError, "sigmas"),
    ("final above", _ode(sigmas=[2.0, 1.0, 1.5]), ValueError, "sigmas"),
    ("one level", _ode(sigmas=[2.0]), ValueError, "sigmas"),
    ("negative", _ode(sigmas=[2.0, -1.0]), ValueError, "sigmas"),
    ("x list", lambda: rd.sample_ode(M, [1.0, 2.0], SIG), TypeError, "x"),
    ("guidance type", _ode(guidance=2.0), TypeError, "guidance"),
    ("epsilon at t=1", lambda: rd.sample_flow(M, XE, [1.0, 0.5, 0.0],
                                              prediction_type="epsilon"), ValueError, "epsilon"),
    ("times > 1", lambda: rd.sample_flow(M, XE, [1.5, 0.0]), ValueError, "times"),
    ("flow prediction_type", lambda: rd.sample_flow(M, XE, [0.5, 0.0], prediction_type="x0"),
     ValueError, "prediction_type"),
    ("apg velocity in sample()", lambda: rd.sample(
        _ddim_model, XE, SCHED, timesteps=[999, 0],
        guidance=rd.Guidance(cond=1, uncond=0, scale=2.0, method="apg",
                             apg=rd.APG(space="velocity"))), ValueError, "APG.space"),
]


@pytest.mark.parametrize("make, error, message", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_argument_errors(make, error, message):
    """Each bad input raises its error class, and the message names the argument."""
    with pytest.raises(error, match=message.replace(".", r"\.").replace("+", r"\+")):
        make()
