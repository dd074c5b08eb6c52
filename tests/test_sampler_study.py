"""examples/sampler_accuracy.py: its quick run writes the page and the figures where it is
told and nothing into the repository; the numbers of a page agree with each other (the
NFE-to-threshold and the orders are recomputed from the page's own tables, the orders lie in
their theoretical bands); the committed docs/samplers_accuracy.md is a full run's page, and
the cells that are cheap to recompute with the full settings are the ones it states; the
study's helpers (model-call counting, the flow's exact Gaussian end, the order fit, the
threshold rule) give known answers on known cases."""

import importlib.util
import math
import os
import pathlib
import re
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
COMMITTED = ROOT / "docs" / "samplers_accuracy.md"
# The orders' bands: a first-order solver's error ∝ NFE⁻¹, a second-order one's ∝ NFE⁻²;
# the grid's upper points are close to, not in, the asymptotic regime, so the bands allow
# the next term (±0.2 for order 1; −0.3/+0.4 for order 2, where the fitted slope comes
# from above as the O(h³) term decays).
BANDS = {"euler": (0.8, 1.2), "flow_s1": (0.8, 1.2), "flow_s3": (0.8, 1.2),
         "heun": (1.7, 2.4), "dpmpp_2m": (1.7, 2.4)}


@pytest.fixture(scope="module")
def mods():
    """The example, its measurement helpers and _output (imported as the script does)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import _output
        import _sampler_study
        import sampler_accuracy
        yield sampler_accuracy, _sampler_study, _output
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def quick(mods, tmp_path_factory):
    """One quick run into an --out folder, from an empty current directory: (out folder,
    page, current directory, committed state before, after)."""
    mod, _, output = mods
    out, cwd = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        before = output.committed_state()
        assert mod.main(["--quick", "--out", str(out)]) == 0
        after = output.committed_state()
    finally:
        os.chdir(old)
    return out, (out / "samplers_accuracy.md").read_text(encoding="utf-8"), cwd, before, after


# ----- reading a page -----------------------------------------------------------------------

def _table(page: str, heading: str) -> tuple[list[str], dict]:
    """(header cells, {first cell: other cells}) of the first table after ``heading``."""
    lines = page[page.index(heading + "\n"):].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows[0][1:], {r[0]: r[1:] for r in rows[2:]}


def _numbers(page: str, study, mod) -> dict:
    """The page's tables as numbers."""
    _, floors = _table(page, "## References and noise floors")
    _, summ = _table(page, "## Summary: NFE to reach SW2 ≤ floor + 0.01, and the orders")
    name_of = {v: k for k, v in study.NAMES.items()}
    ref_names = {"exact": "exact data", "conv": "converged ODE",
                 "guided": "converged guided ODE"}
    nums = {"floor": {t: float(floors[n][1]) for t, n in ref_names.items()},
            "threshold": {t: float(floors[n][3]) for t, n in ref_names.items()},
            "summary": {name_of[k]: v for k, v in summ.items()}, "sw2": {}, "err": {}}
    for t, title in mod.TARGETS.items():
        head, rows = _table(page, f"## SW2, {title}")
        nums["grid"] = tuple(int(g) for g in head)
        nums["sw2"][t] = {name_of[k]: [float(v) for v in r] for k, r in rows.items()}
    for case in ("gaussian", "mixture"):
        _, rows = _table(page, f"### {case.capitalize()}")
        nums["err"][case] = {name_of[k]: [float(v) for v in r] for k, r in rows.items()}
    return nums


