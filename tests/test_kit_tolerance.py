"""The kit's error bounds (refdiff.testing.bounds) and assert_close's bound mode.

The bound must hold (a correct float32 implementation passes at t = 999, where x̂_0 divides
by √ᾱ ≈ 0.0064), be sound (the propagated input error covers any perturbation of the inputs
within their rounding), match the partial derivatives written in docs/testing.md, and not be
vacuous (formula slips exceed it in float32, float16 and float64)."""

import math
import pathlib

import numpy as np
import pytest

import refdiff as rd
from refdiff.testing import (ConformanceError, Target, assert_close, check_ddim_step,
                             check_ddpm_step, check_schedule)
from refdiff.testing import bounds as B
from refdiff.testing import corpus as K
from refdiff.testing import mutants as M
from refdiff.testing import references as R
from refdiff.thresholding import dynamic_threshold

SCHED = rd.linear_schedule(1000)
AB = SCHED.alpha_bar
DOC = (pathlib.Path(__file__).parents[1] / "docs" / "testing.md").read_text()


def test_assert_close_bound_mode():
    a = np.array([1.0, 2.0])
    stats = assert_close(a + [1e-9, 0.0], a, bound=np.array([2e-9, 0.0]))
    assert stats["ratio"] == pytest.approx(0.5) and stats["tolerance"] == 2e-9
    with pytest.raises(ConformanceError, match=r"values: .* > bound 1.000e-09 at \([01],\)"):
        assert_close(a + 2e-9, a, bound=1e-9)
    with pytest.raises(ConformanceError, match="values"):  # a zero bound means exact
        assert_close(np.nextafter(a, 3.0), a, bound=0.0)
    with pytest.raises(ConformanceError, match="values"):
        assert_close(np.array([np.nan, 2.0]), a, bound=np.inf)
    with pytest.raises(ConformanceError, match="dtype"):  # metadata is checked first
        assert_close(a.astype(np.float32), a, bound=1.0)
    assert assert_close(a, a, rtol=0.0)["ratio"] == 0.0  # the simple mode is unchanged


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_the_issue_example_passes_in_float32(backend):
    """t = 999 → −1, x_t = ε = 1: refdiff's own float32 step was 4.2e-6 off, over the old
    fixed 2e-6, although correct. The bound follows the division by √ᾱ_999 ≈ 0.0064."""
    pytest.importorskip(backend)
    target = Target(backend, "float32")
    one = np.ones(1)
    actual = R.ddim_step(target.put(one), target.put(one), 999, -1)
    expected = R.ddim_step(one, one, 999, -1)
    bound = B.ddim_step(one, one, None, AB(999), 1.0, "float32", prev_exact=True, t=999)
    stats = assert_close(actual, expected, dtype="float32", bound=bound)
    assert 1e-7 < stats["max_abs"] and stats["ratio"] < 0.1
    assert bound[0] < 1e-3  # not vacuous: 0.3 % of |x̂_0|·... at the worst t


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("check", [check_ddim_step, check_ddpm_step])
def test_refdiff_passes_in_float32_with_any_seed(check, seed):
    pytest.importorskip("torch")
    own = R.ddim_step if check is check_ddim_step else R.ddpm_step
    fn = (lambda x, e, t, tp, *, eta, noise, num_inference_steps: own(x, e, t, tp, eta=eta,
                                                                      noise=noise)) \
        if check is check_ddim_step else \
        (lambda x, e, t, tp, *, noise, num_inference_steps: own(x, e, t, tp, noise))
    result = check(fn, target=Target("torch", "float32"), seed=seed, max_examples=40)
    assert result.passed, result.report()


def _ddim_values(levels, x, eps, z, eta):
    """DDIM in the paper's algebra from (ᾱ_t, 1−ᾱ_t, ᾱ_prev, 1−ᾱ_prev) given separately."""
    return K.ddim_paper(x, eps, z, levels, eta, None, True, False)


