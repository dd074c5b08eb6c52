"""The opt-in compiled path (refdiff.compiled) equals the eager functions it compiles.

Each compile costs 1–3 s on a CPU, so the file compiles four small functions once each
(about 10–20 s in all) and checks one shape per function; the slow ones are marked.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from refdiff import compiled  # noqa: E402
import refdiff as rd  # noqa: E402

pytestmark = pytest.mark.skipif(not compiled.is_available(), reason="torch.compile unavailable")

# Inductor may fuse a·x + b·y into fused multiply-adds or reorder a sum: a few float32 eps of
# the magnitude of the terms (|x_t|, |ε| ≤ ~5 here; the 1/√ᾱ of x̂_0 adds a factor ~2).
F32_ATOL = 64 * float(np.finfo(np.float32).eps)


def _arrays(shape=(2, 3, 4, 4), dtype=torch.float32, n=4):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(n)]


def _agree(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
    if not torch.equal(a, b):  # bitwise where Inductor keeps the operation order
        torch.testing.assert_close(a, b, rtol=0, atol=F32_ATOL)


@pytest.mark.slow
def test_guided_ddim_step_equals_eager():
    x, u, c, z = _arrays()
    got = compiled.guided_ddim_step(x, u, c, 7.5, 0.3, 0.55)
    _agree(got, rd.ddim_step(x, rd.cfg(u, c, 7.5), 0.3, 0.55))
    got = compiled.guided_ddim_step(x, u, c, 7.5, 0.3, 0.55, eta=0.5, noise=z)  # recompiles
    _agree(got, rd.ddim_step(x, rd.cfg(u, c, 7.5), 0.3, 0.55, eta=0.5, noise=z))


@pytest.mark.slow
def test_ddpm_step_and_q_sample_equal_eager():
    x, e, z, _ = _arrays()
    _agree(compiled.ddpm_step(x, e, 0.3, 0.55, z), rd.ddpm_step(x, e, 0.3, 0.55, z))
    _agree(compiled.q_sample(x, 0.3, e), rd.q_sample(x, 0.3, e))


@pytest.mark.slow
def test_cfg_exact_at_scale_0_and_1_when_compiled():
    _, u, c = _arrays(n=3)
    assert torch.equal(compiled.cfg(u, c, 0.0), u) and torch.equal(compiled.cfg(u, c, 1.0), c)


def test_rejects_what_eager_rejects_and_non_torch_inputs():
    x, u, c, _ = _arrays(shape=(2, 3))
    with pytest.raises(TypeError, match="takes torch tensors"):
        compiled.guided_ddim_step(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3)), 2.0, 0.3, 0.5)
    assert "not yet compiled" in repr(compiled.compile_fn(rd.cfg))
    assert compiled.guided_ddim_step.eager(x, u, c, 2.0, 0.3, 0.5).shape == (2, 3)
    with pytest.raises(ValueError, match="alpha_bar_prev must be >= alpha_bar_t"):
        compiled.guided_ddim_step.eager(x, u, c, 2.0, 0.5, 0.3)
