"""The originals' timestep lists (refdiff.respacing) against independent derivations.

Every N (or n) in 1 … T at T ∈ {50, 250, 1000, 4000}, for each function, against a derivation
written here by another route than the implementation's:

- guided-diffusion "ddimN": a table of ⌈T/r⌉ (exact Fraction ceilings) over every stride
  r = 1 … T−1, the smallest r kept per count, and the list k·r (the implementation uses the
  closed form r = ⌈T/N⌉ and range);
- guided-diffusion sections: the sections cut by ``numpy.array_split``, the float positions by
  ``numpy.cumsum`` (the same sequential IEEE additions, from a stride computed as a Fraction
  rounded once), rounded half to even by floor and fraction; measured against
  round(linspace) and against the exact rational positions (integer arithmetic);
- CompVis uniform: a mask over 1 … T; CompVis quad: NumPy's ``linspace`` formula written out
  (k·step, last element = stop) without calling ``linspace``.

Hand-derived literal lists (T = 5, 6, 10, 16, 1000) carry their derivation in a comment.
"""

import doctest
import math
import re
from fractions import Fraction
from itertools import accumulate

import numpy as np
import pytest

import refdiff as rd
import refdiff.respacing as respacing

TS = (50, 250, 1000, 4000)
EVERY_T = TS + (1, 2, 3, 4, 5, 6, 7, 10, 16)  # the acceptance set, and small T for the edges


# ----- independent derivations ----------------------------------------------------------------

def _ddim_table(T):
    """{N: smallest stride r in 1..T-1 with ceil(T/r) = N}, scanning strides downwards."""
    table = {}
    for r in range(T - 1, 0, -1):
        table[math.ceil(Fraction(T, r))] = r  # a smaller r overwrites: the smallest is kept
    return table


def _round_half_even(x):
    """Half-to-even rounding of floats >= 0 by floor and fraction (x − ⌊x⌋ is exact here)."""
    f = np.floor(x)
    d = x - f
    return (f + ((d > 0.5) | ((d == 0.5) & (f % 2 == 1)))).astype(np.int64)


def _accumulated_offsets(size, count):
    """round(0.0 + r + r + ...) for one section: numpy's sequential cumsum of the stride."""
    stride = float(Fraction(size - 1, count - 1)) if count > 1 else 1.0  # correctly rounded
    xs = np.concatenate([[0.0], np.cumsum(np.full(count - 1, stride))])  # x_k = x_{k-1} + r
    return _round_half_even(xs)


def _sections(T, counts):
    """guided-diffusion's sections, cut by numpy.array_split (first T % J one longer)."""
    out = []
    for chunk, count in zip(np.array_split(np.arange(T), len(counts)), counts):
        out.append(chunk[0] + _accumulated_offsets(len(chunk), count) if count else chunk[:0])
    return np.sort(np.concatenate(out))[::-1]


def _divide_half_even(num, den):
    """round_half_even(num / den) for integer arrays num >= 0, den > 0, exactly."""
    q, rem = np.divmod(num, den)
    return q + ((2 * rem > den) | ((2 * rem == den) & (q % 2 == 1)))


def _exact_positions(T, N):
    """round_half_even(k·(T−1)/(N−1)), k = 0 … N−1, in exact integer arithmetic."""
    if N == 1:
        return np.zeros(1, dtype=np.int64)
    return _divide_half_even(np.arange(N, dtype=np.int64) * (T - 1), N - 1)


def _compvis_uniform(T, n):
    c = T // n
    t = np.arange(1, T + 1)
    return t[(t - 1) % c == 0]  # every timestep 1 + k·c up to T


def _compvis_quad(T, n):
    root = math.sqrt(T * 0.8)
    if n == 1:
        y = np.zeros(1)  # NumPy's linspace of one point is its start
    else:
        y = np.arange(n, dtype=np.float64) * (root / (n - 1))
        y[-1] = root  # NumPy's linspace sets the end point exactly
    return (y**2).astype(np.int64) + 1  # truncation = floor for values >= 0


def _check_array(t, length):
    assert isinstance(t, np.ndarray) and t.dtype == np.int64 and t.shape == (length,)
    assert np.all(np.diff(t) < 0)


# ----- guided-diffusion: "ddimN" --------------------------------------------------------------