@pytest.mark.parametrize("t,t_prev,eta", [(999, 998, 0.5), (999, 0, 1.0), (1, 0, 1.0),
                                          (500, 250, 0.3), (20, 10, 0.0), (999, 499, 1.0)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_input_error_covers_every_perturbation(t, t_prev, eta, dtype):
    """E is sound: perturbing x, ε, z, ᾱ and 1 − ᾱ (each independently) within the rounding
    the bound assumes moves the float64 result by at most E."""
    rng = np.random.default_rng(t + 7 * t_prev)
    p = B.Precision(dtype)
    x, eps, z = (rng.uniform(-3, 3, 6) for _ in range(3))
    ab_t, ab_p = AB(t), AB(t_prev)
    out = B._ddim(p, p.array(x), p.array(eps), z, ab_t, ab_p, eta, None, True, False, t, t_prev)
    A_t, C_t = p.alpha_bar(ab_t, index=t)
    A_p, C_p = p.alpha_bar(ab_p, index=t_prev)
    base = _ddim_values((ab_t, 1 - ab_t, ab_p, 1 - ab_p), x, eps, z, eta)
    worst = np.zeros_like(base)
    for _ in range(200):
        s = rng.choice([-1.0, 1.0], size=7)
        levels = (ab_t + s[0] * A_t.e, 1 - ab_t + s[1] * C_t.e, ab_p + s[2] * A_p.e,
                  1 - ab_p + s[3] * C_p.e)
        moved = _ddim_values(levels, x * (1 + s[4] * p.u), eps * (1 + s[5] * p.u),
                             z * (1 + s[6] * p.u), eta)
        worst = np.maximum(worst, np.abs(moved - base))
    assert np.all(worst <= out.e * (1 + 1e-6) + 1e-300)
    assert np.all(out.e < 50 * worst + 1e-300) or eta == 1.0  # and not far above the worst


def _docs_partials(x, eps, z, a_t, c_t, a_p, c_p, eta):
    """The partial derivatives of the DDIM step as docs/testing.md lists them."""
    beta = 1 - a_t / a_p
    r = eta**2 * beta / c_t
    d, sigma = math.sqrt(c_p * (1 - r)), math.sqrt(r * c_p)
    x0 = (x - math.sqrt(c_t) * eps) / math.sqrt(a_t)
    dr = {"a_t": -eta**2 / (a_p * c_t), "c_t": -r / c_t, "a_p": eta**2 * a_t / (a_p**2 * c_t)}
    via_r = lambda dri: dri * (-c_p / (2 * d) * eps + c_p / (2 * sigma) * z)  # noqa: E731
    return {"x_t": math.sqrt(a_p / a_t) + 0 * x,
            "eps": d - math.sqrt(a_p) * math.sqrt(c_t) / math.sqrt(a_t) + 0 * x,
            "z": sigma + 0 * x,
            "a_t": -math.sqrt(a_p) * x0 / (2 * a_t) + via_r(dr["a_t"]),
            "c_t": -math.sqrt(a_p) * eps / (2 * math.sqrt(a_t) * math.sqrt(c_t)) + via_r(dr["c_t"]),
            "a_p": x0 / (2 * math.sqrt(a_p)) + via_r(dr["a_p"]),
            "c_p": (1 - r) / (2 * d) * eps + r / (2 * sigma) * z}


def test_docs_partial_derivatives_of_the_ddim_step():
    """Each partial derivative written in docs/testing.md agrees with central differences."""
    x, eps, z = np.array([0.7, -2.0]), np.array([1.3, 0.4]), np.array([-0.8, 2.2])
    point = {"a_t": AB(700), "c_t": 1 - AB(700), "a_p": AB(300), "c_p": 1 - AB(300)}
    eta = 0.6
    analytic = _docs_partials(x, eps, z, *point.values(), eta)

    def f(**kw):
        args = {"x_t": x, "eps": eps, "z": z, **point, **kw}
        return _ddim_values((args["a_t"], args["c_t"], args["a_p"], args["c_p"]),
                            args["x_t"], args["eps"], args["z"], eta)
    for name in ("a_t", "c_t", "a_p", "c_p"):
        h = 1e-7 * point[name]
        fd = (f(**{name: point[name] + h}) - f(**{name: point[name] - h})) / (2 * h)
        np.testing.assert_allclose(analytic[name], fd, rtol=1e-5, err_msg=name)
    for name, v in (("x_t", x), ("eps", eps), ("z", z)):
        h = 1e-6
        fd = (f(**{name: v + h}) - f(**{name: v - h})) / (2 * h)
        np.testing.assert_allclose(analytic[name], fd, rtol=1e-6, err_msg=name)
    for written in ("∂x_prev/∂x_t = √(ᾱ_prev/ᾱ_t)", "∂x_prev/∂z = σ",
                    "∂x_prev/∂ε = d − √ᾱ_prev·√(1−ᾱ_t)/√ᾱ_t"):
        assert written in DOC, written


def test_stated_constants_match_the_code():
    assert B.SAFETY == 2.0 and "S = 2" in DOC
    for dtype, u in B.UNIT_ROUNDOFF.items():
        assert f"| {dtype} | 2⁻{round(-math.log2(u))}" in DOC, dtype


@pytest.mark.parametrize("dtype,slip,above", [
    ("float64", "eta", 1e9), ("float64", "after", 1e9), ("float64", "no_sigma", 1e9),
    ("float32", "eta", 100), ("float32", "after", 10), ("float32", "no_sigma", 100),
    ("float16", "eta", 2), ("float16", "no_sigma", 2)])
def test_formula_slips_exceed_the_bound(dtype, slip, above):
    """Not vacuous: at an ordinary example, each DDIM slip is far above the bound (the
    off-by-one ᾱ_prev changes ᾱ by β ≈ 0.8 %, below float16's resolution of this step)."""
    x, eps, z = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.25, -0.5]), np.array([1.0, -1.0, 0.5])
    t, t_prev, eta = 600, 400, 0.5
    wrong = M.hand_ddim(SCHED, **{"eta": {"eta_power": 1}, "after": {"prev": "after"},
                                  "no_sigma": {"direction": "no_sigma"}}[slip])
    got = wrong(x, eps, t, t_prev, eta=eta, noise=z, num_inference_steps=5)
    bound = B.ddim_step(x, eps, z, AB(t), AB(t_prev), dtype, eta=eta, t=t, t_prev=t_prev)
    ratio = np.max(np.abs(got - R.ddim_step(x, eps, t, t_prev, eta=eta, noise=z)) / bound)
    assert ratio > above, ratio


