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

import inspect
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import array_api_compat

from refdiff import _xp
from refdiff.schedules import host_namespace

# The arguments of every evaluation method, in numpydoc form (filled in by _doc).
_EVAL_PARAMS = """x_t : array, shape (B, d)
    Noisy points, real floating (any array-API library and device).
alpha_bar_t : float or array of shape (B,)
    ᾱ_t in [0, 1] (checked on the host), one level or one per sample."""
_Y_PARAM = """y : int or integer array of shape (B,){optional}
    A class label carried by at least one component (a Python or NumPy
    int), or one per sample (an integral array of the library and device
    of ``x_t``; its values are checked on the host only).{none}"""
_EVAL_RAISES = """TypeError
    If ``x_t`` is not a real floating array, ``alpha_bar_t`` not a float or
    a real floating array, or ``y`` not an int or an integral array (a
    float, a bool, a list).
ValueError
    If ``x_t`` is not (B, d), ``alpha_bar_t`` is outside [0, 1] or of the
    wrong shape, or ``y`` is of the wrong shape or (on the host) not a
    label of a component."""


def _doc(returns: str, y: str = "optional") -> Callable[[Callable], Callable]:
    """Complete an evaluation method's one-line docstring with its numpydoc sections: the
    shared Parameters (``y`` optional or required) and Raises, and its own ``returns``."""
    y_text = _Y_PARAM.format(
        optional=", optional" if y == "optional" else "",
        none="\n    ``None`` (default) for the whole mixture." if y == "optional" else "")
    sections = (("Parameters", _EVAL_PARAMS + "\n" + y_text),
                ("Returns", inspect.cleandoc(returns)), ("Raises", _EVAL_RAISES))

    def fill(method: Callable) -> Callable:
        if method.__doc__:  # None under python -OO
            method.__doc__ = method.__doc__.rstrip() + "".join(
                f"\n\n        {title}\n        {'-' * len(title)}\n        {_indent(text)}"
                for title, text in sections) + "\n        "
        return method
    return fill


def _indent(text: str) -> str:
    return text.replace("\n", "\n        ")


def _got(value: Any) -> str:
    """A short description of an argument for an error message: its type and repr."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def _int_arg(name: str, value: Any, lo: int) -> int:
    """A Python or NumPy int >= ``lo``: TypeError for anything else (a bool, a float), else
    ValueError below ``lo``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_got(value)}")
    if value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _reals(xp: Any, name: str, value: Any) -> Any:
    """``value`` as a host float64 array: TypeError unless it holds real numbers (no bool,
    complex or strings); the conversion itself is ``asarray(value, dtype=float64)``."""
    try:
        kind = xp.asarray(value).dtype.kind
        out = xp.asarray(value, dtype=xp.float64) if kind in "iufO" else None
    except (TypeError, ValueError, RuntimeError):
        out = None
    if out is None:
        raise TypeError(f"{name} must hold real numbers (an array or nested lists of floats), "
                        f"got {_got(value)}")
    return out


def _means(xp: Any, means: Any) -> Any:
    means = _reals(xp, "means", means)
    if means.ndim != 2 or 0 in means.shape:
        raise ValueError(f"means must be (K, d) with K, d >= 1, got shape {tuple(means.shape)}")
    if not bool(xp.all(xp.isfinite(means))):
        raise ValueError("means must be finite")
    return means


