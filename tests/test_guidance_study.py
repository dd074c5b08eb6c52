"""examples/guidance_methods.py: its quick run writes the report and figures where it is told
(the current directory by default) and nothing into the repository; its metric functions
(examples/_study_metrics.py) give the known answers on known cases (exact samples of the
truth, shifted and rescaled samples, a hand-computed W2), each with a tolerance from its
sampling error."""

import importlib.util
import math
import pathlib
import re
import sys

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


@pytest.fixture(scope="module")
def gmx():
    """The example as a module, its helper _output, and its metrics module _study_metrics
    (it imports its helpers as a script does)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import guidance_methods
        import _output
        import _study_metrics
        yield guidance_methods, _output, _study_metrics
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def sm(gmx):
    """examples/_study_metrics.py: the mixture, the metrics and the truth."""
    return gmx[2]


@pytest.fixture(scope="module")
def mixture(sm):
    return sm.study_mixture()


@pytest.fixture(scope="module")
def truth(sm, mixture):
    return sm.make_truth(mixture, n_ref=20000, n_run=3000)


# ----- the example as a script -------------------------------------------------------------

def test_quick_run_writes_here_and_leaves_the_repository_alone(gmx, tmp_path, monkeypatch,
                                                                 capsys):
    mod, output, _ = gmx
    monkeypatch.chdir(tmp_path)
    before = output.committed_state()
    assert mod.main(["--quick"]) == 0
    assert output.committed_state() == before, "the example wrote into the repository"
    out = capsys.readouterr().out
    page = (tmp_path / "guidance_methods.md").read_text()
    assert page.startswith("# Guidance methods") and "python examples/guidance_methods.py --quick" in page
    assert "wall time measured by the script" in page and "CPU cores" in page
    assert page.count("| variant |") == 7          # one table per method
    body, _, found = page.partition("## Findings")
    assert found and "Autoguidance of an imperfect model (DDIM), the fair test" in found
    # every 3-decimal number of the findings is one of the tables' (or the truth line's)
    numbers = set(re.findall(r"\d\.\d{3}", found))
    assert numbers and numbers <= set(re.findall(r"\d\.\d{3}", body)), numbers - set(
        re.findall(r"\d\.\d{3}", body))
    names = sorted(p.name for p in tmp_path.iterdir())
    pngs = [n for n in names if n.endswith(".png")]
    assert set(names) - set(pngs) == {"guidance_methods.md"}
    if importlib.util.find_spec("matplotlib") is None:
        assert not pngs and "skipped" in out
    else:
        assert pngs == sorted(f"guidance_{k}.png" for k in (
            "cfg", "interval", "schedule", "apg", "cfgpp", "autoguidance",
            "autoguidance_imperfect"))
        assert all((tmp_path / p).stat().st_size > 1000 for p in pngs)


@pytest.mark.parametrize("argv", [["--quick", "--write-docs"], ["--write-docs", "--out", "x"]])
def test_write_docs_refuses_quick_results(gmx, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        gmx[0].main(argv)
    assert exc.value.code == 2 and "--write-docs" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ----- the metrics on known cases ----------------------------------------------------------

def _grid(lo=-7.0, hi=7.0, num=351):
    g = np.linspace(lo, hi, num)
    X, Y = np.meshgrid(g, g)
    return np.stack([X.ravel(), Y.ravel()], axis=1), (g[1] - g[0]) ** 2


def test_log_prob_given_is_a_normalised_density(sm, mixture):
    """∫ p(x | y) dx = 1 per class on a fine grid (midpoint rule; the densities are smooth
    and negligible beyond ±7, so the quadrature error is far below 1e-3)."""
    pts, da = _grid()
    for c in range(3):
        total = np.exp(sm.log_prob_given(mixture, pts, c)).sum() * da
        assert abs(total - 1.0) < 1e-3, (c, total)


def test_truth_accuracy_is_the_bayes_rate(sm, mixture, truth):
    """Exact samples score P(correct Bayes classification), here computed independently by
    quadrature: (1/C) Σ_c ∫ p(x | c)·1[argmax_c' p(c' | x) = c] dx. Tolerance: 4 binomial
    standard errors of the sample (3000 per class) plus the grid's error (cells cut by the
    decision boundary, ~1e-3)."""
    mod = sm
    pts, da = _grid()
    pred = mod.bayes_class(mixture, pts)
    exact = np.mean([np.exp(mod.log_prob_given(mixture, pts[pred == c], c)).sum() * da
                     for c in range(3)])
    assert 0.9 < exact < 0.995  # the classes overlap: the truth is not classified perfectly
    x = np.concatenate([mixture.sample(3000, generator=77 + c, y=c)[0] for c in range(3)])
    y = np.repeat(np.arange(3), 3000)
    se = math.sqrt(exact * (1 - exact) / len(y))
    assert abs(mod.class_accuracy(mixture, x, y) - exact) < 4 * se + 2e-3
    assert abs(truth.bayes_accuracy - exact) < 4 * math.sqrt(exact * (1 - exact) / 60000) + 2e-3
    # and a wrong target is caught: the same samples with labels rolled score far less
    assert mod.class_accuracy(mixture, x, (y + 1) % 3) < 0.1


def test_truth_low_density_fraction_is_one_percent(sm, mixture, truth):
    """A fresh exact sample has ≈ 1% below the truth's 1st percentile: binomial error of the
    sample (3000) plus that of the percentile estimated from 20000 draws, 4 SE; wider
    samples have more, a sample collapsed onto the means has none."""
    mod = sm
    se = math.sqrt(0.01 * 0.99 / 3000 + 0.01 * 0.99 / 20000)
    wide, lows = [], []
    for c in range(3):
        x = mixture.sample(3000, generator=500 + c, y=c)[0]
        lows.append(mod.low_density_fraction(mod.log_prob_given(mixture, x, c), truth.q01[c]))
        m = x.mean(axis=0)
        wide.append(mod.low_density_fraction(
            mod.log_prob_given(mixture, m + 2.0 * (x - m), c), truth.q01[c]))
        means = mixture.means[mixture.labels == c]
        assert mod.low_density_fraction(mod.log_prob_given(mixture, means, c), truth.q01[c]) == 0
    assert all(abs(v - 0.01) < 4 * se for v in lows), lows
    assert min(wide) > 0.05, wide
    assert abs(truth.low_truth - 0.01) < 4 * math.sqrt(0.01 * 0.99 / 3000 + 0.01 * 0.99 / 20000)


def test_class_covariance_and_spread(sm, mixture):
    """The exact class covariance matches that of 200000 draws (standard error of an entry
    ≈ √(2/n)·var ≈ 0.003 here: tolerance 0.02), spread_ratio of a large exact sample is 1
    within 0.02, and scaling a sample about its mean by c scales the ratio by exactly c."""
    mod = sm
    for c in range(3):
        x = mixture.sample(200000, generator=900 + c, y=c)[0]
        cov = mod.class_covariance(mixture, c)
        assert np.max(np.abs(np.cov(x, rowvar=False) - cov)) < 0.02, c
        assert abs(mod.spread_ratio(x, cov) - 1.0) < 0.02
        small = x[:1000]
        m = small.mean(axis=0)
        assert math.isclose(mod.spread_ratio(m + 0.7 * (small - m), cov),
                            0.7 * mod.spread_ratio(small, cov), rel_tol=1e-12)


def test_sliced_w2_hand_value_and_invariances(sm):
    """1-D: W2²({0, 1}, {0, ½, 1}) = ∫ (F_a⁻¹ − F_b⁻¹)² = 2·(½)²·(1/6) = 1/12 (by hand); the
    same law in a different sample size is at distance 0; a translate by v is at
    √(mean_θ ⟨θ, v⟩²) exactly, ≈ ‖v‖/√2 in 2-D."""
    mod = sm
    a, b = np.array([[0.0], [1.0]]), np.array([[0.0], [0.5], [1.0]])
    assert math.isclose(mod.sliced_w2(a, b, num_projections=5), math.sqrt(1 / 12),
                        rel_tol=1e-12)
    x = np.random.default_rng(3).standard_normal((500, 2))
    assert mod.sliced_w2(x, np.concatenate([x, x[::-1], x])) < 1e-12
    v = np.array([0.6, -0.8])
    theta = mod.directions(2)
    expect = math.sqrt(np.mean((theta @ v) ** 2))
    assert math.isclose(mod.sliced_w2(x, x + v), expect, rel_tol=1e-9)
    assert abs(expect - 1.0 / math.sqrt(2)) < 0.1  # 200 directions: E cos² = ½ ± ~0.04


def test_sliced_w2_of_the_truth_is_the_noise_floor(sm, mixture, truth):
    """Fresh exact samples of 1000 per class sit at the noise floor; the floor shrinks with
    the draws (4× the draws: by 0.35 … 0.85; not quite 1/√n = 0.5, since the reference of
    20000 adds its own share and the 1-D W2 of empirical laws with Gaussian tails converges
    a little slower than 1/√n); a sample
    shifted by v sits at √(floor² + ‖v‖²/2) within 15%; a sample with 80% of the spread
    stands clearly above the floor."""
    mod = sm
    vals, shifted, narrow = [], [], []
    v = np.array([0.9, 0.3])
    for c in range(3):
        x = mixture.sample(1000, generator=3000 + c, y=c)[0]
        vals.append(mod.sliced_w2_sorted(mod.sorted_projections(x, truth.theta), truth.proj[c]))
        shifted.append(mod.sliced_w2_sorted(mod.sorted_projections(x + v, truth.theta),
                                            truth.proj[c]))
        m = x.mean(axis=0)
        narrow.append(mod.sliced_w2_sorted(mod.sorted_projections(m + 0.8 * (x - m),
                                                                  truth.theta), truth.proj[c]))
    floor = truth.floor
    assert 0.5 * floor < np.mean(vals) < 1.6 * floor, (vals, floor)
    expect = math.sqrt(floor ** 2 + np.mean((truth.theta @ v) ** 2))
    assert all(abs(s - expect) < 0.15 * expect for s in shifted), (shifted, expect)
    assert min(narrow) > 1.5 * floor, (narrow, floor)
    def floor_at(per):  # the mean SW2 of fresh exact samples of ``per`` per class
        return np.mean([mod.sliced_w2_sorted(mod.sorted_projections(
            mixture.sample(per, generator=4000 + 10 * r + c, y=c)[0], truth.theta),
            truth.proj[c]) for r in range(4) for c in range(3)])
    ratio = floor_at(4000) / floor_at(1000)
    assert 0.35 < ratio < 0.85, ratio


def test_readme_study_numbers_come_from_the_page():
    """The README's summary of the study quotes the committed page: every decimal number in
    it (SW2, fractions, the wall time) appears in docs/guidance_methods.md, so a regenerated
    page with other numbers makes this fail until the README is updated."""
    import re

    root = pathlib.Path(__file__).parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("<!-- guidance-study -->"):readme.index("<!-- /guidance-study -->")]
    page = (root / "docs" / "guidance_methods.md").read_text(encoding="utf-8")
    numbers = re.findall(r"\d+\.\d+", block)
    assert len(numbers) >= 8
    assert [n for n in numbers if n not in page] == []
