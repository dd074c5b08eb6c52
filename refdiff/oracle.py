"""An exact test model: a labelled Gaussian mixture, noised in closed form.

Data: x_0 ~ Σ_k π_k N(μ_k, Σ_k), component k carrying the class label y_k (several components
may share a label). Under q(x_t | x_0) every component stays Gaussian,
x_t | k ~ N(√ᾱ·μ_k, C_k) with C_k = ᾱ·Σ_k + (1 − ᾱ)·I, so at every noise level the noisy
marginal, each class-conditional and the noisy classifier p(y | x_t) are exact:

- responsibilities r_k(x_t) ∝ π_k N(x_t; √ᾱ μ_k, C_k) (restricted to y_k = y for a class);
- score ∇ log p(x_t) = −Σ_k r_k C_k⁻¹(x_t − √ᾱ μ_k); ε = −√(1−ᾱ)·score;
- x̂_0 = E[x_0 | x_t] = Σ_k r_k (μ_k + √ᾱ Σ_k C_k⁻¹ (x_t − √ᾱ μ_k)) (Tweedie, finite at ᾱ = 0);
- log p(y | x_t) = logsumexp_{k: y_k = y} − logsumexp_k, and ∇ log p(y | x_t) = score_y − score.

Each Σ_k is stored by its eigendecomposition U_k diag(λ_k) U_kᵀ (computed once, on the host, in
float64), so C_k = U_k diag(ᾱλ_k + 1 − ᾱ) U_kᵀ needs no inverse at any ᾱ. Evaluations follow the
array-API rules of the math: the parameters are moved to the namespace, device and dtype of
``x_t``; log-sum-exp keeps large ‖x_t‖ finite.

Symbols: ``weights`` = π_k, ``means`` = μ_k, ``covariances`` = Σ_k, ``labels`` = y_k,
``alpha_bar_t`` = ᾱ_t (a float, or a (B,) array).

References
----------
.. [DDPM] J. Ho, A. Jain, P. Abbeel, arXiv:2006.11239v2, Eq. 4 (q(x_t | x_0)).
.. [SDE] Y. Song et al., "Score-Based Generative Modeling through Stochastic Differential
   Equations", arXiv:2011.13456v2, Eq. 3 (the score) and Appendix B (ε = −σ_t·score).
.. [TWEEDIE] B. Efron, "Tweedie's Formula and Selection Bias", JASA 106 (2011), Eq. 2.8.
.. [CG] P. Dhariwal, A. Nichol, arXiv:2105.05233v4, §4.1 (the noisy classifier p(y | x_t)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat

from refdiff import _xp
from refdiff.schedules import host_namespace


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A labelled Gaussian mixture with exact noisy predictions (host float64 parameters).

    Attributes
    ----------
    weights : array, shape (K,)
        π_k > 0, summing to 1 (normalised at construction).
    means : array, shape (K, d)
    eigvals, eigvecs : arrays, shapes (K, d) and (K, d, d)
        Σ_k = U_k diag(λ_k) U_kᵀ, every λ_k > 0.
    labels : array of int, shape (K,)
        y_k, in 0 … num_classes − 1.

    Build one with :meth:`isotropic`, :meth:`diagonal` or :meth:`full`.
    """

    weights: Any
    means: Any
    eigvals: Any
    eigvecs: Any
    labels: Any

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def full(cls, weights, means, covariances, labels=None) -> "GaussianMixture":
        """From full covariances Σ_k, shape (K, d, d), symmetric positive definite."""
        xp = host_namespace()
        means = xp.asarray(means, dtype=xp.float64)
        cov = xp.asarray(covariances, dtype=xp.float64)
        if means.ndim != 2 or cov.shape != (means.shape[0], means.shape[1], means.shape[1]):
            raise ValueError(f"means must be (K, d) and covariances (K, d, d), got "
                             f"{tuple(means.shape)} and {tuple(cov.shape)}")
        if not bool(xp.all(cov == xp.matrix_transpose(cov))):
            raise ValueError("covariances must be symmetric")
        lam, U = xp.linalg.eigh(cov)
        return cls._checked(xp, weights, means, lam, U, labels)

    @classmethod
    def diagonal(cls, weights, means, variances, labels=None) -> "GaussianMixture":
        """From per-axis variances, shape (K, d)."""
        xp = host_namespace()
        means = xp.asarray(means, dtype=xp.float64)
        lam = xp.asarray(variances, dtype=xp.float64)
        if means.ndim != 2 or lam.shape != means.shape:
            raise ValueError(f"means and variances must both be (K, d), got {tuple(means.shape)} "
                             f"and {tuple(lam.shape)}")
        K, d = means.shape
        U = xp.broadcast_to(xp.eye(d, dtype=xp.float64), (K, d, d))
        return cls._checked(xp, weights, means, lam, xp.asarray(U, copy=True), labels)

    @classmethod
    def isotropic(cls, weights, means, variances, labels=None) -> "GaussianMixture":
        """From one variance per component (a float or shape (K,)): Σ_k = σ_k² I."""
        xp = host_namespace()
        means = xp.asarray(means, dtype=xp.float64)
        var = xp.asarray(variances, dtype=xp.float64)
        var = xp.broadcast_to(xp.reshape(var, (-1, 1)) if var.ndim else var, means.shape)
        return cls.diagonal(weights, means, xp.asarray(var, copy=True), labels)

    @classmethod
    def _checked(cls, xp, weights, means, lam, U, labels) -> "GaussianMixture":
        K = means.shape[0]
        w = xp.asarray(weights, dtype=xp.float64)
        if w.shape != (K,) or not bool(xp.all(xp.isfinite(w) & (w > 0))):
            raise ValueError(f"weights must be {K} finite positive numbers, got {w}")
        if not bool(xp.all(xp.isfinite(means))):
            raise ValueError("means must be finite")
        if not bool(xp.all(xp.isfinite(lam) & (lam > 0))):
            raise ValueError("covariances must be positive definite (every eigenvalue > 0)")
        y = xp.arange(K) if labels is None else xp.asarray(labels)
        if y.shape != (K,) or not xp.isdtype(y.dtype, "integral") or bool(xp.any(y < 0)):
            raise ValueError(f"labels must be {K} non-negative ints, got {labels!r}")
        return cls(w / xp.sum(w), means, lam, U, xp.astype(y, xp.int64))

    @property
    def dim(self) -> int:
        """d, the data dimension."""
        return int(self.means.shape[1])

    @property
    def num_classes(self) -> int:
        """1 + the largest label."""
        return int(max(int(v) for v in self.labels)) + 1

    # ----- evaluation: a checked prologue, then the closed forms ----------------------------
    def _inputs(self, x_t: Any, alpha_bar_t: Any):
        """Namespace, ᾱ cast to the dtype of x_t (a float or (B, 1, 1)) and √ᾱ, checked."""
        xp = _xp.namespace(x_t=x_t)
        _xp.check_floating(xp, "x_t", x_t)
        if x_t.ndim != 2 or x_t.shape[1] != self.dim:
            raise ValueError(f"x_t must have shape (B, {self.dim}), got {tuple(x_t.shape)}")
        (ab,) = _xp.cast(xp, x_t, _xp.level(xp, "alpha_bar_t", alpha_bar_t, x_t))
        return xp, ab

    def _params(self, xp, x):
        """The parameters in the namespace, device and dtype of ``x``."""
        dev = array_api_compat.device(x)
        return [xp.asarray(p, dtype=x.dtype, device=dev) for p in
                (self.weights, self.means, self.eigvals, self.eigvecs)]

    def _components(self, xp, x_t: Any, ab: Any, mask: Any):
        """Per-component log joint (B, K), score (B, K, d) and E[x_0 | x_t, k] (B, K, d)."""
        w, mu, lam, U = self._params(xp, x_t)
        ab3 = xp.reshape(ab, (-1, 1, 1)) if _xp.is_array(ab) else ab  # (B, 1, 1) or float
        diff = x_t[:, None, :] - _xp.sqrt(xp, ab3) * mu[None, :, :]         # (B, K, d)
        proj = xp.matmul(diff[:, :, None, :], U)[:, :, 0, :]                  # Uᵀ(x − m), (B, K, d)
        c = ab3 * lam + (1.0 - ab3)                                           # eig(C_k), (·, K, d)
        log_n = -0.5 * (xp.sum(proj**2 / c + xp.log(c), axis=-1) + self.dim * math.log(2 * math.pi))
        log_joint = xp.log(w) + log_n                                         # (B, K)
        Ut = xp.matrix_transpose(U)
        score = -xp.matmul((proj / c)[:, :, None, :], Ut)[:, :, 0, :]         # −C⁻¹(x − m)
        post = mu + _xp.sqrt(xp, ab3) * xp.matmul((proj * lam / c)[:, :, None, :], Ut)[:, :, 0, :]
        if mask is not None:
            log_joint = xp.where(mask, log_joint, -math.inf)
        return log_joint, score, post

    def _mask(self, xp, x_t: Any, y: Any):
        """None for ``y=None``, else (B, K) or (1, K) boolean: component k carries label y[b]."""
        if y is None:
            return None
        labels = xp.asarray(self.labels, device=array_api_compat.device(x_t))
        if _xp.is_array(y):
            _xp.namespace(x_t=x_t, y=y)
            if y.shape != (x_t.shape[0],):
                raise ValueError(f"y must be an int or shape ({x_t.shape[0]},), got {tuple(y.shape)}")
            return labels[None, :] == xp.astype(y, xp.int64)[:, None]
        if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < self.num_classes:
            raise ValueError(f"y must be a label in 0..{self.num_classes - 1}, got {y!r}")
        return labels[None, :] == y

    @staticmethod
    def _softmax(xp, log_joint):
        m = xp.max(log_joint, axis=1, keepdims=True)
        e = xp.exp(log_joint - m)
        total = xp.sum(e, axis=1, keepdims=True)
        return e / total, m[:, 0] + xp.log(total[:, 0])  # responsibilities, logsumexp

    def _score(self, xp, x_t: Any, ab: Any, mask: Any):
        lj, score, _ = self._components(xp, x_t, ab, mask)
        r, _ = self._softmax(xp, lj)
        return xp.sum(r[:, :, None] * score, axis=1)                          # Σ_k r_k·score_k

    def score(self, x_t: Any, alpha_bar_t: Any, y: Any = None):
        """∇ log p(x_t) (``y=None``) or ∇ log p(x_t | y), shape (B, d)."""
        xp, ab = self._inputs(x_t, alpha_bar_t)
        return self._score(xp, x_t, ab, self._mask(xp, x_t, y))

    def x0_eps(self, x_t: Any, alpha_bar_t: Any, y: Any = None):
        """Exact (x̂_0, ε̂) = (E[x_0 | x_t], E[ε | x_t]) of the marginal or of class y."""
        xp, ab = self._inputs(x_t, alpha_bar_t)
        lj, score, post = self._components(xp, x_t, ab, self._mask(xp, x_t, y))
        r, _ = self._softmax(xp, lj)
        score = xp.sum(r[:, :, None] * score, axis=1)
        return xp.sum(r[:, :, None] * post, axis=1), -_xp.sqrt(xp, 1.0 - ab) * score  # ε = −√(1−ᾱ)·score

    def eps(self, x_t: Any, alpha_bar_t: Any, y: Any = None):
        """Exact ε̂ = −√(1−ᾱ)·∇ log p(x_t [| y]), shape (B, d)."""
        return self.x0_eps(x_t, alpha_bar_t, y)[1]

    def log_prob(self, x_t: Any, alpha_bar_t: Any, y: Any = None):
        """log p(x_t) or log p(x_t, y) (joint with the class), shape (B,)."""
        xp, ab = self._inputs(x_t, alpha_bar_t)
        lj, _, _ = self._components(xp, x_t, ab, self._mask(xp, x_t, y))
        return self._softmax(xp, lj)[1]

    def log_prob_class(self, x_t: Any, alpha_bar_t: Any, y: Any):
        """The exact noisy classifier log p(y | x_t), shape (B,)."""
        xp, ab = self._inputs(x_t, alpha_bar_t)
        mask = self._mask(xp, x_t, y)
        lj, _, _ = self._components(xp, x_t, ab, None)
        masked = xp.where(mask, lj, -math.inf)
        return self._softmax(xp, masked)[1] - self._softmax(xp, lj)[1]

    def grad_log_prob_class(self, x_t: Any, alpha_bar_t: Any, y: Any):
        """∇_{x_t} log p(y | x_t) = ∇ log p(x_t | y) − ∇ log p(x_t), shape (B, d)."""
        xp, ab = self._inputs(x_t, alpha_bar_t)
        mask = self._mask(xp, x_t, y)
        return self._score(xp, x_t, ab, mask) - self._score(xp, x_t, ab, None)

    # ----- exact samplers -----------------------------------------------------------------
    def sample(self, n: int, *, generator: Any = None, backend: str = "numpy", dtype: Any = None,
               device: Any = None, y: int | None = None):
        """Exact draws from the data distribution (or from class ``y``).

        Returns
        -------
        x0 : array, shape (n, d), in the backend's namespace
        labels : int64 array, shape (n,)
        """
        from refdiff.backends import get_backend

        b = get_backend(backend)
        xp = b.xp
        dtype = xp.float64 if dtype is None else dtype
        gen = b.generator(generator, device)
        w = xp.asarray(self.weights, device=device)
        if y is not None:
            w = xp.where(xp.asarray(self.labels, device=device) == y, w, 0.0)
            w = w / xp.sum(w)
        cdf = xp.cumulative_sum(w)
        u = b.uniform((n,), dtype=xp.float64, device=device, generator=gen)
        k = xp.sum(xp.astype(u[:, None] >= cdf[None, :-1], xp.int64), axis=1)   # component
        z = b.normal((n, self.dim), dtype=xp.float64, device=device, generator=gen)
        mu, lam, U = (xp.asarray(p, device=device) for p in (self.means, self.eigvals, self.eigvecs))
        scaled = (z * xp.sqrt(xp.take(lam, k, axis=0)))[:, None, :]
        x0 = xp.take(mu, k, axis=0) + xp.matmul(scaled, xp.matrix_transpose(xp.take(U, k, axis=0)))[:, 0, :]
        labels = xp.take(xp.asarray(self.labels, device=device), k, axis=0)
        return xp.astype(x0, dtype), labels

    def sample_noisy(self, n: int, alpha_bar_t: float, *, generator: Any = None,
                     backend: str = "numpy", dtype: Any = None, device: Any = None):
        """Exact draws from q(x_t) at ``alpha_bar_t`` (x_0 from :meth:`sample`, then noise)."""
        from refdiff.backends import get_backend
        from refdiff.forward import q_sample

        b = get_backend(backend)
        gen = b.generator(generator, device)
        x0, labels = self.sample(n, generator=gen, backend=backend, dtype=dtype, device=device)
        eps = b.normal(tuple(x0.shape), dtype=x0.dtype, device=device, generator=gen)
        return q_sample(x0, alpha_bar_t, eps), labels


def demo_mixture(num_classes: int = 3, radius: float = 2.0, spread: float = 0.25) -> GaussianMixture:
    """The built-in 2-D mixture: 2·``num_classes`` isotropic components on a circle, the two
    opposite-ish neighbours of each class sharing its label (so a class is itself a mixture)."""
    K = 2 * num_classes
    angles = [2 * math.pi * k / K for k in range(K)]
    means = [[radius * math.cos(a), radius * math.sin(a)] for a in angles]
    labels = [k % num_classes for k in range(K)]
    return GaussianMixture.isotropic([1.0] * K, means, spread**2, labels)