@pytest.mark.parametrize("T", EVERY_T)
def test_ddim_every_N(T):
    table = _ddim_table(T)
    for N in range(1, T + 1):
        if N in table:
            r = table[N]
            expected = [k * r for k in range(N - 1, -1, -1)]
            assert expected[0] <= T - 1 < expected[0] + r  # N strides fit, N + 1 do not
            t = rd.guided_diffusion_timesteps(T, f"ddim{N}")
            _check_array(t, N)
            assert t.tolist() == expected, (T, N)
        else:
            with pytest.raises(ValueError, match=f"exactly {N} timesteps"):
                rd.guided_diffusion_timesteps(T, f"ddim{N}")
    assert 1 not in table  # guided-diffusion never tries the stride T: "ddim1" does not exist


def test_ddim_possible_counts():
    # measured: the number of N in 1..T for which "ddimN" exists
    assert {T: len(_ddim_table(T)) for T in TS} == {50: 13, 250: 30, 1000: 62, 4000: 125}


def test_ddim_error_names_the_nearest_counts():
    table = _ddim_table(1000)
    possible = sorted(table)
    for N in range(1, 1002):
        if N in table:
            continue
        near = [m for m in possible if m < N][-1:] + [m for m in possible if m > N][:1]
        match = "nearest counts that exist are " + re.escape(str(near))
        with pytest.raises(ValueError, match=match):
            rd.guided_diffusion_timesteps(1000, f"ddim{N}")
    assert 250 in table and 333 not in table and 334 in table  # strides 4; 3 gives 334


def test_ddim_hand_values():
    # T = 10, "ddim4": ⌈10/r⌉ = 10, 5, 4, 3, 2, 2, 2, 2, 2 for r = 1 … 9; the first r with 4 is 3
    assert rd.guided_diffusion_timesteps(10, "ddim4").tolist() == [9, 6, 3, 0]
    # "ddim3": r = 4 (⌈10/4⌉ = 3): 0, 4, 8; "ddim2": r = 5: 0, 5
    assert rd.guided_diffusion_timesteps(10, "ddim3").tolist() == [8, 4, 0]
    assert rd.guided_diffusion_timesteps(10, "ddim2").tolist() == [5, 0]
    # the released 25-step DDIM setting at T = 1000: stride 40 (⌈1000/40⌉ = 25)
    assert rd.guided_diffusion_timesteps(1000, "ddim25").tolist() == list(range(960, -1, -40))
    for N in (1, 6, 7, 8, 9):  # ⌈10/r⌉ never equals these
        with pytest.raises(ValueError, match=f"ddim{N}"):
            rd.guided_diffusion_timesteps(10, f"ddim{N}")


# ----- guided-diffusion: sections -------------------------------------------------------------

# measured: for how many N in 1..T one section equals round(linspace(0, T−1, N)), and for how
# many it equals the exact rational positions k·(T−1)/(N−1) rounded half to even
AGREE_LINSPACE = {50: 46, 250: 186, 1000: 722, 4000: 2737}
AGREE_EXACT = {50: 46, 250: 185, 1000: 717, 4000: 2749}


@pytest.mark.parametrize("T", EVERY_T)
def test_one_section_every_N(T):
    agree_linspace = agree_exact = 0
    for N in range(1, T + 1):
        t = rd.guided_diffusion_timesteps(T, [N])
        _check_array(t, N)
        t = t[::-1]
        assert np.array_equal(t, _accumulated_offsets(T, N)), (T, N)  # one section: 0 … T−1
        ref_linspace = np.round(np.linspace(0, T - 1, N)).astype(np.int64)
        ref_exact = _exact_positions(T, N)
        assert np.abs(t - ref_linspace).max() <= 1 and np.abs(t - ref_exact).max() <= 1
        agree_linspace += bool(np.array_equal(t, ref_linspace))
        agree_exact += bool(np.array_equal(t, ref_exact))
    if T in TS:
        assert (agree_linspace, agree_exact) == (AGREE_LINSPACE[T], AGREE_EXACT[T])


def test_float_accumulation_two_ways():
    """itertools.accumulate (Python floats) and numpy.cumsum give the same x_k at T = 1000."""
    for N in range(2, 1001):
        stride = 999 / (N - 1)
        xs = list(accumulate([stride] * (N - 1), initial=0.0))
        np.testing.assert_array_equal(xs[1:], np.cumsum(np.full(N - 1, stride)))


