"""The sampling loop's fast path (refdiff.fused) and ``batch_cfg``.

The fast path is tied to the spec path two ways: every fused step of a run is checked against
the composition ddim_step(x, cfg(ε_u, ε_c, s)) / ddpm_step on that step's own inputs, within
the per-step bound derived in tests/test_fused.py; and a whole run is checked against the spec
path of ``sample`` itself (forced by a callback, which needs x̂_0) with the same seed, within
that bound carried through the run (the test model is linear in x, so a difference δ at a
step's input leaves it as (A + B·c_t)·δ, plus the model's own rounding on the new input).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import refdiff as rd
import refdiff._loop as _loop
from test_fused import U, _terms, bound

SCH = rd.linear_schedule(1000)
MU, SD = 0.3, 0.7
B, D = 3, 4


def _c_t(ab):
    """ε(x) = c_t·(x − √ᾱ·m) for data N(m, SD²): the exact ε of the Gaussian test model."""
    return np.sqrt(1 - ab) / (ab * SD**2 + 1 - ab)


def gaussian_model(record=None):
    """Exact ε of N(MU + c, SD²) data; c is None, a float or an array broadcasting against x
    (per sample, elementwise: stacking samples cannot change any sample's output)."""
    def model(x, t, c):
        ab = SCH.alpha_bar(t)  # a Python float: weak, so the output keeps the dtype of x
        m = MU if c is None else MU + c
        out = math.sqrt(1 - ab) * (x - math.sqrt(ab) * m) / (ab * SD**2 + 1 - ab)
        if record is not None:
            record.append((t, x, c, out))
        return out
    return model


COND, UNCOND = 1.0, None
RUNS = {  # name: sample() keywords
    "ddim": dict(sampler="ddim"),
    "ddim-eta0.5": dict(sampler="ddim", eta=0.5),
    "ddpm-fixed_small": dict(sampler="ddpm"),
    "ddpm-fixed_large": dict(sampler="ddpm", variance_type="fixed_large"),
}


def _x_T(dtype):
    return np.random.default_rng(0).standard_normal((B, D)).astype(dtype)


def _scale(kind):
    return 4.0 if kind == "float" else np.array([4.0, 0.0, -1.5])


def _noises(kw, ts, dtype, seed):
    """The step noise sample() draws from the seed: standard normal, NumPy float64, cast;
    zeros on the last step (the numpy backend's rule, checked in test_sampling)."""
    if kw["sampler"] == "ddim" and kw.get("eta", 0.0) == 0:
        return [None] * len(ts)
    rng = np.random.default_rng(seed)
    return [np.zeros((B, D), dtype) if i == len(ts) - 1 else
            rng.standard_normal((B, D)).astype(dtype) for i in range(len(ts))]


def _count_fused(monkeypatch):
    calls = []
    real = _loop._loop_step
    monkeypatch.setattr(_loop, "_loop_step", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("name", RUNS)
@pytest.mark.parametrize("kind", ["float", "per_sample"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_fused_step_is_the_composition(name, kind, dtype, monkeypatch):
    kw, s, n = RUNS[name], _scale(kind), 12
    calls, record = _count_fused(monkeypatch), []
    g = rd.Guidance(cond=COND, uncond=UNCOND, scale=s)
    out = rd.sample(gaussian_model(record), _x_T(dtype), SCH, num_inference_steps=n,
                    guidance=g, generator=5, **kw)
    assert len(calls) == n and out.dtype == np.dtype(dtype)
    ts = [int(t) for t in rd.inference_timesteps(1000, n)]
    noises, worst = _noises(kw, ts, dtype, 5), 0.0
    for k, t in enumerate(ts):
        (_, x, c_c, e_c), (_, _, c_u, e_u) = record[2 * k:2 * k + 2]
        assert (c_c, c_u) == (COND, UNCOND)
        ab_t, ab_prev = SCH.alpha_bar(t), SCH.alpha_bar(ts[k + 1]) if k + 1 < n else 1.0
        x_next = record[2 * k + 2][1] if k + 1 < n else out
        z = noises[k]
        if kw["sampler"] == "ddim":
            ref = rd.ddim_step(x, rd.cfg(e_u, e_c, s), ab_t, ab_prev, eta=kw.get("eta", 0.0),
                               noise=z)
        else:
            ref = rd.ddpm_step(x, rd.cfg(e_u, e_c, s), ab_t, ab_prev, z,
                               variance_type=kw.get("variance_type", "fixed_small"))
        f64 = [None if a is None else a.astype(np.float64) for a in (x, e_u, e_c, z)]
        terms = _terms(kw["sampler"], *f64, s, ab_t, ab_prev, kw.get("eta", 0.0),
                       kw.get("variance_type", "fixed_small"))
        err = np.abs(x_next.astype(np.float64) - ref.astype(np.float64))
        bnd = bound(terms, dtype, dtype)
        assert np.all(err <= bnd), (k, float(np.max(err / bnd)))
        worst = max(worst, float(np.max(err / bnd)))
    assert worst < 1


@pytest.mark.parametrize("name", RUNS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fast_path_equals_spec_path_with_the_same_seed(name, dtype, monkeypatch):
    """Fused run against the spec path (a callback needs x̂_0: no fusing), same seed. The
    bound E_{k+1} = |A + B·c_t|·E_k + bound_k + model_k (first order), with bound_k the
    per-step bound and model_k = (|B_u| + |B_c|)·5u·c_t·(|x| + √ᾱ·|m|): the test model's four
    roundings, evaluated on inputs that differ by E_k, are no longer the same roundings."""
    kw, s, n = RUNS[name], 4.0, 12
    calls, record = _count_fused(monkeypatch), []
    g = rd.Guidance(cond=COND, uncond=UNCOND, scale=s)
    fast = rd.sample(gaussian_model(record), _x_T(dtype), SCH, num_inference_steps=n,
                     guidance=g, generator=9, **kw)
    spec = rd.sample(gaussian_model(), _x_T(dtype), SCH, num_inference_steps=n, guidance=g,
                     generator=9, callback=lambda *a: None, **kw)
    assert len(calls) == n  # the spec run did not fuse
    ts = [int(t) for t in rd.inference_timesteps(1000, n)]
    noises, u, E = _noises(kw, ts, dtype, 9), U[dtype], np.zeros((B, D))
    eta, vt = kw.get("eta", 0.0), kw.get("variance_type", "fixed_small")
    for k, t in enumerate(ts):
        (_, x, _, e_c), (_, _, _, e_u) = record[2 * k:2 * k + 2]
        ab_t, ab_prev = SCH.alpha_bar(t), SCH.alpha_bar(ts[k + 1]) if k + 1 < n else 1.0
        z = None if noises[k] is None else noises[k].astype(np.float64)
        x64, eu64, ec64 = (a.astype(np.float64) for a in (x, e_u, e_c))
        terms = _terms(kw["sampler"], x64, eu64, ec64, z, s, ab_t, ab_prev, eta, vt)
        A, Bk = np.sqrt(ab_prev / ab_t), _B(kw["sampler"], ab_t, ab_prev, eta)
        c = _c_t(ab_t)
        model_k = (abs(1 - s) + abs(s)) * abs(Bk) * 5 * u * c * (
            np.abs(x64) + np.sqrt(ab_t) * (MU + 1.0))
        E = abs(A + Bk * c) * E + bound(terms, dtype, dtype) + model_k
    err = np.abs(fast.astype(np.float64) - spec.astype(np.float64))
    assert np.all(err <= E), float(np.max(err / E))


def _B(sampler, ab_t, ab_prev, eta):
    """B = (coefficient of ε̃) of the step, from float64."""
    A = np.sqrt(ab_prev / ab_t)
    if sampler == "ddim":
        r = eta**2 * (1 - ab_t / ab_prev) / (1 - ab_t)
        return np.sqrt((1 - ab_prev) * max(1 - r, 0.0)) - A * np.sqrt(1 - ab_t)
    return -A * (1 - ab_t / ab_prev) / np.sqrt(1 - ab_t)


NOT_FUSED = {  # each needs x̂_0 or ε̃, or has no CFG to fuse
    "scale-1": dict(guidance=rd.Guidance(cond=COND, scale=1.0)),
    "scale-0": dict(guidance=rd.Guidance(cond=COND, scale=0.0)),
    "clip": dict(clip_x0=1.0),
    "threshold": dict(clip_x0=rd.DynamicThreshold(0.9)),
    "rescale": dict(guidance=rd.Guidance(cond=COND, scale=4.0, rescale=0.7)),
    "classifier": dict(guidance=rd.Guidance(cond=COND, scale=4.0, classifier_scale=1.0,
                                            grad_log_prob=lambda x, t: -x)),
    "v-model": dict(prediction_type="v_prediction"),
    "callback": dict(callback=lambda *a: None),
    "learned": dict(sampler="ddpm", variance_type="learned_range"),
}


@pytest.mark.parametrize("case", NOT_FUSED)
def test_fast_path_only_when_nothing_needs_x0(case, monkeypatch):
    calls = _count_fused(monkeypatch)
    kw = {"guidance": rd.Guidance(cond=COND, scale=4.0), **NOT_FUSED[case]}
    model = gaussian_model()
    if case == "learned":
        base = model
        model = lambda x, t, c: np.concatenate([base(x, t, c), 0 * x], axis=1)  # noqa: E731
    rd.sample(model, _x_T("float64"), SCH, num_inference_steps=3, generator=0, **kw)
    assert calls == []
    rd.sample(gaussian_model(), _x_T("float64"), SCH, num_inference_steps=3,
              guidance=rd.Guidance(cond=COND, scale=4.0))
    assert len(calls) == 3  # and the plain guided run does fuse


# ----- batch_cfg ----------------------------------------------------------------------------

def _conds(dtype="float64"):
    rng = np.random.default_rng(3)
    return (rng.standard_normal((B, D)).astype(dtype), rng.standard_normal((B, D)).astype(dtype))


BATCHED = {
    "ddim-fused": dict(),
    "ddim-per-sample-scale": dict(scale=np.array([4.0, 0.0, 1.0])),
    "ddpm-fused": dict(sampler="ddpm"),
    "ddpm-rescale-spec": dict(sampler="ddpm", rescale=0.7),
    "ddim-clip-spec": dict(clip_x0=1.0, eta=0.3),
    "learned_range": dict(sampler="ddpm", variance_type="learned_range"),
}


def _batched_run(case, batch_cfg, record=None, dtype="float64"):
    opts = dict(BATCHED[case])
    cond, uncond = _conds(dtype)
    g = rd.Guidance(cond=cond, uncond=uncond, scale=opts.pop("scale", 4.0),
                    rescale=opts.pop("rescale", 0.0))
    model = gaussian_model(record)
    if opts.get("variance_type") == "learned_range":  # the variance channel depends on c
        base = model
        model = lambda x, t, c: np.concatenate([base(x, t, c), np.tanh(c + x)], axis=1)  # noqa: E731
    return rd.sample(model, _x_T(dtype), SCH, num_inference_steps=6, guidance=g, generator=2,
                     batch_cfg=batch_cfg, **opts)


@pytest.mark.parametrize("case", BATCHED)
def test_batch_cfg_gives_the_same_samples_bit_for_bit(case):
    calls: list = []
    batched = _batched_run(case, True, calls)
    assert batched.tobytes() == _batched_run(case, False).tobytes()
    cond, uncond = _conds()
    assert len(calls) == 6  # one model call per step
    for _, x, c, _ in calls:
        assert x.shape == (2 * B, D) and np.array_equal(x[:B], x[B:])
        assert np.array_equal(c, np.concatenate([uncond, cond]))  # uncond first (diffusers)


def test_batch_cfg_with_one_branch_calls_the_model_once_on_b():
    calls: list = []
    cond, uncond = _conds()
    rd.sample(gaussian_model(calls), _x_T("float64"), SCH, num_inference_steps=3,
              guidance=rd.Guidance(cond=cond, uncond=uncond, scale=1.0), batch_cfg=True)
    assert [(x.shape, c is cond) for _, x, c, _ in calls] == [((B, D), True)] * 3


def test_batch_cfg_torch_bit_for_bit():
    torch = pytest.importorskip("torch")
    cond, uncond = (torch.asarray(c) for c in _conds())

    def model(x, t, c):
        ab = SCH.alpha_bar(t)
        return (1 - ab) ** 0.5 * (x - ab**0.5 * (MU + c)) / (ab * SD**2 + 1 - ab)

    x_T = torch.asarray(_x_T("float64"))
    outs = [rd.sample(model, x_T, SCH, num_inference_steps=5, sampler="ddpm", generator=1,
                      guidance=rd.Guidance(cond=cond, uncond=uncond, scale=3.0),
                      batch_cfg=flag) for flag in (True, False)]
    assert torch.equal(outs[0], outs[1]) and outs[0].dtype == torch.float64


def _refused(**guidance):
    def never(x, t, c):
        raise AssertionError("the model was called before the arguments were checked")
    return lambda batch_cfg=True: rd.sample(never, _x_T("float64"), SCH, num_inference_steps=2,
                                            guidance=rd.Guidance(scale=4.0, **guidance),
                                            batch_cfg=batch_cfg)


def test_batch_cfg_refuses_what_cannot_be_batched():
    cond, uncond = _conds()
    with pytest.raises(TypeError, match="Guidance.uncond = NoneType"):
        _refused(cond=cond)()
    with pytest.raises(TypeError, match="Guidance.cond = float"):
        _refused(cond=1.0, uncond=uncond)()
    with pytest.raises(ValueError, match=r"Guidance.cond with the batch size of x_T along "
                                         r"axis 0: shape \(3, ...\), got \(2, 4\)"):
        _refused(cond=cond[:2], uncond=uncond)()
    with pytest.raises(ValueError, match="of one dtype and shape"):
        _refused(cond=cond[:, :2], uncond=uncond)()
    with pytest.raises(ValueError, match="of one dtype and shape"):
        _refused(cond=cond.astype(np.float32), uncond=uncond)()
    with pytest.raises(TypeError, match="batch_cfg must be True or False"):
        _refused(cond=cond, uncond=uncond)(batch_cfg=1)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="x_T is a numpy.ndarray but Guidance.uncond is a torch"):
        _refused(cond=torch.asarray(cond), uncond=torch.asarray(uncond))()
