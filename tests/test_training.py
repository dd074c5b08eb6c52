"""The training-side math: hand values, properties (Hypothesis) and draws from a generator.

Hand values use ᾱ = 0.75 (SNR = 3), ᾱ = 0.5 (SNR = 1) and ᾱ = 0.36 (√ᾱ = 0.6, √(1−ᾱ) = 0.8),
where every coefficient is an exact binary fraction or close to one.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
from strategies import alpha_bars, batch

PTS = ("epsilon", "sample", "v_prediction")


# ---------------------------------------------------------------- hand values


def test_snr_and_min_snr_weight_by_hand():
    assert rd.snr(0.75) == 3.0 and rd.snr(0.5) == 1.0 and rd.snr(0.0) == 0.0
    assert rd.snr(1.0) == math.inf
    # γ = 1.5 at SNR 3: x_0 weight min(3, 1.5) = 1.5; ε weight 1.5/3 = 0.5; v weight 1.5/4
    assert [rd.min_snr_weight(0.75, 1.5, p) for p in ("sample", "epsilon", "v_prediction")] == \
        [1.5, 0.5, 0.375]
    # SNR 1 < γ = 5: no clamp; x_0 weight 1, ε weight 1, v weight 1/(1 + 1)
    assert [rd.min_snr_weight(0.5, 5.0, p) for p in ("sample", "epsilon", "v_prediction")] == \
        [1.0, 1.0, 0.5]
    # limits: ᾱ = 0 (SNR 0) and ᾱ = 1 (SNR ∞)
    assert [rd.min_snr_weight(0.0, 5.0, p) for p in PTS] == [1.0, 0.0, 0.0]
    assert [rd.min_snr_weight(1.0, 5.0, p) for p in PTS] == [0.0, 5.0, 0.0]


def test_min_snr_weight_arrays_match_floats():
    ab = np.array([0.0, 0.1, 0.5, 0.75, 0.99, 1.0])
    for p in PTS:
        w = rd.min_snr_weight(ab, 5.0, p)
        assert w.shape == ab.shape and np.all(np.isfinite(w))
        np.testing.assert_allclose(w, [rd.min_snr_weight(float(a), 5.0, p) for a in ab],
                                   rtol=1e-15)
    np.testing.assert_array_equal(rd.snr(ab)[[0, 2, 5]], [0.0, 1.0, np.inf])


def test_diffusion_loss_by_hand():
    # x0 = (1, −1), ε = (0.5, 0.5), ᾱ = 0.36: x_t = 0.6·x0 + 0.8·ε = (1.0, −0.2)
    # v = 0.6·ε − 0.8·x0 = (−0.5, 1.1)
    x0, eps = np.array([[1.0, -1.0]]), np.array([[0.5, 0.5]])
    out = np.array([[0.0, 0.0]])
    assert rd.diffusion_loss(out, x0, eps, 0.36) == pytest.approx(0.25)  # (0.25 + 0.25)/2
    assert rd.diffusion_loss(out, x0, eps, 0.36, "sample") == pytest.approx(1.0)
    assert rd.diffusion_loss(out, x0, eps, 0.36, "v_prediction") == pytest.approx(
        (0.25 + 1.21) / 2)
    # min-SNR-5 at ᾱ = 0.36 (SNR = 0.5625 < 5): ε weight 1, x_0 weight 0.5625, v 0.36
    assert rd.diffusion_loss(out, x0, eps, 0.36, weighting="min_snr") == pytest.approx(0.25)
    assert rd.diffusion_loss(out, x0, eps, 0.36, "sample", weighting="min_snr") == \
        pytest.approx(0.5625)
    per = rd.diffusion_loss(np.zeros((2, 2)), np.vstack([x0, x0]), np.vstack([eps, eps]),
                            np.array([0.36, 0.75]), weighting="min_snr", gamma=1.5,
                            reduction="none")
    np.testing.assert_allclose(per, [0.25, 0.25 * 0.5])  # ε weight at SNR 3, γ 1.5: 0.5


def test_cross_entropy_by_hand():
    # logits (0, log 3): p = (1/4, 3/4)
    logits = np.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    labels = np.array([0, 1])
    np.testing.assert_allclose(rd.label_log_prob(logits, labels), [math.log(0.25), math.log(0.75)])
    assert rd.cross_entropy(logits, labels) == pytest.approx(-(math.log(0.25) + math.log(0.75)) / 2)
    # stable for huge logits (a naive exp overflows)
    big = np.array([[1000.0, 0.0]])
    assert rd.cross_entropy(big, np.array([0])) == pytest.approx(0.0, abs=1e-12)
    assert rd.cross_entropy(big, np.array([1])) == pytest.approx(1000.0)


def test_sinusoidal_embedding_by_hand():
    v = np.array([0.0, math.pi / 2])
    e = rd.sinusoidal_embedding(v, 4, max_period=10000.0)
    # ω = (1, 1/100): [sin(ω·v) | cos(ω·v)]
    np.testing.assert_allclose(e[0], [0, 0, 1, 1], atol=1e-16)
    np.testing.assert_allclose(e[1], [1, math.sin(math.pi / 200), 0, math.cos(math.pi / 200)],
                               atol=1e-16)
    # the guidance-scale embedding embeds w = s − 1, times 1000: s = 1 is the embedding of 0
    g = rd.guidance_scale_embedding(np.array([1.0, 1.0 + math.pi / 2000]), 4)
    np.testing.assert_allclose(g, e, atol=1e-12)
    # integer timesteps give float64 unless a dtype is asked for
    assert rd.sinusoidal_embedding(np.array([3, 7]), 6).dtype == np.float64
    assert rd.sinusoidal_embedding(np.array([3, 7]), 6, dtype=np.float32).dtype == np.float32


def test_distillation_target_is_the_teachers_cfg():
    u, c = np.array([[0.0, 1.0]]), np.array([[1.0, 1.0]])
    np.testing.assert_array_equal(rd.guidance_distillation_target(u, c, 3.0), [[3.0, 1.0]])
    # the paper's form (1 + w)·c − w·u with w = s − 1 = 2
    np.testing.assert_array_equal(rd.guidance_distillation_target(u, c, 3.0), 3 * c - 2 * u)
    assert rd.guidance_distillation_target(u, c, 1.0).tobytes() == c.tobytes()
    s = np.array([0.0, 1.0])
    uu, cc = np.vstack([u, u]), np.vstack([c, c])
    np.testing.assert_array_equal(rd.guidance_distillation_target(uu, cc, s), np.vstack([u, c]))


# ---------------------------------------------------------------- properties


@given(b=batch(2), ab=alpha_bars, gamma=st.floats(0.5, 20.0))
def test_min_snr_weighted_losses_agree_across_parameterisations(b, ab, gamma):
    """At a fixed x_t, ‖ε̂ − ε‖² = SNR·‖x̂_0 − x_0‖² and ‖v̂ − v‖² = (SNR + 1)·‖x̂_0 − x_0‖²,
    so each parameterisation's min-SNR-weighted loss is min(SNR, γ)·‖x̂_0 − x_0‖²."""
    x0, eps = b
    x0_hat = x0 + np.linspace(-1.0, 1.0, x0.size).reshape(x0.shape)  # some model's x̂_0
    x_t = rd.q_sample(x0, ab, eps)
    base = rd.diffusion_loss(x0_hat, x0, eps, ab, "sample", reduction="none")
    snr = ab / (1 - ab)
    for p, ratio in (("epsilon", snr), ("v_prediction", snr + 1)):
        out = rd.prediction_from_x0_eps(x0_hat, rd.predict_x0_eps(x_t, x0_hat, ab, "sample")[1],
                                        ab, p)
        plain = rd.diffusion_loss(out, x0, eps, ab, p, reduction="none")
        np.testing.assert_allclose(plain, ratio * base, rtol=1e-9, atol=1e-9)
    for p in PTS:
        out = rd.prediction_from_x0_eps(x0_hat, rd.predict_x0_eps(x_t, x0_hat, ab, "sample")[1],
                                        ab, p)
        weighted = rd.diffusion_loss(out, x0, eps, ab, p, weighting="min_snr", gamma=gamma,
                                     reduction="none")
        np.testing.assert_allclose(weighted, min(snr, gamma) * base, rtol=1e-9, atol=1e-9)


