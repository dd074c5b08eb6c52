"""Error bounds and references of the σ-space and flow checks (:mod:`refdiff.testing.solver_checks`),
and the exact Gaussian denoiser the Heun and DPM-Solver++(2M) checks supply.

The bounds are first-order, in the target's dtype, with the Level/Array algebra of
:mod:`refdiff.testing.bounds`; :mod:`refdiff.testing.solver_checks` states what they count (its
module docstring, "Tolerance"), and each function here says which algebraic forms it takes the
widest of.

References
----------
.. [EDM] T. Karras et al., arXiv:2206.00364v2, Algorithm 1, Eq. 3 (the Gaussian's denoiser).
.. [DPMPP] C. Lu et al., arXiv:2211.01095v2, Algorithm 2.
.. [DDIM] Song, Meng, Ermon, arXiv:2010.02502v4, Eqs. 12, 16.
"""

from __future__ import annotations

import math

import numpy as np

import refdiff as rd
from refdiff.testing import bounds as B
from refdiff.testing.level_checks import _held


class GaussianDenoiser:
    """D(x; σ) = μ + (x − μ)·λ/(λ + σ²): the exact denoiser of N(μ, diag λ) (EDM Eq. 3 for
    a Gaussian), in the backend and dtype of ``mean`` and ``variance``; σ a float or an
    array of shape () or (B,)."""

    def __init__(self, mean, variance):
        self.mean, self.variance = mean, variance

    def __call__(self, x, sigma):
        if hasattr(sigma, "shape"):
            if math.prod(sigma.shape) == 1:
                sigma = float(sigma.reshape(()))
            else:
                sigma = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
        k = self.variance / (self.variance + sigma * sigma)
        return self.mean + (x - self.mean) * k


# ----- bounds ---------------------------------------------------------------------------------

def _exact(p: B.Precision, v) -> B.Array:
    """An input array: the values the reference sees (its rounding is not counted)."""
    v = np.asarray(v, dtype=np.float64)
    return p.array(v, np.zeros_like(v))


def _exp(a: B.Level) -> B.Level:
    v = math.exp(a.v)
    return B.Level(v, v * math.expm1(a.e) + a.p.u_table * v, a.p)


def _expm1(a: B.Level) -> B.Level:
    v = math.expm1(a.v)
    return B.Level(v, math.exp(a.v + a.e) * a.e + a.p.u_table * abs(v), a.p)


def _vp_alpha(s: B.Level) -> B.Level:
    return 1.0 / (1.0 + s * s).sqrt()                               # √ᾱ = 1/√(1 + σ²)


def denoised(x: B.Array, s: B.Level, mean, variance) -> B.Array:
    """D(x; σ) of :class:`GaussianDenoiser` evaluated in the dtype: k = λ/(λ + σ²) within
    3u·k plus σ's error times |∂k/∂σ| = 2σλ/(λ + σ²)²; then μ + (x − μ)·k."""
    p, mu = x.p, _exact(x.p, mean)
    lam = np.asarray(variance, dtype=np.float64)
    k = lam / (lam + s.v * s.v)
    e_k = 3 * p.u * k + 2 * s.v * lam / (lam + s.v * s.v) ** 2 * s.e
    d = x - mu
    scaled = B.Array(k * d.v, k * d.e + np.abs(d.v) * e_k, k * d.m, d.k + 2, p)
    return mu + scaled


def _euler_forms(x: B.Array, d: B.Array, s: B.Level, sn: B.Level) -> list:
    r = sn / s
    a, an = _vp_alpha(s), _vp_alpha(sn)
    eps = (a * x - a * d) / (s * a)                                 # DDIM on the VP path
    return [r * x + (1.0 - r) * d, x + (sn - s) * ((x - d) / s),
            x + ((sn - s) / s) * (x - d), (an * d + (sn * an) * eps) / an]


def euler_bound(x, denoised_, sigma: float, sigma_next: float, dtype: str) -> np.ndarray:
    """Bound of an Euler step in ``dtype`` (module docstring)."""
    p = B.Precision(dtype)
    forms = _euler_forms(_exact(p, x), _exact(p, denoised_), _held(p, sigma), _held(p, sigma_next))
    return np.max([f.bound() for f in forms], axis=0)


def _heun_forms(x: B.Array, s: B.Level, sn: B.Level, mean, variance) -> list:
    d = denoised(x, s, mean, variance)
    if sn.v == 0:                                                   # EDM Alg. 1, line 8
        return _euler_forms(x, d, s, sn)
    r = sn / s
    x_e = r * x + (1.0 - r) * d
    ours = (x + x_e) * 0.5 + (0.5 * (1.0 - s / sn)) * (x_e - denoised(x_e, sn, mean, variance))
    slope = (x - d) / s
    x_e = x + (sn - s) * slope
    slope_e = (x_e - denoised(x_e, sn, mean, variance)) / sn
    return [ours, x + (sn - s) * ((slope + slope_e) * 0.5)]


def heun_bound(mean, variance, x, sigma: float, sigma_next: float, dtype: str) -> np.ndarray:
    """Bound of a Heun step with :class:`GaussianDenoiser` in ``dtype``."""
    p = B.Precision(dtype)
    forms = _heun_forms(_exact(p, x), _held(p, sigma), _held(p, sigma_next), mean, variance)
    return np.max([f.bound() for f in forms], axis=0)


def heun_reference(mean, variance, x, sigma: float, sigma_next: float) -> np.ndarray:
    """refdiff's Heun step (EDM Alg. 1) with the Gaussian denoiser, NumPy float64."""
    den = GaussianDenoiser(np.asarray(mean, np.float64), np.asarray(variance, np.float64))
    d = den(x, sigma)
    if sigma_next == 0:
        return rd.heun_step(x, d, sigma, sigma_next)
    return rd.heun_step(x, d, sigma, sigma_next, den(rd.euler_step(x, d, sigma, sigma_next),
                                                     sigma_next))


