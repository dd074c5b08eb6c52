"""Opt-in compiled steps and a compiled sampling loop (torch.compile; jax.jit + lax.scan).

Nothing here is a second copy of the math. Each compiled function is ``torch.compile`` (or
``jax.jit``) applied to a short function that calls refdiff's public eager functions
(:func:`refdiff.cfg`, :func:`refdiff.ddim_step`, :func:`refdiff.ddpm_step`,
:func:`refdiff.q_sample`, and :func:`refdiff.fused.guided_ddim_step`); TorchDynamo traces through refdiff's argument checks (metadata only, so they vanish
from the graph) and Inductor fuses the element-wise chain into one kernel.

Opt in explicitly; importing :mod:`refdiff` never imports torch or JAX, and this module
compiles lazily on the first call (no state changes anywhere else)::

    from refdiff import compiled
    x_prev = compiled.guided_ddim_step(x_t, eps_u, eps_c, 7.5, ab_t, ab_prev)   # one step
    x_0 = compiled.sample_ddim(model, x_T, schedule, num_inference_steps=50,
                               guidance=rd.Guidance(cond=c, uncond=u, scale=7.5))

Two ways to compile, and when each pays:

- **Single steps** (:func:`guided_ddim_step` and friends) take ᾱ and s as Python floats.
  TorchDynamo specialises them, so every new (s, ᾱ_t, ᾱ_prev) compiles again (1–3 s on a
  CPU) and after 8 values the function falls back to eager. They pay for a process that
  repeats the same few steps many times.
- **The sampling loop** (:class:`DDIMLoop`, :func:`sample_ddim`) passes ᾱ_t, ᾱ_prev and s as
  0-d float64 tensors on the device of x and the noise as a tensor, so the step compiles
  once per (η, shape, dtype, device) and is reused for every step of every run, whatever
  the schedule, the number of steps or the scale. :attr:`DDIMLoop.compilations` counts the
  graphs compiled; ``tests/test_compiled.py`` checks that it stays at 1. It pays when the
  step's saving times the steps run exceeds the one compilation (docs/speed.md has the
  measured compile times and per-step times).

Precision of the loop: the per-step scalars travel as float64 0-d tensors, so refdiff's
coefficients (√(ᾱ_prev/ᾱ_t), √(1−ᾱ_t), σ, ...) are formed in float64 inside the graph and
cast once to the dtype of x, as the eager functions do with Python floats. float32 scalars
would lose digits where it matters: 1 − ᾱ at ᾱ = 0.9999 (the last step of a linear
schedule) carries a relative error of 3·10⁻⁴ in float32.

References
----------
The math is that of :mod:`refdiff.classifier_free` (CFG, arXiv:2207.12598v1, Eq. 6),
:mod:`refdiff.steps` (DDIM, arXiv:2010.02502v4, Eq. 12; DDPM, arXiv:2006.11239v2, Alg. 2)
and :mod:`refdiff.fused`; the loop follows :func:`refdiff.sample`'s conventions.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, NamedTuple

import refdiff as rd
from refdiff import _xp
from refdiff.backends import get_backend
from refdiff.sampling import Guidance, _checked_run
from refdiff.scale_schedules import ScaleSchedule

__all__ = ["compile_fn", "guided_ddim_step", "ddim_step", "ddpm_step", "cfg", "q_sample",
           "is_available", "DDIMLoop", "RunInfo", "sample_ddim", "default_loop"]


def _torch_backend() -> Any:
    """The torch backend (imports torch), or None when torch is not installed."""
    try:
        return get_backend("torch")
    except ImportError:
        return None


def is_available() -> bool:
    """True when torch is installed and has ``torch.compile``."""
    return _torch_backend() is not None  # every torch refdiff supports (>= 2.2) has it


@contextlib.contextmanager
def _quiet_dynamo() -> Any:
    """TorchDynamo warns that it traces through array-api-compat's lru_cache'd type tests
    instead of using the cache; they are pure functions of a type, so the traced result is
    the cached one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Dynamo detected a call to a "
                                "`functools.lru_cache`", category=UserWarning)
        yield