@given(b=batch(2), ab=alpha_bars, p=st.sampled_from(PTS))
def test_loss_is_zero_at_the_target_and_positive_elsewhere(b, ab, p):
    x0, eps = b
    target = rd.prediction_from_x0_eps(x0, eps, ab, p)
    assert rd.diffusion_loss(target, x0, eps, ab, p) == 0.0
    assert rd.diffusion_loss(target + 0.5, x0, eps, ab, p) == pytest.approx(0.25)


@given(n=st.integers(1, 40), K=st.integers(2, 6), seed=st.integers(0, 2**32 - 1))
def test_cross_entropy_matches_definition(n, K, seed):
    rng = np.random.default_rng(seed)
    logits, labels = rng.normal(scale=3.0, size=(n, K)), rng.integers(0, K, n)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(rd.cross_entropy(logits, labels, reduction="none"),
                               -np.log(p[np.arange(n), labels]), rtol=1e-12, atol=1e-12)


def test_noisy_classifier_loss_is_cross_entropy_on_q_sample():
    rng = np.random.default_rng(0)
    x0, eps, W = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), rng.normal(size=(3, 4))
    labels, t, ab = rng.integers(0, 4, 5), np.arange(5), np.linspace(0.1, 0.9, 5)
    seen = {}

    def classifier(x_t, tt):
        seen["x_t"], seen["t"] = x_t, tt
        return x_t @ W

    loss = rd.noisy_classifier_loss(classifier, x0, labels, t, ab, eps)
    np.testing.assert_allclose(seen["x_t"], np.sqrt(ab)[:, None] * x0 + np.sqrt(1 - ab)[:, None] * eps)
    assert seen["t"] is t
    assert loss == pytest.approx(rd.cross_entropy(seen["x_t"] @ W, labels))


