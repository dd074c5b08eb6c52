"""No false positives: every correct implementation of refdiff.testing.corpus passes every
applicable check on every dtype row, with its error well below the bound.

The deterministic run (CI) covers every group on every row; the seeded run is marked slow
and runs ``REFDIFF_CORPUS_SEEDS`` seeds (default 1 in CI; the numbers in docs/testing.md come
from ``python -m refdiff.testing.corpus --seeds 20 --examples 60``)."""

import os

import pytest

from refdiff.testing import Target
from refdiff.testing import corpus as K


def _rows():
    rows = []
    for target in K.ROWS:
        try:
            __import__(target.backend)
        except ImportError:
            rows.append(pytest.param(target, id=target.id,
                                     marks=pytest.mark.skip(reason=f"{target.backend} missing")))
            continue
        rows.append(pytest.param(target, id=target.id))
    return rows


ROWS = _rows()
GROUPS = [pytest.param(g, id=g.name) for g in K.GROUPS]


def _assert_clean(outcome, worst=0.5):
    assert outcome.check_passed, outcome.report
    assert not outcome.failures, outcome.failures
    for name, ratios in outcome.ratios.items():
        assert ratios, f"{name}: no comparison was made"
        assert max(ratios) < worst, (name, max(ratios))


@pytest.mark.parametrize("target", ROWS)
@pytest.mark.parametrize("group", GROUPS)
def test_every_correct_variant_passes(group, target):
    """The deterministic search (the same examples every run), every variant of the group
    that is meant for the row's dtype, compared with the check's reference and bound."""
    _assert_clean(K.run_group(group, target, max_examples=15))


@pytest.mark.parametrize("group", GROUPS)
def test_each_variant_passes_as_the_checks_own_candidate(group):
    """Each variant, alone, through the public check (not only as a fan-out companion)."""
    pytest.importorskip("torch")
    for variant in group.variants:
        target = Target("torch", "float32" if "float32" in variant.dtypes else "float64")
        single = K.Group(group.check, group.options, (variant,), group.name)
        _assert_clean(K.run_group(single, target, max_examples=10))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(int(os.environ.get("REFDIFF_CORPUS_SEEDS", "1"))))
def test_seeded_corpus(seed):
    """Random searches: every group on NumPy float64, torch float32 and torch float16."""
    pytest.importorskip("torch")
    rows = [Target("numpy", "float64"), Target("torch", "float32"), Target("torch", "float16")]
    outcomes, summary = K.measure([100 + seed], rows=rows, max_examples=20)
    for outcome in outcomes:
        _assert_clean(outcome)
    assert summary["failures"] == 0 and all(s["worst"] < 0.5
                                            for s in summary["per_dtype"].values())


def test_a_half_table_is_not_a_correct_implementation():
    """The corpus' limit, stated: ᾱ held in float16 (1 − ᾱ derived from it) fails the float16
    step check, as CONVENTIONS "Precision" says it must (ᾱ_0 rounds to 1)."""
    torch = pytest.importorskip("torch")

    def half_table_ddim(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps):
        table = torch.asarray(K.Levels(SCHED, "float64").table, dtype=torch.float16)
        a_t = table[t]
        a_p = table[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float16)
        return K.ddim_diffusers(x_t, eps, noise, (a_t, 1 - a_t, a_p, 1 - a_p), eta, None, False,
                                t_prev < 0)
    from refdiff.testing import check_ddim_step
    result = check_ddim_step(half_table_ddim, target=Target("torch", "float16"),
                             max_examples=60)
    assert not result.passed


SCHED = __import__("refdiff").linear_schedule(1000)