def test_float32_table_fails_a_float64_claim_and_passes_a_float32_step():
    """The schedule check judges the table's dtype; a float32 step check accepts a float32
    table (diffusers' own cumulative product)."""
    table = M.hand_schedule("float32")
    assert not check_schedule(table, max_examples=10).passed
    assert check_schedule(table, dtype="float32", kinds=("linear",), max_examples=10).passed
    variant = next(v for v in K.GROUPS[5].variants if v.name == "diffusers, float32 cumprod")
    result = check_ddim_step(variant.make(SCHED), target=Target("numpy", "float32"),
                             max_examples=60)
    assert result.passed, result.report()
    assert not check_ddim_step(variant.make(SCHED), max_examples=60).passed  # not float64


@pytest.mark.parametrize("backend,dtype,most", [("numpy", "float32", 2e-3),
                                               ("torch", "float16", 10.0)])
def test_loop_bound_holds_and_is_not_vacuous(backend, dtype, most):
    """The loop's bound carries each step's error forward through the step's Jacobian; a
    loop in the dtype stays within it, and the bound stays below 2e-3 (float32) and 10
    (float16) for results of size ~2 to ~30 (one step from t = 999 divides by √ᾱ ≈ 0.0064;
    the bound adds each step's worst case: ~100·u per step)."""
    pytest.importorskip(backend)
    target = Target(backend, dtype)
    x_T = target.rounded(np.array([[0.3, -1.2], [2.0, 0.7]]))
    for n in (1, 5, 20):
        ts = R.timesteps(1000, n, "trailing")
        zs = [np.full_like(x_T, 0.5)] * n
        _, bound = B.sampling_loop(M.SC.default_model, x_T, ts, zs, AB, lambda: 1.0, dtype,
                                   eta=0.5)
        expected = R.sample(M.SC.default_model, x_T, ts, zs, eta=0.5)
        got = R.sample(M.SC.default_model, target.put(x_T), ts, [target.put(z) for z in zs],
                       eta=0.5)
        assert_close(got, expected, dtype=dtype, bound=bound)
        assert float(np.max(bound)) < most


# -- learned variances and dynamic thresholding ------------------------------------------------

def _learned_sigma(v, levels, variance_type):
    """σ of IDDPM Eq. 15 ("learned_range") or exp(v/2) ("learned") in float64, from
    (ᾱ_t, 1−ᾱ_t, ᾱ_prev, 1−ᾱ_prev) given separately."""
    a_t, c_t, a_p, c_p = levels
    if variance_type == "learned":
        return np.exp(v / 2)
    beta = 1 - a_t / a_p
    frac = (v + 1) / 2
    return np.exp((frac * np.log(beta) + (1 - frac) * np.log(max(c_p * beta / c_t, 1e-20))) / 2)