# ---------------------------------------------------------------- random draws


def test_sample_timesteps_range_seed_and_uniformity():
    x = np.zeros((20000, 2))
    t = rd.sample_timesteps(x, 10, generator=0)
    assert t.dtype == np.int64 and t.shape == (20000,)
    np.testing.assert_array_equal(t, rd.sample_timesteps(x, 10, generator=0))
    counts = np.bincount(t, minlength=10)
    assert counts.shape == (10,)  # every value in 0..9
    assert np.all(np.abs(counts - 2000) < 6 * math.sqrt(2000 * 0.9))  # binomial, 6σ
    gen = np.random.default_rng(1)
    assert not np.array_equal(rd.sample_timesteps(x, 10, generator=gen),
                              rd.sample_timesteps(x, 10, generator=gen))
    assert np.all(rd.sample_timesteps(x, 1, generator=0) == 0)


def test_alpha_bar_at_gathers_the_table():
    sch = rd.linear_schedule(50)
    t = np.array([0, 49, 7])
    np.testing.assert_array_equal(rd.alpha_bar_at(sch, t),
                                  [sch.alpha_bar(0), sch.alpha_bar(49), sch.alpha_bar(7)])


@given(p=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1), B=st.integers(1, 30))
def test_drop_condition_replaces_exactly_the_dropped(p, seed, B):
    y = np.arange(B) % 10
    out, dropped = rd.drop_condition(y, 10, p, generator=seed)
    assert out.dtype == y.dtype and dropped.dtype == np.bool_
    np.testing.assert_array_equal(out, np.where(dropped, 10, y))
    out2, dropped2 = rd.drop_condition(y, 10, p, generator=seed)
    np.testing.assert_array_equal(out, out2)
    if p == 0.0:
        assert not dropped.any()
    if p == 1.0:
        assert dropped.all()


def test_drop_condition_rate_and_embeddings():
    y = np.zeros(20000, dtype=np.int32)
    _, dropped = rd.drop_condition(y, 10, 0.2, generator=3)
    assert abs(dropped.mean() - 0.2) < 6 * math.sqrt(0.2 * 0.8 / 20000)
    emb = np.random.default_rng(0).normal(size=(6, 3, 2))
    null = np.full((3, 2), -7.0)
    out, dropped = rd.drop_condition(emb, null, 0.5, generator=1)
    assert 0 < dropped.sum() < 6
    np.testing.assert_array_equal(out[dropped], np.broadcast_to(null, out[dropped].shape))
    np.testing.assert_array_equal(out[~dropped], emb[~dropped])
    out0, _ = rd.drop_condition(emb, 0.0, 1.0, generator=1)
    assert np.all(out0 == 0)