def ancestral_bound(x, denoised_, noise, sigma: float, sigma_next: float, eta: float,
                    dtype: str) -> np.ndarray:
    """Bound of an Euler-ancestral step in ``dtype`` (k-diffusion's σ_up, σ_down)."""
    p = B.Precision(dtype)
    x, d, z = _exact(p, x), _exact(p, denoised_), _exact(p, noise)
    s, sn, e = _held(p, sigma), _held(p, sigma_next), _held(p, eta)
    up = e * (sn * sn * (s * s - sn * sn) / (s * s)).sqrt()
    up = sn if up.v > sn.v else up
    down = (sn * sn - up * up).sqrt()
    forms = [f + up * z for f in _euler_forms(x, d, s, down)[:3]]
    a, an = _vp_alpha(s), _vp_alpha(sn)
    b, bn = s * a, sn * an
    sd = e * (bn / b) * ((s * s - sn * sn) / (1.0 + s * s)).sqrt()  # DDIM Eq. 16's σ
    sd = bn if sd.v > bn.v else sd
    eps = (a * x - a * d) / b
    forms.append((an * d + (bn * bn - sd * sd).sqrt() * eps + sd * z) / an)
    return np.max([f.bound() for f in forms], axis=0)


def flow_euler_bound(x, velocity, t: float, t_next: float, dtype: str) -> np.ndarray:
    """Bound of a flow Euler step in ``dtype``."""
    p = B.Precision(dtype)
    x, u, t_, tn = _exact(p, x), _exact(p, velocity), _held(p, t), _held(p, t_next)
    x0, eps = x - t_ * u, x + (1.0 - t_) * u
    return np.maximum((x + (tn - t_) * u).bound(), ((1.0 - tn) * x0 + tn * eps).bound())


def _dpm_forms(x: B.Array, d: B.Array, prev, s: B.Level, sn: B.Level, sp, gauss) -> list:
    """One DPM-Solver++(2M) step in three forms; ``prev`` (D_prev) and ``sp`` (σ_prev) None
    for a first-order step; ``gauss`` = (μ, λ) of the denoiser."""
    if sn.v == 0:
        return _euler_forms(x, d, s, sn)
    r = sn / s
    t, tn = s.log() * -1.0, sn.log() * -1.0                         # t = −log σ = λ on VE
    h = tn - t
    a, an = _vp_alpha(s), _vp_alpha(sn)
    lam, lam_n = a.log() - (s * a).log(), an.log() - (sn * an).log()
    hv = lam_n - lam                                                # diffusers' h
    coef = an * (_exp(hv * -1.0) - 1.0)                             # α'(e^{−h} − 1)
    x_vp = x * a
    d_v = denoised(x_vp / a, s, *gauss)
    ours = r * x + (1.0 - r) * d
    kd = (_exp(tn * -1.0) / _exp(t * -1.0)) * x - _expm1(h * -1.0) * d
    vp = ((sn * an) / (s * a)) * x_vp - coef * d_v
    if prev is not None:                                            # DPMPP Alg. 2, r = h_prev/h
        ours = r * x + (1.0 - r) * (d + ((s / sn).log() / (2.0 * (sp / s).log())) * (d - prev))
        half = 1.0 / (2.0 * ((t + sp.log()) / h))                   # 1/(2r)
        kd = (_exp(tn * -1.0) / _exp(t * -1.0)) * x - _expm1(h * -1.0) * (
            (1.0 + half) * d - half * prev)
        ap = _vp_alpha(sp)
        r0 = (lam - (ap.log() - (sp * ap).log())) / hv
        vp = vp - (coef * 0.5) * ((d_v - prev) * (1.0 / r0))
    return [ours, kd, vp / an]


def dpmpp_reference(mean, variance, x, sigmas, lower_order_final: bool = False) -> np.ndarray:
    """refdiff's DPM-Solver++(2M) run (:func:`refdiff.dpmpp_2m_step`), NumPy float64."""
    den = GaussianDenoiser(np.asarray(mean, np.float64), np.asarray(variance, np.float64))
    x, state, n = np.asarray(x, np.float64), None, len(sigmas) - 1
    for i in range(n):
        x, state = rd.dpmpp_2m_step(x, den(x, sigmas[i]), sigmas[i], sigmas[i + 1], state,
                                    first_order=lower_order_final and i == n - 1)
    return x


def dpmpp_bound(mean, variance, x, sigmas, dtype: str,
                lower_order_final: bool = False) -> np.ndarray:
    """Bound of a DPM-Solver++(2M) run in ``dtype``: the state errors carried through each
    step (first order, absolute values along every path) plus each step's own."""
    p = B.Precision(dtype)
    x = np.asarray(x, np.float64)
    err, prev, n = np.zeros_like(x), None, len(sigmas) - 1
    for i in range(n):
        s, sn = _held(p, sigmas[i]), _held(p, sigmas[i + 1])
        X = B.Array(x, err, np.abs(x), 0, p)
        d = denoised(X, s, mean, variance)
        second = prev is not None and not (lower_order_final and i == n - 1)
        forms = _dpm_forms(X, d, prev if second else None, s, sn,
                           _held(p, sigmas[i - 1]) if second else None, (mean, variance))
        x, err = forms[0].v, np.max([f.error() for f in forms], axis=0)
        prev = B.Array(d.v, d.error(), np.abs(d.v), 0, p)
    return B.factor(p) * err