def _require_finite(xp: Any, name: str, a: Any) -> None:
    if not bool(xp.all(xp.isfinite(a))):
        raise ValueError(f"{name} must be finite, got values that are NaN or infinite")


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

    Notes
    -----
    Precision. The evaluations run in the dtype of ``x_t`` (the parameters are cast to it),
    except for dtypes narrower than 32 bits (float16, bfloat16): those are evaluated in float32
    and the results rounded to the dtype of ``x_t``, since the squared distances
    ‖x_t − √ᾱ μ_k‖²/c overflow float16 already for ‖x_t‖ of a few hundred. So a float16
    result whose exact value fits float16 is finite. The limit that remains is that of the
    dtype computed in: the squared distance (over c = ᾱλ + 1 − ᾱ, the variance along an
    axis) must fit it, below about 3e38 in float32 (‖x_t‖ up to ~1e19 for unit variances)
    and 1.8e308 in float64; beyond, the results are NaN. Log-densities below the range of
    the output dtype (``log_prob``, ``log_prob_class`` far from the data in float16) round
    to −inf, the log of a probability that underflows.

    Values of ``x_t`` are never read (a NaN in ``x_t`` gives NaN in that row); values of
    ``alpha_bar_t`` and ``y`` are checked when they live on the host, and skipped on an
    accelerator (as everywhere in refdiff: reading them back would stall the stream).
    """

    weights: Any
    means: Any
    eigvals: Any
    eigvecs: Any
    labels: Any

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def full(cls, weights: Any, means: Any, covariances: Any, labels: Any = None) -> "GaussianMixture":
        """From full covariances Σ_k, shape (K, d, d), symmetric positive definite.

        Parameters
        ----------
        weights : array-like, shape (K,)
            Finite positive mixture weights, normalised to sum to 1 (any scale up to the
            float64 maximum: they are divided by their largest first when their sum
            overflows; a ratio smallest/largest that underflows to 0 is refused).
        means : array-like, shape (K, d)
            Finite component means, K, d >= 1.
        covariances : array-like, shape (K, d, d)
            Finite, exactly symmetric, positive definite.
        labels : array-like of int, shape (K,), optional
            Non-negative class labels y_k (default: 0 … K − 1); several components may
            share one.

        Returns
        -------
        GaussianMixture

        Raises
        ------
        TypeError
            If an argument does not hold real numbers (strings, complex, bool), or the labels
            are not integers.
        ValueError
            For a wrong shape, a non-finite value, an asymmetric or not positive definite
            covariance, a weight that is not positive, or a negative label (the message
            names the argument).
        """
        xp = host_namespace()
        means = _means(xp, means)
        cov = _reals(xp, "covariances", covariances)
        if cov.shape != (means.shape[0], means.shape[1], means.shape[1]):
            raise ValueError(f"means must be (K, d) and covariances (K, d, d), got "
                             f"{tuple(means.shape)} and {tuple(cov.shape)}")
        _require_finite(xp, "covariances", cov)
        if not bool(xp.all(cov == xp.matrix_transpose(cov))):
            raise ValueError("covariances must be symmetric")
        lam, U = xp.linalg.eigh(cov)
        return cls._checked(xp, weights, means, lam, U, labels)

    @classmethod
    def diagonal(cls, weights: Any, means: Any, variances: Any, labels: Any = None) -> "GaussianMixture":
        """From per-axis variances, shape (K, d).

        Parameters
        ----------
        weights, means, labels
            As for :meth:`full`.
        variances : array-like, shape (K, d)
            Finite positive variances: Σ_k = diag(variances[k]).

        Returns
        -------
        GaussianMixture

        Raises
        ------
        TypeError, ValueError
            As for :meth:`full` (``variances`` in place of ``covariances``).
        """
        xp = host_namespace()
        means = _means(xp, means)
        lam = _reals(xp, "variances", variances)
        if lam.shape != means.shape:
            raise ValueError(f"means and variances must both be (K, d), got {tuple(means.shape)} "
                             f"and {tuple(lam.shape)}")
        _require_finite(xp, "variances", lam)
        K, d = means.shape
        U = xp.broadcast_to(xp.eye(d, dtype=xp.float64), (K, d, d))
        return cls._checked(xp, weights, means, lam, xp.asarray(U, copy=True), labels)

    @classmethod
    def isotropic(cls, weights: Any, means: Any, variances: Any, labels: Any = None) -> "GaussianMixture":
        """From one variance per component (a float or shape (K,)): Σ_k = σ_k² I.

        Parameters
        ----------
        weights, means, labels
            As for :meth:`full`.
        variances : float or array-like of shape (K,)
            Finite positive σ_k², one for all components or one each.

        Returns
        -------
        GaussianMixture
            The mixture of :meth:`diagonal` with every variance of component k equal to σ_k².

        Raises
        ------
        TypeError
            As for :meth:`diagonal`.
        ValueError
            As for :meth:`diagonal`, and for ``variances`` of a shape other than () or (K,).
        """
        xp = host_namespace()
        means = _means(xp, means)
        var = _reals(xp, "variances", variances)
        if var.ndim > 1 or (var.ndim == 1 and var.shape[0] != means.shape[0]):
            raise ValueError(f"variances must be a float or of shape (K,) = "
                             f"({means.shape[0]},), got shape {tuple(var.shape)}")
        var = xp.broadcast_to(xp.reshape(var, (-1, 1)) if var.ndim else var, means.shape)
        return cls.diagonal(weights, means, xp.asarray(var, copy=True), labels)

    @classmethod
    def _checked(cls, xp: Any, weights: Any, means: Any, lam: Any, U: Any, labels: Any) -> "GaussianMixture":
        K = means.shape[0]
        w = _reals(xp, "weights", weights)
        if w.shape != (K,) or not bool(xp.all(xp.isfinite(w) & (w > 0))):
            raise ValueError(f"weights must be {K} finite positive numbers, got {w}")
        if not bool(xp.all(xp.isfinite(lam) & (lam > 0))):
            raise ValueError("covariances must be positive definite (every eigenvalue > 0)")
        y = xp.arange(K) if labels is None else xp.asarray(labels)
        if not xp.isdtype(y.dtype, "integral"):
            raise TypeError(f"labels must be {K} non-negative ints, got {labels!r} "
                            f"(dtype {y.dtype})")
        if y.shape != (K,) or bool(xp.any(y < 0)):
            raise ValueError(f"labels must be {K} non-negative ints, got {labels!r}")
        with warnings.catch_warnings():  # an overflow of the sum is handled just below
            warnings.simplefilter("ignore", RuntimeWarning)
            total = xp.sum(w)
        if not math.isfinite(float(total)):  # huge weights: scale by the largest first
            w = w / xp.max(w)
            total = xp.sum(w)
        pi = w / total
        if not bool(xp.all(pi > 0)):
            raise ValueError(f"weights must be positive after normalisation: the ratio of the "
                             f"smallest to the largest underflows float64, got {w}")
        return cls(pi, means, lam, U, xp.astype(y, xp.int64))

    @property
    def dim(self) -> int:
        """d, the data dimension."""
        return int(self.means.shape[1])

    @property
    def num_classes(self) -> int:
        """1 + the largest label."""
        return int(max(int(v) for v in self.labels)) + 1

    # ----- evaluation: a checked prologue, then the closed forms ----------------------------
    def _inputs(self, x_t: Any, alpha_bar_t: Any) -> Any:
        """Namespace, the array to compute with (x_t, or x_t in float32 when x_t is narrower)
        and ᾱ cast to its dtype (a float or (B, 1, 1)), checked."""
        if not _xp.is_array(x_t):
            raise TypeError(f"x_t must be an array of shape (B, {self.dim}) (NumPy, torch or "
                            f"any array-API library), got {_got(x_t)}")
        xp = _xp.namespace(x_t=x_t)
        _xp.check_floating(xp, "x_t", x_t)
        if x_t.ndim != 2 or x_t.shape[1] != self.dim:
            raise ValueError(f"x_t must have shape (B, {self.dim}), got {tuple(x_t.shape)}")
        ab = _xp.level(xp, "alpha_bar_t", alpha_bar_t, x_t)
        x = xp.astype(x_t, xp.float32) if xp.finfo(x_t.dtype).bits < 32 else x_t
        (ab,) = _xp.cast(xp, x, ab)
        return xp, x, ab

    @staticmethod
    def _back(xp: Any, x_t: Any, *results: Any) -> Any:
        """The results in the dtype of ``x_t`` (a no-op unless x_t is narrower than float32)."""
        out = tuple(r if r.dtype == x_t.dtype else xp.astype(r, x_t.dtype) for r in results)
        return out if len(out) > 1 else out[0]

    def _params(self, xp: Any, x: Any) -> Any:
        """The parameters in the namespace, device and dtype of ``x``."""
        dev = array_api_compat.device(x)
        return [xp.asarray(p, dtype=x.dtype, device=dev) for p in
                (self.weights, self.means, self.eigvals, self.eigvecs)]

    def _components(self, xp: Any, x_t: Any, ab: Any, mask: Any) -> Any:
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

    def _label_error(self, got: str) -> ValueError:
        present = sorted({int(v) for v in self.labels})
        return ValueError(f"y must be a label carried by a component of the mixture "
                          f"({', '.join(map(str, present))}), got {got}")

    def _label(self, y: Any) -> int:
        """A single label ``y`` (Python or NumPy int) carried by some component, as an int."""
        if isinstance(y, bool) or not isinstance(y, numbers.Integral):
            raise TypeError(f"y must be None, an int label or an integer array of shape (B,), "
                            f"got {_got(y)}")
        y = int(y)
        if not 0 <= y < self.num_classes:
            raise ValueError(f"y must be a label in 0..{self.num_classes - 1}, got {y!r}")
        if y not in {int(v) for v in self.labels}:
            raise self._label_error(repr(y))
        return y

    def _mask(self, xp: Any, x_t: Any, y: Any) -> Any:
        """None for ``y=None``, else (B, K) or (1, K) boolean: component k carries label y[b]."""
        if y is None:
            return None
        labels = xp.asarray(self.labels, device=array_api_compat.device(x_t))
        if not _xp.is_array(y) or isinstance(y, numbers.Integral):  # an int, or a NumPy int
            return labels[None, :] == self._label(y)
        _xp.namespace(x_t=x_t, y=y)
        if not xp.isdtype(y.dtype, "integral"):
            raise TypeError(f"y must have an integer dtype (class labels), got {y.dtype}")
        if y.shape != (x_t.shape[0],):
            raise ValueError(f"y must be an int or shape ({x_t.shape[0]},), got {tuple(y.shape)}")
        mask = labels[None, :] == xp.astype(y, xp.int64)[:, None]
        if _xp.readable(y) and not bool(xp.all(xp.any(mask, axis=1))):
            raise self._label_error("values outside them")
        return mask

    @staticmethod
    def _softmax(xp: Any, log_joint: Any) -> Any:
        m = xp.max(log_joint, axis=1, keepdims=True)
        e = xp.exp(log_joint - m)
        total = xp.sum(e, axis=1, keepdims=True)
        return e / total, m[:, 0] + xp.log(total[:, 0])  # responsibilities, logsumexp

    def _score(self, xp: Any, x_t: Any, ab: Any, mask: Any) -> Any:
        lj, score, _ = self._components(xp, x_t, ab, mask)
        r, _ = self._softmax(xp, lj)
        return xp.sum(r[:, :, None] * score, axis=1)                          # Σ_k r_k·score_k

    @_doc("""
        score : array, shape (B, d)
            In the namespace, device and dtype of ``x_t``.""")
    def score(self, x_t: Any, alpha_bar_t: Any, y: Any = None) -> Any:
        """∇ log p(x_t) (``y=None``) or ∇ log p(x_t | y), shape (B, d)."""
        xp, x, ab = self._inputs(x_t, alpha_bar_t)
        return self._back(xp, x_t, self._score(xp, x, ab, self._mask(xp, x, y)))

    @_doc("""
        x0 : array, shape (B, d)
            E[x_0 | x_t (, y)], finite at ᾱ = 0 (the mean of the mixture or of the class).
        eps : array, shape (B, d)
            E[ε | x_t (, y)] = −√(1−ᾱ)·score. Both in the namespace, device and dtype of
            ``x_t``.""")
    def x0_eps(self, x_t: Any, alpha_bar_t: Any, y: Any = None) -> Any:
        """Exact (x̂_0, ε̂) = (E[x_0 | x_t], E[ε | x_t]) of the marginal or of class y."""
        xp, x, ab = self._inputs(x_t, alpha_bar_t)
        lj, score, post = self._components(xp, x, ab, self._mask(xp, x, y))
        r, _ = self._softmax(xp, lj)
        score = xp.sum(r[:, :, None] * score, axis=1)
        x0 = xp.sum(r[:, :, None] * post, axis=1)
        eps = -_xp.sqrt(xp, 1.0 - ab) * score                                # ε = −√(1−ᾱ)·score
        return self._back(xp, x_t, x0, eps)

    @_doc("""
        eps : array, shape (B, d)
            The second output of :meth:`x0_eps`.""")
    def eps(self, x_t: Any, alpha_bar_t: Any, y: Any = None) -> Any:
        """Exact ε̂ = −√(1−ᾱ)·∇ log p(x_t [| y]), shape (B, d)."""
        return self.x0_eps(x_t, alpha_bar_t, y)[1]

    @_doc("""
        log_prob : array, shape (B,)
            In the dtype of ``x_t`` (−inf where the value is below its range).""")
    def log_prob(self, x_t: Any, alpha_bar_t: Any, y: Any = None) -> Any:
        """log p(x_t) or log p(x_t, y) (joint with the class), shape (B,)."""
        xp, x, ab = self._inputs(x_t, alpha_bar_t)
        lj, _, _ = self._components(xp, x, ab, self._mask(xp, x, y))
        return self._back(xp, x_t, self._softmax(xp, lj)[1])

    @_doc("""
        log_prob_class : array, shape (B,)
            At most 0; in the dtype of ``x_t`` (−inf where the value is below its range).""",
          y="required")
    def log_prob_class(self, x_t: Any, alpha_bar_t: Any, y: Any) -> Any:
        """The exact noisy classifier log p(y | x_t), shape (B,)."""
        xp, x, ab = self._inputs(x_t, alpha_bar_t)
        mask = self._mask(xp, x, y)
        lj, _, _ = self._components(xp, x, ab, None)
        masked = xp.where(mask, lj, -math.inf)
        return self._back(xp, x_t, self._softmax(xp, masked)[1] - self._softmax(xp, lj)[1])

    @_doc("""
        grad : array, shape (B, d)
            In the namespace, device and dtype of ``x_t``.""", y="required")
    def grad_log_prob_class(self, x_t: Any, alpha_bar_t: Any, y: Any) -> Any:
        """∇_{x_t} log p(y | x_t) = ∇ log p(x_t | y) − ∇ log p(x_t), shape (B, d)."""
        xp, x, ab = self._inputs(x_t, alpha_bar_t)
        mask = self._mask(xp, x, y)
        return self._back(xp, x_t, self._score(xp, x, ab, mask) - self._score(xp, x, ab, None))

    # ----- exact samplers -----------------------------------------------------------------
    def sample(self, n: int, *, generator: Any = None, backend: str = "numpy", dtype: Any = None,
               device: Any = None, y: int | None = None) -> Any:
        """Exact draws from the data distribution (or from class ``y``).

        Parameters
        ----------
        n : int
            The number of draws, >= 0 (a Python or NumPy int). ``n = 0`` is allowed and gives
            empty arrays of shapes (0, d) and (0,), so that a caller splitting a sample by
            class needs no special case for an empty class.
        generator : None, int or generator, optional
            A non-negative int seed, a generator of the backend's library, or ``None`` (see
            :meth:`refdiff.backends.Backend.generator`). A seed gives the same draws on every
            call.
        backend : str, optional
            The name of the backend whose arrays are returned ("numpy", "torch",
            "array_api_strict", or a registered name).
        dtype : real floating dtype of the backend, optional
            The dtype of ``x0`` (default float64).
        device : optional
            A device of the backend.
        y : int, optional
            Draw from class ``y`` only (a label carried by some component).

        Returns
        -------
        x0 : array, shape (n, d), in the backend's namespace
        labels : int64 array, shape (n,)

        Raises
        ------
        TypeError
            If ``n`` or ``y`` is not an int (a float, a bool), ``backend`` not a string,
            ``dtype`` not a real floating dtype of the backend, or ``generator`` of a type
            the backend refuses.
        ValueError
            If ``n`` is negative, ``y`` not a label of a component, ``backend`` unknown, or
            the seed or device refused by the backend.
        """
        n = _int_arg("n", n, 0)
        b = _backend(backend)
        y = None if y is None else self._label(y)
        xp = b.xp
        if dtype is None:
            dtype = xp.float64
        elif hasattr(b, "_dtype"):  # a refdiff Backend: refuse an integer or foreign dtype
            dtype = b._dtype(dtype)
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
                     backend: str = "numpy", dtype: Any = None, device: Any = None) -> Any:
        """Exact draws from q(x_t) at ``alpha_bar_t`` (x_0 from :meth:`sample`, then noise).

        Parameters
        ----------
        n : int
            The number of draws, >= 0 (``n = 0`` gives empty arrays, as for :meth:`sample`).
        alpha_bar_t : float
            ᾱ_t in [0, 1] (or a (n,) array, as :func:`refdiff.q_sample` takes).
        generator, backend, dtype, device
            As for :meth:`sample`; one generator draws x_0 and then the noise.

        Returns
        -------
        x_t : array, shape (n, d)
            √ᾱ·x_0 + √(1−ᾱ)·ε, in ``dtype``.
        labels : int64 array, shape (n,)
            The labels of the components x_0 was drawn from.

        Raises
        ------
        TypeError, ValueError
            As for :meth:`sample`; and for an ``alpha_bar_t`` that is not a float in [0, 1]
            (checked before anything is drawn when it is a Python number).
        """
        from refdiff.forward import q_sample

        n = _int_arg("n", n, 0)
        if not _xp.is_array(alpha_bar_t):
            _xp.number("alpha_bar_t", alpha_bar_t, lo=0.0, hi=1.0, kind="a float or an array")
        b = _backend(backend)
        gen = b.generator(generator, device)
        x0, labels = self.sample(n, generator=gen, backend=backend, dtype=dtype, device=device)
        eps = b.normal(tuple(x0.shape), dtype=x0.dtype, device=device, generator=gen)
        return q_sample(x0, alpha_bar_t, eps), labels


def _backend(backend: Any) -> Any:
    """The backend named ``backend``: TypeError for a non-string, ValueError for an unknown name."""
    from refdiff.backends import available_backends, get_backend

    if not isinstance(backend, str):
        raise TypeError(f"backend must be a backend name ({', '.join(available_backends())}), "
                        f"got {_got(backend)}")
    return get_backend(backend)


def demo_mixture(num_classes: int = 3, radius: float = 2.0, spread: float = 0.25) -> GaussianMixture:
    """The built-in 2-D mixture: 2·``num_classes`` isotropic components on a circle, the two
    opposite-ish neighbours of each class sharing its label (so a class is itself a mixture).

    Parameters
    ----------
    num_classes : int, optional
        The number of classes, >= 1 (a Python or NumPy int).
    radius : float, optional
        The radius of the circle of means, finite and >= 0 (a negative radius would only
        rotate the circle by π: refused rather than reinterpreted).
    spread : float, optional
        The standard deviation of every component, > 0 with a finite, non-zero square (the
        variance is ``spread**2``, so a negative spread would silently mean the same mixture
        as its absolute value: refused).

    Returns
    -------
    GaussianMixture
        2·``num_classes`` equal-weight components; component k carries label
        k mod ``num_classes``.

    Raises
    ------
    TypeError
        If ``num_classes`` is not an int, or ``radius`` or ``spread`` not a float.
    ValueError
        If ``num_classes`` < 1, ``radius`` is negative or not finite, or ``spread`` is not
        positive, not finite, or has a square that overflows or underflows.
    """
    num_classes = _int_arg("num_classes", num_classes, 1)
    radius = _xp.number("radius", radius, lo=0.0)
    spread = _xp.number("spread", spread, lo=0.0, lo_open=True)
    try:
        variance = spread**2
    except OverflowError:
        variance = math.inf
    if not 0.0 < variance < math.inf:
        raise ValueError(f"spread must have a finite, non-zero square (the variance), got "
                         f"{spread!r}")
    K = 2 * num_classes
    angles = [2 * math.pi * k / K for k in range(K)]
    means = [[radius * math.cos(a), radius * math.sin(a)] for a in angles]
    labels = [k % num_classes for k in range(K)]
    return GaussianMixture.isotropic([1.0] * K, means, variance, labels)