def _guided_ddim_step(x_t: Any, eps_uncond: Any, eps_cond: Any, scale: Any, alpha_bar_t: Any, alpha_bar_prev: Any, **kw: Any) -> Any:
    """CFG then one DDIM step: the eager :func:`refdiff.cfg` and :func:`refdiff.ddim_step`."""
    return rd.ddim_step(x_t, rd.cfg(eps_uncond, eps_cond, scale), alpha_bar_t, alpha_bar_prev,
                        **kw)


class _Lazy:
    """``torch.compile(fn)`` built on the first call (torch is imported only then)."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.eager, self.__name__ = fn, name
        self._compiled: Callable[..., Any] | None = None
        self.__doc__ = (f"Compiled (torch.compile) version of ``{fn.__module__}.{fn.__name__}``"
                        f"; same arguments and results.\n\n{fn.__doc__ or ''}")

    @property
    def compiled(self) -> Callable[..., Any]:
        if self._compiled is None:
            backend = _torch_backend()
            if backend is None:
                raise RuntimeError("refdiff.compiled needs torch with torch.compile "
                                   "(pip install 'refdiff[torch]')")
            self._compiled = backend.compile(self.eager)
        return self._compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for a in list(args) + list(kwargs.values()):
            if hasattr(a, "shape") and not type(a).__module__.startswith("torch"):
                raise TypeError(f"refdiff.compiled.{self.__name__} takes torch tensors, got "
                                f"{type(a).__module__}.{type(a).__name__}; use the eager "
                                f"refdiff.{self.__name__.split('.')[-1]} for other libraries")
        with _quiet_dynamo():
            return self.compiled(*args, **kwargs)

    def __repr__(self) -> str:
        state = "compiled" if self._compiled is not None else "not yet compiled"
        return f"<refdiff.compiled.{self.__name__} ({state})>"


def compile_fn(fn: Callable[..., Any], name: str | None = None) -> _Lazy:
    """A lazily compiled wrapper of any function built from refdiff calls (torch inputs)."""
    return _Lazy(fn, name or fn.__name__)


guided_ddim_step = compile_fn(_guided_ddim_step, "guided_ddim_step")
"""``guided_ddim_step(x_t, eps_uncond, eps_cond, scale, alpha_bar_t, alpha_bar_prev, **kw)``:
compiled ``ddim_step(x_t, cfg(eps_uncond, eps_cond, scale), alpha_bar_t, alpha_bar_prev, **kw)``."""
ddim_step = compile_fn(rd.ddim_step)
ddpm_step = compile_fn(rd.ddpm_step)
cfg = compile_fn(rd.cfg)
q_sample = compile_fn(rd.q_sample)


# ----- the compiled sampling loop ---------------------------------------------------------

# options of refdiff.sample that the compiled loop does not have, with the default it keeps
_NOT_SUPPORTED = {"sampler": "ddim", "prediction_type": "epsilon", "variance_type": None,
                  "last_step_variance": "floor", "clip_x0": None, "rederive_eps": True,
                  "classifier_order": "shift_then_clip", "progress": False, "callback": None,
                  "return_trajectory": False}
_USE_EAGER = ("the compiled loop runs CFG + DDIM (eta >= 0) with an epsilon model and "
              "returns x_0 only; use refdiff.sample")


class _Step:
    """The traced step. η is an attribute, so TorchDynamo guards it as a constant: a
    Python-float argument (or closure value) becomes a symbolic float, and refdiff checks
    η on the host (``math.isfinite``), which cannot be traced."""

    def __init__(self, fn: Callable[..., Any], eta: float) -> None:
        self.fn, self.eta = fn, eta

    def __call__(self, x: Any, eps_u: Any, eps_c: Any, scale: Any, ab_t: Any, ab_prev: Any,
                 noise: Any = None) -> Any:
        return self.fn(x, eps_u, eps_c, scale, ab_t, ab_prev, eta=self.eta, noise=noise)


class RunInfo(NamedTuple):
    """What one run of :meth:`DDIMLoop.sample` compiled.

    Attributes
    ----------
    steps : int
        Steps run.
    compilations : int
        Graphs compiled during the run (0 when an earlier run compiled the step).
    after_first_step : int
        Of those, the ones compiled after the first step: 0 means no recompilation.
    cuda_graphs : bool
        Whether the step replayed a CUDA graph (Inductor's ``triton.cudagraphs``).
    """

    steps: int
    compilations: int
    after_first_step: int
    cuda_graphs: bool


class DDIMLoop:
    """A CFG + DDIM sampling loop whose step is compiled once and reused for every step.

    The torch loop compiles one function, refdiff's guided DDIM step
    (:func:`refdiff.fused.guided_ddim_step`), with ``torch.compile``. The model stays eager (compile it
    yourself if you want). ᾱ_t, ᾱ_prev and s go in as 0-d float64 tensors on the device of
    x and the noise as a tensor, so nothing the step sees changes from one step, schedule or
    scale to the next: it compiles once per (η, shape, dtype, device; a scale of exactly 0
    or 1, which evaluates one branch and passes its ε twice, is one more graph) and every
    later step and run reuses it. For JAX arrays the whole loop is one ``jax.jit`` of a
    ``jax.lax.scan``; it compiles once per (model, η, number of steps, shape, dtype). This
    class checks the options and runs :func:`refdiff.sample`'s prologue; the library's own
    part is the backend's ``ddim_loop`` (refdiff/backends/torch_backend.py, jax_backend.py),
    so this module imports neither library.

    Parameters
    ----------
    backend : str or callable
        TorchDynamo backend ("inductor", or "aot_eager" to trace without generating code).
    mode : str, optional
        Inductor mode ("default", "reduce-overhead", "max-autotune", ...); inductor only.
    cuda_graphs : {"auto", True, False}
        Replay the step as a CUDA graph (Inductor's ``triton.cudagraphs``, what
        ``mode="reduce-overhead"`` turns on): "auto" does on a CUDA device with the inductor
        backend and never on a CPU; True requires a CUDA input. Not tested in this
        repository's CI (no GPU): the CUDA path is the benchmark's GPU preset.

    Attributes
    ----------
    compilations : int
        Graphs compiled so far by this loop (torch: one per TorchDynamo compilation, counted
        by a wrapper around the backend; JAX: one per trace of the jitted loop).
    last_run : RunInfo or None
        What the latest :meth:`sample` compiled.

    Notes
    -----
    When it pays: the compilation is paid once per process (on this 2-core CPU, 5–15 s for
    the first torch.compile in a process, about 1 s for each later one) and saves the
    difference between the eager and the compiled step on every step; at small shapes the
    compiled call's fixed cost (guards, ~20–40 µs) can eat the saving. docs/speed.md has the
    measurements and the commands that produced them.
    """

    def __init__(self, *, backend: Any = "inductor", mode: str | None = None,
                 cuda_graphs: Any = "auto") -> None:
        if not (callable(backend) or isinstance(backend, str)):
            raise TypeError(f"backend must be a TorchDynamo backend name or callable, got "
                            f"{type(backend).__name__}")
        if mode is not None and backend != "inductor":
            raise ValueError(f"mode applies to backend='inductor' only, got mode={mode!r} with "
                             f"backend={backend!r}")
        if cuda_graphs not in ("auto", True, False):
            raise ValueError(f"cuda_graphs must be 'auto', True or False, got {cuda_graphs!r}")
        self.backend, self.mode, self.cuda_graphs = backend, mode, cuda_graphs
        self.compilations = 0
        self.last_run: RunInfo | None = None
        self._torch_steps: dict[Any, Callable[..., Any]] = {}
        self._jax_loops: dict[Any, Callable[..., Any]] = {}

    def __repr__(self) -> str:
        return (f"DDIMLoop(backend={self.backend!r}, mode={self.mode!r}, cuda_graphs="
                f"{self.cuda_graphs!r}; {self.compilations} compilation(s))")

    # ----- public -------------------------------------------------------------------------

    def sample(self, model: Callable[[Any, Any, Any], Any], x_T: Any, schedule: Any, *,
               num_inference_steps: int | None = None, spacing: str | None = None,
               timesteps: Any = None, guidance: Guidance | None = None, eta: float = 0.0,
               final_alpha_bar: str = "one", generator: Any = None, **options: Any) -> Any:
        """Run CFG + DDIM from x_T to x_0 with the compiled step: :func:`refdiff.sample`
        with ``sampler="ddim"`` and an ε model, same arguments, same conventions.

        See :func:`sample_ddim` (the same call on the shared :func:`default_loop`).
        """
        x_lib = type(x_T).__module__.split(".")[0]
        if x_lib not in ("torch", "jax", "jaxlib"):
            raise TypeError(f"compiled.sample_ddim takes a torch tensor or a JAX array as x_T, "
                            f"got {type(x_T).__module__}.{type(x_T).__name__}; use "
                            "refdiff.sample for other libraries")
        for name, value in options.items():
            if name not in _NOT_SUPPORTED:
                raise TypeError(f"sample_ddim() got an unexpected keyword argument {name!r}")
            if value != _NOT_SUPPORTED[name]:
                raise ValueError(f"{name}={value!r} is not supported: {_USE_EAGER}")
        g = guidance or Guidance()
        if not isinstance(g, Guidance):
            raise TypeError(f"guidance must be a refdiff.Guidance, got {type(g).__name__}")
        for name, value, default in (("rescale", g.rescale, 0.0),
                                     ("classifier_scale", g.classifier_scale, 0.0)):
            if _xp.is_array(value) or value != default:
                raise ValueError(f"Guidance.{name}={value!r} is not supported: {_USE_EAGER}")
        if g.classifier is not None or g.grad_log_prob is not None:
            raise ValueError(f"Guidance.classifier / grad_log_prob are not supported: "
                             f"{_USE_EAGER}")
        extras: dict[str, Any] = {"method": g.method != "cfg", "apg": g.apg is not None,
                                  "guiding_model": g.guiding_model is not None}
        for name, changed in extras.items():
            if changed:
                raise ValueError(f"Guidance.{name}={getattr(g, name)!r} is not supported: "
                                 f"{_USE_EAGER}")
        if isinstance(g.scale, ScaleSchedule):
            raise ValueError(f"a ScaleSchedule as Guidance.scale is not supported: {_USE_EAGER}")
        if _xp.is_array(g.scale):
            raise TypeError(f"Guidance.scale must be a real number for the compiled loop (one "
                            f"s for the batch), got an array of shape {tuple(g.scale.shape)}; "
                            "use refdiff.sample for a per-sample scale")
        run = _checked_run(x_T, schedule, g, sampler="ddim",
                           num_inference_steps=num_inference_steps, spacing=spacing,
                           timesteps=timesteps, prediction_type="epsilon", eta=eta,
                           variance_type=None, last_step_variance="floor", clip_x0=None,
                           rederive_eps=True, classifier_order="shift_then_clip",
                           final_alpha_bar=final_alpha_bar)
        # the library's own part (compilation, no-grad, CUDA graphs, scan, traced draws) is
        # the backend's: refdiff.backends.torch_backend / jax_backend
        return get_backend(x_T).ddim_loop(self, model, x_T, g, run, generator)


_DEFAULT: DDIMLoop | None = None


def default_loop() -> DDIMLoop:
    """The shared :class:`DDIMLoop` (inductor, CUDA graphs on CUDA) of :func:`sample_ddim`."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = DDIMLoop()
    return _DEFAULT


def sample_ddim(model: Callable[[Any, Any, Any], Any], x_T: Any, schedule: Any, *,
                num_inference_steps: int | None = None, spacing: str | None = None,
                timesteps: Any = None, guidance: Guidance | None = None, eta: float = 0.0,
                final_alpha_bar: str = "one", generator: Any = None, **options: Any) -> Any:
    """CFG + DDIM sampling with a compiled step (torch) or a compiled loop (JAX).

    :func:`refdiff.sample` with ``sampler="ddim"`` and an ε model: same arguments, same
    timesteps, same ᾱ after the last step, same noise from the same ``generator``, so the two
    agree to float rounding (``tests/test_compiled.py`` bounds the difference). Runs on
    :func:`default_loop`; make a :class:`DDIMLoop` for another backend or mode.

    Parameters
    ----------
    model : callable
        ``model(x_t, t, c) -> ε`` of the shape of ``x_t``. torch: called eagerly with t a
        Python int, under ``torch.no_grad``. JAX: traced inside ``jax.lax.scan``, so t is a
        traced int32 and ``c`` (``guidance.cond`` / ``uncond``: arrays, pytrees, None or
        numbers, passed to the jitted loop as arguments) is traced too; the model must be
        JAX-traceable and hashable (it is a cache key).
    x_T : torch tensor or JAX array, shape (B, ...)
    schedule, num_inference_steps, spacing, timesteps, eta, final_alpha_bar
        As in :func:`refdiff.sample` (η ≥ 0, checked against every step).
    guidance : Guidance, optional
        ``cond``, ``uncond`` and a real ``scale`` (one s for the batch; 1 and 0 evaluate one
        branch, as :func:`refdiff.sample`).
    generator : int or generator, optional
        torch: a seed or ``torch.Generator`` (the draws are :func:`refdiff.sample`'s).
        JAX: a seed, a JAX key or a :class:`refdiff.backends.jax_backend.KeyStream`; step
        i's noise is ``normal(sub_i)`` with ``k_{i+1}, sub_i = split(k_i)``, the JAX
        backend's stream (not advanced: the loop is functional).

    Returns
    -------
    x_0 : tensor or array, shape, dtype and device of ``x_T``

    Raises
    ------
    TypeError
        For an x_T that is neither a torch tensor nor a JAX array, an array scale, or an
        unknown keyword.
    ValueError
        For an option of :func:`refdiff.sample` the compiled loop does not have, set to
        anything but its default: ``sampler``, ``prediction_type``, ``variance_type``,
        ``last_step_variance``, ``clip_x0``, ``rederive_eps``, ``classifier_order``,
        ``progress``, ``callback``, ``return_trajectory``; and for guidance rescale or
        classifier guidance. Every check of :func:`refdiff.sample` applies too.

    Notes
    -----
    Precision: torch passes ᾱ and s as float64 0-d tensors (the coefficients are formed in
    float64 and cast once, as eagerly). JAX passes ᾱ in JAX's default float: float32
    unless ``jax_enable_x64``; then 1 − ᾱ near ᾱ = 1 carries a relative error up to
    eps₃₂·ᾱ/(1 − ᾱ) (3·10⁻⁴ at ᾱ = 0.9999), which the ε-term's small coefficient
    √(1 − ᾱ) keeps to ~10⁻⁶ absolute in x.

    When compiling pays: see :class:`DDIMLoop` and docs/speed.md.
    """
    return default_loop().sample(model, x_T, schedule, num_inference_steps=num_inference_steps,
                                 spacing=spacing, timesteps=timesteps, guidance=guidance,
                                 eta=eta, final_alpha_bar=final_alpha_bar, generator=generator,
                                 **options)