def test_sections_hand_values():
    # T = 10, "2,3": two sections of 5 (0…4 and 5…9). Section 0, 2 steps: stride 4/1 = 4.0,
    # offsets 0, 4. Section 1, 3 steps: stride 4/2 = 2.0, offsets 0, 2, 4 → 5, 7, 9.
    assert rd.guided_diffusion_timesteps(10, "2,3").tolist() == [9, 7, 5, 4, 0]
    # T = 10, "3,1,2": 10 = 3·3 + 1, sizes 4, 3, 3 (starts 0, 4, 7). Section 0: stride 3/2 = 1.5,
    # x = 0, 1.5, 3.0 → 0, 2, 3 (1.5 rounds half to even: 2). Section 1: one step, at 4.
    # Section 2: stride 2/1 = 2.0 → 7, 9.
    assert rd.guided_diffusion_timesteps(10, "3,1,2").tolist() == [9, 7, 4, 3, 2, 0]
    # T = 6, [3]: stride 5/2 = 2.5, x = 0, 2.5, 5.0 → 0, 2 (2.5 half to even), 5
    assert rd.guided_diffusion_timesteps(6, [3]).tolist() == [5, 2, 0]
    # T = 16, [15]: stride 15/14 = 1.0714285714285714; seven float additions give
    # 7.499999999999999 → 7, whereas the exact 7·15/14 = 7.5 (and linspace's 7.5) → 8.
    t = rd.guided_diffusion_timesteps(16, [15])[::-1].tolist()
    assert t == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]
    assert _exact_positions(16, 15)[7] == 8 and round(np.linspace(0, 15, 15)[7]) == 8
    # a count of 0 takes nothing from its section: T = 10, "0,2" → 5 + (0, 4)
    assert rd.guided_diffusion_timesteps(10, "0,2").tolist() == [9, 5]


def test_sections_10_15_20_at_1000():
    # 1000 = 3·333 + 1: sections of 334, 333, 333 timesteps starting at 0, 334, 667
    t = rd.guided_diffusion_timesteps(1000, "10,15,20")
    _check_array(t, 45)
    np.testing.assert_array_equal(t, _sections(1000, [10, 15, 20]))
    assert t[-1] == 0 and t[-10] == 333 and t[-11] == 334 and t[-25] == 666 and t[0] == 999
    for form in ([10, 15, 20], (10, 15, 20), np.array([10, 15, 20]), "10, 15 ,20"):
        np.testing.assert_array_equal(rd.guided_diffusion_timesteps(1000, form), t)


@pytest.mark.parametrize("T,counts", [(1000, [7, 0, 100, 3]), (250, [1] * 250), (97, [5, 30]),
                                      (4000, [100, 1, 1000]), (10, [1, 1, 1, 0, 0, 0, 0, 0, 0, 1])])
def test_sections_against_independent(T, counts):
    t = rd.guided_diffusion_timesteps(T, counts)
    _check_array(t, sum(counts))
    np.testing.assert_array_equal(t, _sections(T, counts))


@pytest.mark.parametrize("arg,exc,match", [
    ("ddim", ValueError, "'' is not an int"),
    ("10,a", ValueError, "'a' is not an int"),
    ("", ValueError, "is not an int"),
    ("11", ValueError, r"section_counts\[0\] = 11 exceeds the 10 timesteps"),
    ("5,6", ValueError, r"section_counts\[1\] = 6 exceeds the 5 timesteps"),
    ("-1", ValueError, "counts must be >= 0"),
    ("0,0", ValueError, "at least one step"),
    ([0], ValueError, "at least one step"),
    ([], ValueError, "at least one step"),
    ([-2, 3], ValueError, r"section_counts\[0\] must lie in \[0, inf\]"),
    ([2.0], TypeError, r"section_counts\[0\] must be an int"),
    ([True], TypeError, r"section_counts\[0\] must be an int"),
    (5, TypeError, "section_counts must be a string"),
    (b"10", TypeError, "section_counts must be a string"),
    (np.ones((2, 2), dtype=np.int64), TypeError, "section_counts must be a string"),
])
def test_section_counts_errors(arg, exc, match):
    with pytest.raises(exc, match=match):
        rd.guided_diffusion_timesteps(10, arg)


def test_num_train_timesteps_checked():
    for f in (lambda T: rd.guided_diffusion_timesteps(T, [1]),
              lambda T: rd.compvis_timesteps(T, 1)):
        with pytest.raises(ValueError, match="num_train_timesteps must be a positive int"):
            f(0)
        with pytest.raises(ValueError, match="num_train_timesteps must be a positive int"):
            f(10.0)


# ----- CompVis --------------------------------------------------------------------------------