def test_sample_guidance_scales():
    x = np.zeros((5000, 1))
    s = rd.sample_guidance_scales(x, 1.0, 5.0, generator=0)
    assert s.shape == (5000,) and s.min() >= 1.0 and s.max() < 5.0
    assert abs(s.mean() - 3.0) < 0.1
    np.testing.assert_array_equal(s, rd.sample_guidance_scales(x, 1.0, 5.0, generator=0))
    np.testing.assert_array_equal(rd.sample_guidance_scales(x[:3], 2.0, 2.0, generator=0), [2.0] * 3)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("call,exc,match", [
    (lambda: rd.sample_timesteps(np.zeros(3), 10, generator=None), TypeError, "generator is required"),
    (lambda: rd.sample_timesteps(np.zeros(3), 0, generator=0), ValueError, "num_train_timesteps must be"),
    (lambda: rd.alpha_bar_at(rd.linear_schedule(5), np.array([5])), ValueError, r"t must lie in \[0, 4\]"),
    (lambda: rd.alpha_bar_at(rd.linear_schedule(5), np.array([1.0])), TypeError, "t must have an integer"),
    (lambda: rd.drop_condition(np.arange(3), 10, 1.5, generator=0), ValueError, r"p must lie in \[0, 1\]"),
    (lambda: rd.drop_condition(np.arange(3), 0.5, 0.1, generator=0), TypeError, "null_cond must be an int"),
    (lambda: rd.drop_condition(np.ones((3, 2)), np.ones(3), 0.1, generator=0), ValueError,
     r"null_cond must have shape \(\), \(2,\) or \(3, 2\)"),
    (lambda: rd.drop_condition(np.ones((3, 2)), np.ones(2, np.float32), 0.1, generator=0), TypeError,
     "null_cond has dtype float32 but cond has dtype float64"),
    (lambda: rd.drop_condition(np.arange(3), 10, 0.1, generator=None), TypeError, "generator is required"),
    (lambda: rd.min_snr_weight(0.5, 0.0), ValueError, "gamma must be a positive finite float"),
    (lambda: rd.min_snr_weight(1.5), ValueError, r"alpha_bar_t must lie in \[0, 1\]"),
    (lambda: rd.min_snr_weight(0.5, 5.0, "score"), ValueError, "prediction_type must be one of"),
    (lambda: rd.diffusion_loss(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)), 0.5,
                               weighting="p2"), ValueError, "weighting must be one of 'none', 'min_snr'"),
    (lambda: rd.diffusion_loss(np.ones((2, 2)), np.ones((2, 3)), np.ones((2, 3)), 0.5), ValueError,
     r"x0 must have the shape of model_output \(2, 2\)"),
    (lambda: rd.diffusion_loss(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)), 0.5,
                               reduction="sum"), ValueError, "reduction must be one of 'mean', 'none'"),
    (lambda: rd.cross_entropy(np.ones((2, 3)), np.array([0, 3])), ValueError, r"labels must lie in \[0, 2\]"),
    (lambda: rd.cross_entropy(np.ones((2, 3)), np.array([0.0, 1.0])), TypeError, "labels must be an integer"),
    (lambda: rd.cross_entropy(np.ones(3), np.array([0])), ValueError, r"logits must have shape \(B, K\)"),
    (lambda: rd.sinusoidal_embedding(np.ones(2), 5), ValueError, "dim must be an even int >= 2"),
    (lambda: rd.sinusoidal_embedding(np.ones((2, 1)), 4), ValueError, r"values must have shape \(B,\)"),
    (lambda: rd.guidance_scale_embedding(np.array([1, 2]), 4), TypeError, "scale must have a real floating"),
    (lambda: rd.sample_guidance_scales(np.ones(2), 3.0, 1.0, generator=0), ValueError,
     "scale_min <= scale_max"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