@pytest.mark.parametrize("t,t_prev", [(999, 998), (999, 0), (500, 250), (10, 9), (999, -1)])
@pytest.mark.parametrize("variance_type", ["learned_range", "learned"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_learned_noise_error_covers_every_perturbation(t, t_prev, variance_type, dtype):
    """The σ·z term's input error is sound: v, z, ᾱ and 1 − ᾱ perturbed within their
    rounding move σ·z by at most its error (t_prev = −1: ᾱ_prev = 1, β̃ at the floor)."""
    rng = np.random.default_rng(t + 3 * t_prev)
    p = B.Precision(dtype)
    v = rng.uniform(-1.25, 1.25, 6) if variance_type == "learned_range" else rng.uniform(-20, 1, 6)
    z = rng.uniform(-3, 3, 6)
    exact = t_prev < 0
    ab_t, ab_p = AB(t), 1.0 if exact else AB(t_prev)
    A_t, C_t = p.alpha_bar(ab_t, index=t)
    A_p, C_p = p.alpha_bar(ab_p, exact, max(t_prev, 0))
    _, _, beta_tilde, beta = B._posterior_coefficients(A_t, C_t, A_p, C_p)
    out = B._learned_noise(p, p.array(v), beta_tilde, beta, variance_type, p.array(z))
    base = _learned_sigma(v, (ab_t, 1 - ab_t, ab_p, 1 - ab_p), variance_type) * z
    assert np.allclose(out.v, base, rtol=1e-12, atol=0)
    worst = np.zeros_like(base)
    for _ in range(200):
        s = rng.choice([-1.0, 1.0], size=6)
        levels = (ab_t + s[0] * A_t.e, 1 - ab_t + s[1] * C_t.e, ab_p + s[2] * A_p.e,
                  1 - ab_p + s[3] * C_p.e)
        moved = _learned_sigma(v * (1 + s[4] * p.u), levels, variance_type) * z * (1 + s[5] * p.u)
        worst = np.maximum(worst, np.abs(moved - base))
    assert np.all(worst <= out.error() * (1 + 1e-6) + 1e-300)


@pytest.mark.parametrize("shape", [(2, 3), (3, 2, 4, 4), (1, 3, 64, 64)])
@pytest.mark.parametrize("threshold", [(0.95, 1.5), (0.995, math.inf), (0.5, math.inf)])
def test_threshold_bound_covers_torch_float32_quantile(shape, threshold):
    """torch.quantile in float32 forms the rank p·(N − 1) in float32 (up to ~40 ulp from the
    float64 rank's quantile at N = 12288): the bound's rank term covers it, and the bound
    stays small (x̂_0 of size ~3: below 1e-4)."""
    torch = pytest.importorskip("torch")
    th = M.DynamicThreshold(*threshold)
    target = Target("torch", "float32")
    rng = np.random.default_rng(len(shape))
    x0 = target.rounded(rng.standard_normal(shape) * 3)
    got = M.hand_threshold(target.put(x0), th)
    assert got.dtype == torch.float32
    expected = dynamic_threshold(x0, th.ratio, th.max_value)
    p = B.Precision("float32")
    bound = B._threshold(p.array(x0), th).bound()
    assert_close(got, expected, dtype="float32", bound=bound)
    assert float(np.max(bound)) < 1e-4


def test_learned_and_threshold_slips_exceed_the_bound():
    """Not vacuous at an ordinary respaced step in float32: frac = v, the logs swapped, no
    division by s are each far above the bound."""
    x, eps, z = np.array([[0.5, -1.0, 2.0]]), np.array([[1.0, 0.25, -0.5]]), np.array([[1.0, -1.0, 0.5]])
    v = np.array([[-0.5, 0.25, 1.1]])
    t, t_prev = 600, 200
    for wrong in (M.hand_ddpm_learned(SCHED, frac="v"), M.hand_ddpm_learned(SCHED, logs="swapped")):
        got = wrong(x, eps, t, t_prev, var_values=v, noise=z, num_inference_steps=5)
        ref = R.ddpm_step(x, eps, t, t_prev, z, variance_type="learned_range", var_values=v)
        bound = B.ddpm_step(x, eps, z, AB(t), AB(t_prev), "float32", var_values=v,
                            variance_type="learned_range", t=t, t_prev=t_prev)
        assert np.max(np.abs(got - ref) / bound) > 100
    th = M.THRESHOLD
    x, eps = np.array([[0.9, -1.4, 1.3, 0.2]]), np.array([[0.1, 0.2, -0.1, 0.0]])
    got = M.hand_ddim(SCHED, threshold=th, threshold_bug="no_divide")(
        x, eps, 20, 10, eta=0.0, noise=z[:, :1] * 0, num_inference_steps=50)
    ref = R.ddim_step(x, eps, 20, 10, clip_x0=th)
    bound = B.ddim_step(x, eps, None, AB(20), AB(10), "float32", clip_x0=th, t=20, t_prev=10)
    assert np.max(np.abs(got - ref) / bound) > 100