@pytest.mark.parametrize("T", EVERY_T)
def test_compvis_uniform_every_n(T):
    valid = 0
    for n in range(1, T + 1):
        expected = _compvis_uniform(T, n)[::-1]
        assert len(expected) == math.ceil(T / (T // n)) >= n
        if expected[0] == T:  # +1 moved the last multiple of T // n to T: out of the table
            assert (T - 1) % (T // n) == 0
            with pytest.raises(ValueError, match=f"largest timestep at {T}, outside"):
                rd.compvis_timesteps(T, n)
            continue
        valid += 1
        t = rd.compvis_timesteps(T, n)
        _check_array(t, len(expected))
        np.testing.assert_array_equal(t, expected, err_msg=f"T={T}, n={n}")
    assert valid == {50: 24, 250: 103, 1000: 401, 4000: 1657}.get(T, valid)  # measured


@pytest.mark.parametrize("T", EVERY_T)
def test_compvis_quad_every_n(T):
    valid = []
    for n in range(1, T + 1):
        expected = _compvis_quad(T, n)[::-1]
        if expected[0] > T - 1:
            with pytest.raises(ValueError, match=f"largest timestep at {expected[0]}, outside"):
                rd.compvis_timesteps(T, n, "quad")
        elif np.any(np.diff(expected) >= 0):
            with pytest.raises(ValueError, match="repeat"):
                rd.compvis_timesteps(T, n, "quad")
        else:
            valid.append(n)
            t = rd.compvis_timesteps(T, n, "quad")
            _check_array(t, n)
            np.testing.assert_array_equal(t, expected, err_msg=f"T={T}, n={n}")
    if T <= 5:  # n >= 2 ends at floor(0.8 T) + 1 >= T; n = 1 is [1], out of the table at T = 1
        assert valid == ([1] if T > 1 else [])
        return
    # valid exactly while the quadratic steps near 0 stay >= 1 apart: n − 1 <= sqrt(0.8 T)
    assert valid == list(range(1, 2 + math.floor(math.sqrt(0.8 * T))))
    assert len(valid) == {50: 7, 250: 15, 1000: 29, 4000: 57}.get(T, len(valid))


def test_quad_uses_numpy_linspace_bit_for_bit():
    for T in TS:
        for n in range(2, 60):
            y = np.linspace(0, np.sqrt(T * 0.8), n)
            np.testing.assert_array_equal((y**2).astype(int) + 1, _compvis_quad(T, n))


def test_compvis_hand_values():
    # T = 1000, n = 3: c = 333, range(0, 1000, 333) = 0, 333, 666, 999 (4 elements), +1 → 1000
    with pytest.raises(ValueError, match=r"largest timestep at 1000.*333 = T // n divides"):
        rd.compvis_timesteps(1000, 3)
    # T = 1000, n = 6: c = 166, 0, 166, …, 996 (7 elements), +1
    assert rd.compvis_timesteps(1000, 6).tolist() == [997, 831, 665, 499, 333, 167, 1]
    assert rd.compvis_timesteps(1000, 50).tolist() == list(range(981, 0, -20))  # SD's 50 steps
    # T = 10: n = 2: c = 5 → 0, 5 → 1, 6; n = 4: c = 2 → 0, 2, 4, 6, 8 → +1 (five elements)
    assert rd.compvis_timesteps(10, 2).tolist() == [6, 1]
    assert rd.compvis_timesteps(10, 4).tolist() == [9, 7, 5, 3, 1]
    assert rd.compvis_timesteps(10, 1).tolist() == [1]  # c = 10: just 0, then +1
    for n in (3, 6, 10):  # c = 3, 1, 1 divide T − 1 = 9: the list would end at 10
        with pytest.raises(ValueError, match="outside the table 0..9"):
            rd.compvis_timesteps(10, n)
    # quad, T = 10: √8 = 2.828…; n = 3: linspace 0, 1.414…, 2.828…, squares 0,
    # 2.0000000000000004, 8.000000000000002 → 0, 2, 8 → +1
    assert rd.compvis_timesteps(10, 3, "quad").tolist() == [9, 3, 1]
    assert rd.compvis_timesteps(10, 2, "quad").tolist() == [9, 1]
    # n = 4: step √8/3 = 0.943, squares 0, 0.89, 3.56, 8.0 → 0, 0, 3, 8: 1 repeats
    with pytest.raises(ValueError, match=r"timesteps \[1\] repeat"):
        rd.compvis_timesteps(10, 4, "quad")
    # T = 5, n = 2: √4 = 2, squares 0, 4 → +1 = 5 = T: out of the table
    with pytest.raises(ValueError, match="largest timestep at 5"):
        rd.compvis_timesteps(5, 2, "quad")


@pytest.mark.parametrize("args,exc,match", [
    ((10, 11), ValueError, r"num_inference_steps must lie in 1..10"),
    ((10, 0), ValueError, "num_inference_steps must be a positive int"),
    ((10, 2, "linear"), ValueError, "method must be one of 'uniform', 'quad'"),
])
def test_compvis_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        rd.compvis_timesteps(*args)


# ----- inference_timesteps by name, sample, namespaces, examples -------------------------------

_BY_NAME = {
    "guided_diffusion": lambda T, n: rd.guided_diffusion_timesteps(T, [n]),
    "guided_diffusion_ddim": lambda T, n: rd.guided_diffusion_timesteps(T, f"ddim{n}"),
    "compvis_uniform": lambda T, n: rd.compvis_timesteps(T, n, "uniform"),
    "compvis_quad": lambda T, n: rd.compvis_timesteps(T, n, "quad"),
}


def _outcome(f, *args):
    try:
        return f(*args).tolist()
    except ValueError as exc:
        return str(exc)


@pytest.mark.parametrize("spacing", rd.ORIGINAL_SPACINGS)
def test_inference_timesteps_by_name(spacing):
    assert set(_BY_NAME) == set(rd.ORIGINAL_SPACINGS)
    assert not set(rd.SPACINGS) & set(rd.ORIGINAL_SPACINGS)
    for T in (10, 250):
        for n in range(1, T + 1):
            by_name = _outcome(rd.inference_timesteps, T, n, spacing)
            assert by_name == _outcome(_BY_NAME[spacing], T, n), (T, n)
    with pytest.raises(ValueError, match="offset .*diffusers' steps_offset.* applies to the"):
        rd.inference_timesteps(1000, 10, spacing, offset=1)
    assert rd.inference_timesteps(1000, 10, spacing, offset=0).tolist() == \
        _BY_NAME[spacing](1000, 10).tolist()


def test_unknown_spacing_lists_every_name():
    with pytest.raises(ValueError) as info:
        rd.inference_timesteps(10, 5, "uniform")
    for name in rd.SPACINGS + rd.ORIGINAL_SPACINGS:
        assert repr(name) in str(info.value)


def test_diffusers_spacings_unchanged():
    """The closed forms of the three diffusers spacings, for every n at T = 1000."""
    T = 1000
    for n in range(1, T + 1):
        lead = np.arange(n)[::-1] * (T // n)
        trail = _divide_half_even(T * (n - np.arange(n)), n) - 1
        lin = np.round(np.linspace(0, T - 1, n))[::-1].astype(np.int64)
        for spacing, expected in (("leading", lead), ("trailing", trail), ("linspace", lin)):
            np.testing.assert_array_equal(rd.inference_timesteps(T, n, spacing), expected)
    assert rd.SPACINGS == ("leading", "trailing", "linspace")


def test_sample_with_an_original_spacing():
    seen = []

    def model(x_t, t, cond):
        seen.append(t)
        return np.zeros_like(x_t)

    schedule = rd.linear_schedule(1000)
    x_T = np.ones((2, 3))
    for spacing in rd.ORIGINAL_SPACINGS:
        seen.clear()
        x0 = rd.sample(model, x_T, schedule, num_inference_steps=10, spacing=spacing, generator=0)
        assert x0.shape == x_T.shape and np.all(np.isfinite(x0))
        assert seen == rd.inference_timesteps(1000, 10, spacing).tolist()
    assert seen[-1] == 1 and len(seen) == 10  # compvis_quad, n = 10: ends at 0 + 1


def test_xp_namespace():
    xs = pytest.importorskip("array_api_strict")
    for t in (rd.guided_diffusion_timesteps(100, "10,5", xp=xs),
              rd.compvis_timesteps(100, 7, xp=xs), rd.compvis_timesteps(100, 7, "quad", xp=xs),
              rd.inference_timesteps(100, 7, "compvis_quad", xp=xs)):
        assert type(t).__module__.startswith("array_api_strict") and t.dtype == xs.int64
    np.testing.assert_array_equal(np.asarray(rd.compvis_timesteps(100, 7, "quad", xp=xs)),
                                  rd.compvis_timesteps(100, 7, "quad"))


def test_module_examples_run():
    result = doctest.testmod(respacing, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