def _check_consistent(page: str, study, mod, cfg) -> dict:
    """The summary is what the page's tables give: NFE to the printed threshold, orders
    from the printed errors (4 significant digits: the slope moves < 0.002; the printed
    order has 2 decimals), the orders in their bands; the counts of Heun's NFE are 2n − 1."""
    nums = _numbers(page, study, mod)
    assert nums["grid"] == cfg.grid
    for t in mod.TARGETS:
        assert math.isclose(nums["threshold"][t], nums["floor"][t] + mod.MARGIN, abs_tol=2e-4)
        col = list(mod.TARGETS).index(t)
        for s in study.SAMPLERS:
            pts = [(study.nfe_of(s, study.steps_for(s, g)), v)
                   for g, v in zip(cfg.grid, nums["sw2"][t][s])]
            hit = study.nfe_to_threshold(pts, nums["threshold"][t])
            assert nums["summary"][s][col] == (str(hit) if hit else f"> {pts[-1][0]}"), (t, s)
    for k, case in enumerate(("gaussian", "mixture")):
        for s in study.SAMPLERS:
            cell = nums["summary"][s][3 + k]
            if s not in study.DETERMINISTIC:
                assert cell == "(stochastic)"
                continue
            pts = [(g, study.nfe_of(s, study.steps_for(s, g)), e)
                   for g, e in zip(cfg.grid, nums["err"][case][s])]
            assert abs(study.order(pts, cfg.fit_from) - float(cell)) < 0.006, (case, s)
            lo, hi = BANDS[s]
            assert lo <= float(cell) <= hi, (case, s, cell)
    heun = ", ".join(str(2 * ((g + 1) // 2) - 1) for g in cfg.grid)
    assert f"NFE {heun}. Under CFG every evaluation is two model calls" in page
    return nums


# ----- the example as a script ----------------------------------------------------------------

def test_quick_run_writes_there_and_nowhere_else(quick):
    out, page, cwd, before, after = quick
    assert after == before, "the example wrote into the repository"
    assert not any(cwd.iterdir()), "the example wrote into the current directory"
    assert page.startswith("# Sampler accuracy on the exact oracle")
    assert f"`python examples/sampler_accuracy.py --quick --out {out}` (quick mode" in page
    assert "wall time measured by the script" in page and "CPU cores" in page
    names = sorted(p.name for p in out.iterdir())
    if importlib.util.find_spec("matplotlib") is None:
        assert names == ["samplers_accuracy.md"]
    else:
        assert names == ["samplers_accuracy.md", "samplers_order.png", "samplers_sw2.png"]
        assert all((out / n).stat().st_size > 1000 for n in names)
        assert "](samplers_sw2.png)" in page and "](samplers_order.png)" in page


def test_quick_page_is_consistent(mods, quick):
    mod, study, _ = mods
    _check_consistent(quick[1], study, mod, study.QUICK)


@pytest.mark.parametrize("argv", [["--quick", "--write-docs"], ["--write-docs", "--out", "x"]])
def test_write_docs_refuses_quick_results(mods, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        mods[0].main(argv)
    assert exc.value.code == 2 and "--write-docs" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ----- the committed page -------------------------------------------------------------------

@pytest.fixture(scope="module")
def committed(mods):
    mod, study, _ = mods
    page = COMMITTED.read_text(encoding="utf-8")
    return page, _check_consistent(page, study, mod, study.FULL)


def test_committed_page_is_a_full_run(mods, committed):
    page, _ = committed
    cfg = mods[1].FULL
    assert "This page is the output of `python examples/sampler_accuracy.py --write-docs`, " \
           "run on" in page and "quick mode" not in page
    wall = float(re.search(r"in (\d+\.\d) s of wall time measured by the script", page)[1])
    assert wall < 180, wall
    assert f"same z ({cfg.n} samples)" in page
    assert f"{cfg.n_exact} exact draws; floor: {cfg.fresh} fresh exact sets of {cfg.n}" in page
    assert f"Heun {cfg.conv_steps} steps (NFE {2 * cfg.conv_steps - 1}), {cfg.n_pool} " \
           "samples" in page and f"Heun {cfg.ref_steps} steps (σ-space)" in page


def test_committed_numbers_are_what_the_full_settings_give(mods, committed):
    """Recompute, with the full settings, the cells that take seconds: the exact data's
    floor, its sd and the pair value; the unguided SW2 at the first grid NFE of three
    samplers; the Gaussian errors of the deterministic solvers up to NFE 16. The page prints
    4 decimals or 4 significant digits: a half unit of the last digit (and a little
    rounding) is the tolerance."""
    mod, study, _ = mods
    page, nums = committed
    cfg, gm = study.FULL, mod.study_mixture()
    ref = study.exact_reference(gm, cfg)
    _, floors = _table(page, "## References and noise floors")
    assert abs(float(floors["exact data"][1]) - ref.floor) < 5.1e-5
    assert abs(float(floors["exact data"][2]) - ref.floor_sd) < 5.1e-5
    assert f"Between two independent exact sets of {cfg.n}: {ref.pair:.4f}." in page
    z = study.start_noise(cfg.n)
    for s in ("euler", "dpmpp_2m", "flow_s1"):
        x = study.run(gm, s, study.steps_for(s, cfg.grid[0]), z)[0]
        assert abs(nums["sw2"]["exact"][s][0] - study.sw2(ref, x)) < 5.1e-5, s
    g1, ze = study.gaussian(), study.start_noise(cfg.n_err)
    for s in study.DETERMINISTIC:
        exact = study.gaussian_exact(g1, ze, s.startswith("flow"))
        for j, g in enumerate(cfg.grid[:5]):
            e = study.mean_error(study.run(g1, s, study.steps_for(s, g), ze)[0], exact)
            assert math.isclose(nums["err"]["gaussian"][s][j], e, rel_tol=6e-4), (s, g)


# ----- the helpers on known cases -----------------------------------------------------------

def test_model_calls_are_counted_and_checked(mods, monkeypatch):
    """Heun's n steps to σ = 0 call the model 2n − 1 times, twice that under CFG; the others
    n (2n under CFG); a count that disagrees with the formula is an error."""
    _, study, _ = mods
    gm = mods[0].study_mixture()
    z, y = study.start_noise(6), study.labels(6, True)
    assert study.run(gm, "heun", 4, z)[1] == 7
    assert study.run(gm, "heun", 4, z, y)[1] == 14
    assert study.run(gm, "euler_ancestral", 5, z)[1] == 5
    assert study.run(gm, "dpmpp_2m", 5, z, y)[1] == 10
    assert study.run(gm, "flow_s3", 6, z, y)[1] == 12
    monkeypatch.setattr(study, "nfe_of", lambda sampler, steps: steps)
    with pytest.raises(RuntimeError, match="called the model 7 times, expected 4"):
        study.run(gm, "heun", 4, z)


def test_flow_exact_end_is_the_limit_of_the_ve_solution(mods):
    """The flow from t = 1 is the VE ODE from σ → ∞ with x = (1 + σ)·z: at σ = 10⁶ the
    closed form differs from μ + Σ^½ z by O(‖z‖·√λ/σ + ‖μ‖/σ) < 1e-4; and the VE end
    from 80·z differs from it by the start's mismatch, O(‖μ‖·√λ/80), not more."""
    _, study, _ = mods
    from refdiff.oracle_paths import gaussian_ode_solution

    g1, z = study.gaussian(), study.start_noise(50)
    flow_end = study.gaussian_exact(g1, z, flow=True)
    big = 1e6
    assert np.max(np.abs(gaussian_ode_solution(g1, (1 + big) * z, big, 0.0) - flow_end)) < 1e-4
    gap = np.max(np.linalg.norm(study.gaussian_exact(g1, z, flow=False) - flow_end, axis=1))
    assert 1e-4 < gap < 2 * np.linalg.norm(g1.means[0]) / 80 + 1e-3, gap


def test_order_and_threshold_rules(mods):
    """The fit recovers the exponent of a power law exactly and ignores points below
    fit_from; the threshold rule takes the first NFE after the last miss."""
    _, study, _ = mods
    pts = [(g, g - 1, 3.0 * (g - 1) ** -2.0) for g in (4, 8, 16, 32)]
    assert math.isclose(study.order(pts, 8), 2.0, rel_tol=1e-12)
    pts[0] = (4, 3, 1e6)                                   # a blown-up first point, ignored
    assert math.isclose(study.order(pts, 8), 2.0, rel_tol=1e-12)
    sw = [(4, 0.5), (8, 0.09), (16, 0.2), (32, 0.08), (64, 0.07)]
    assert study.nfe_to_threshold(sw, 0.1) == 32             # the dip at 8 does not count
    assert study.nfe_to_threshold(sw, 0.06) is None
    assert study.nfe_to_threshold(sw, 1.0) == 4


def test_readme_summary_states_the_committed_page(mods, committed):
    """The README's sampler-study table and run time are the committed page's: each README
    row's cells equal the page's summary cells of the same sampler (unguided to the exact
    data, CFG to the converged guided ODE, the Gaussian order)."""
    committed = committed[0]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("<!-- sampler-study -->"):readme.index("<!-- /sampler-study -->")]
    _, summary = _table(committed, "## Summary: NFE to reach SW2 ≤ floor + 0.01, and the orders")
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")]
            for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith("| ---")]
    assert len(rows) == 1 + len(summary)
    for name, *cells in rows[1:]:
        page = summary[name]
        assert cells == [page[0], page[2], page[3]], name
    seconds = re.search(r"in ([0-9.]+) s of wall time", committed).group(1)
    assert f"{seconds} s on" in block
    euler_a = _table(committed, "## SW2, CFG s = 3, to the converged guided ODE")[1]
    vals = [float(v) for v in euler_a["Euler-ancestral η=1"][2:]]
    assert all(abs(v - 0.27) < 0.035 for v in vals)  # "≈ 0.27 ... from 8 on"
