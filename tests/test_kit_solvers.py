"""The kit's σ-space and flow sampler checks (refdiff.testing.solver_checks, level_checks).

refdiff passes its own checks (NumPy float64 and torch float32); each planted slip of
refdiff.testing.solver_mutants.SOLVER_MUTANTS is caught by its public check in the CI search;
each control, correct but written differently, passes on NumPy float64, NumPy float32 and
torch float32 (its worst error/bound ratio printed); a reproduction, pasted, reproduces its
failure; the command line runs a hand-written candidate."""

import functools
import importlib.util
import subprocess
import sys

import pytest

import refdiff as rd
from refdiff.testing import CHECKS, Target
from refdiff.testing import solver_mutants as SM
from refdiff.testing.level_checks import check_flow_times, check_karras_sigmas
from refdiff.testing.solver_checks import (check_dpmpp_2m, check_euler_ancestral_step,
                                           check_euler_step, check_flow_euler_step,
                                           check_heun_step)
from refdiff.testing.tolerance import observe

TORCH = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch missing")
TARGETS = [Target(), Target("numpy", "float32"),
           pytest.param(Target("torch", "float32"), id="torch-float32", marks=TORCH)]


def _heun(den, x, s, s_n):
    d = den(x, s)
    if s_n == 0:
        return rd.heun_step(x, d, s, s_n)
    return rd.heun_step(x, d, s, s_n, den(rd.euler_step(x, d, s, s_n), s_n))


def _dpmpp(den, x, sigmas):
    state = None
    for s, s_n in zip(sigmas, sigmas[1:]):
        x, state = rd.dpmpp_2m_step(x, den(x, s), s, s_n, state)
    return x


REFDIFF = [
    (check_euler_step, rd.euler_step),
    (check_heun_step, _heun),
    (check_euler_ancestral_step, lambda x, d, s, s_n, *, eta, noise:
     rd.euler_ancestral_step(x, d, s, s_n, noise, eta=eta)),
    (check_flow_euler_step, rd.flow_euler_step),
    (check_dpmpp_2m, _dpmpp),
]


@pytest.mark.parametrize("target", [Target(), pytest.param(Target("torch", "float32"),
                                                           id="torch-float32", marks=TORCH)])
@pytest.mark.parametrize("check, fn", REFDIFF, ids=[c.__name__ for c, _ in REFDIFF])
def test_refdiff_passes_its_own_checks(check, fn, target):
    result = check(fn, target=target, max_examples=15)
    assert result.passed, result.report()


def test_refdiff_lists_pass():
    assert check_karras_sigmas(lambda n, lo, hi: rd.karras_sigmas(n, lo, hi), max_examples=30)
    assert check_flow_times(lambda n, s: rd.flow_times(n, shift=s), max_examples=30)
    assert check_karras_sigmas(lambda n, lo, hi: rd.karras_sigmas(n, lo, hi, final="sigma_min"),
                               final="sigma_min", max_examples=30)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", SM.SOLVER_CONTROLS, ids=[c.name for c in SM.SOLVER_CONTROLS])
def test_control_passes(case, target):
    if case.check in SM.LEVEL_CHECKS and target != Target():
        pytest.skip("the level checks take lists of floats: one row")
    ratios = []
    with observe(lambda rec: ratios.append(rec.get("ratio", 0.0))):
        result = SM.run_solver_case(case, target=target, max_examples=15)
    assert result.passed, result.report()
    print(f"{case.name} [{target.id}]: max error/bound {max(ratios):.3g}")


@functools.lru_cache(maxsize=None)
def _search(i):
    return SM.run_solver_case(SM.SOLVER_MUTANTS[i], max_examples=50)


@pytest.mark.parametrize("i", range(len(SM.SOLVER_MUTANTS)),
                         ids=[c.name for c in SM.SOLVER_MUTANTS])
def test_slip_is_caught(i):
    case, result = SM.SOLVER_MUTANTS[i], _search(i)
    assert not result.passed, f"{case.name} not caught"
    assert result.counterexample and result.reproduction
    print(f"{case.name}: caught after {result.examples_to_fail} examples (CI search)")


def test_reproduction_reproduces():
    """The shrunk counterexample's snippet, pasted, fails the same way."""
    for i in (2, 6, 9):
        case, result = SM.SOLVER_MUTANTS[i], _search(i)
        assert not result.passed
        with pytest.raises(AssertionError):
            exec(result.reproduction, {"candidate": case.make(None)})


def test_registered_and_cli():
    names = ("euler", "heun", "euler_ancestral", "flow_euler", "dpmpp_2m", "karras",
             "flow_times")
    assert all(n in CHECKS for n in names)
    out = subprocess.run([sys.executable, "-m", "refdiff", "check",
                          "refdiff.testing.solver_mutants:hand_euler", "--checks", "euler",
                          "--max-examples", "20"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    from refdiff.testing.cli import main
    assert main(["refdiff.testing.solver_mutants:hand_karras", "--checks", "karras",
                 "--option", "final=zero", "--max-examples", "10"]) == 0
    assert main(["refdiff.testing.solver_mutants:hand_dpmpp_2m", "--checks", "dpmpp_2m",
                 "--backend", "torch", "--dtype", "float32", "--max-examples", "10"]) == 0


def test_docs_slip_table_states_the_ci_search():
    """docs/testing.md's slip table (σ-space section): each row's CI column is the examples to
    the first failure of this file's CI search (max_examples = 50, seed None)."""
    import pathlib

    text = (pathlib.Path(__file__).parents[1] / "docs" / "testing.md").read_text(encoding="utf-8")
    section = text[text.index("### σ-space and flow samplers"):text.index("### diffusers' σ-space")]
    rows = {}
    for ln in section.splitlines():
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if len(cells) == 3 and " / " in cells[2] and cells[2].split(" / ")[0].isdigit():
            rows[cells[0]] = int(cells[2].split(" / ")[0])
    assert len(rows) == len(SM.SOLVER_MUTANTS)
    for i, case in enumerate(SM.SOLVER_MUTANTS):
        assert rows[case.name] == _search(i).examples_to_fail, case.name
