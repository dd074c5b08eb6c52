"""Adapters that run diffusers' σ-space and flow schedulers through the solver checks.

:class:`DiffusersSolver` takes one of :data:`NAMES` and a configuration, checks the
configuration against the scheduler's ``__init__`` (an unknown key, a value of the wrong type,
or one refdiff cannot map raises ``ValueError`` naming the key), and exposes the adapter
signatures of :mod:`refdiff.testing.solver_checks`:

- ``euler_step(x, denoised, sigma, sigma_next)`` (Euler), ``euler_ancestral_step(..., *, eta,
  noise)`` (Euler-ancestral: diffusers' ``randn_tensor`` in its module is replaced, for the
  call, by one that returns ``noise``), ``heun_step(denoiser, x, sigma, sigma_next)`` (Heun:
  the predictor and corrector calls of ``step``; one call, Euler, when σ' = 0),
  ``flow_euler_step(x, velocity, t, t_next)`` (FlowMatch), ``dpmpp_2m(denoiser, x, sigmas)``
  (DPM-Solver++: a whole run, ``set_timesteps(len(sigmas) − 1)`` so that its
  ``lower_order_final`` rule sees the run's length; x is on the VE path and diffusers' sample
  on the VP path, x_VP = x/√(1 + σ²), converted around every step in float64 and given to
  ``step`` in float64: diffusers forms x̂_0 = (x_VP − σ_VP·ε)/α before it rounds the sample
  to float32, and a float32 x_VP would be the conversion's rounding amplified by 1/α = √(1 +
  σ²); x is cast back to its dtype after each step);
- ``karras(n, sigma_min, sigma_max)`` (Euler with ``use_karras_sigmas``, its ``sigma_min`` /
  ``sigma_max``) and ``flow_times(n, shift)`` (FlowMatch with ``shift``): ``set_timesteps(n)``
  then ``.sigmas``; ``sigma_list(n)``: the configured list (for
  :func:`~refdiff.testing.diffusers_sigma_lists.check_configured_sigmas`).

The model output each step gets is D converted to the configured ``prediction_type``:
ε = (x − D)/σ, "sample" D, "v_prediction" α·(ε − σ·D) with α = 1/√(1 + σ²) (diffusers'
VP v), computed and given in float64: an ε rounded to float32 carries D only to
σ·u·|ε| (at σ = 80, 1e-4 relative), an error of the conversion, not of diffusers'
arithmetic. diffusers returns its result in the model output's dtype; the adapters cast it
to x's dtype, as it is for a model of that dtype.

Precision. Each step call sets its levels by ``set_timesteps`` and then overwrites
``.sigmas`` with a float64 tensor of the example's levels, with ``_step_index = 0`` (so the
timestep argument is ignored) and the per-scheduler state reset (Heun's ``dt`` /
``prev_derivative``, DPM's ``model_outputs`` / ``lower_order_nums``). Euler,
Euler-ancestral, DPM-Solver++ and FlowMatch round the sample to float32 inside ``step``,
so their checks run with ``Target("torch", "float32")`` (float32 inputs); Heun does not,
and runs with ``Target("torch", "float64")``.

:func:`run_solver_checks` runs the checks that apply (:meth:`DiffusersSolver.checks`) with the
options the configuration implies (:meth:`DiffusersSolver.conventions`); each failure gets a
``classification``: ``"finding: ..."`` when replaying the counterexample under one of
diffusers' known conventions accounts for it, else the MATH string of
:mod:`refdiff.testing.diffusers_adapters`.

References
----------
diffusers (checked against 0.42.1), ``schedulers/scheduling_euler_discrete.py``,
``scheduling_euler_ancestral_discrete.py``, ``scheduling_heun_discrete.py``,
``scheduling_dpmsolver_multistep.py``, ``scheduling_flow_match_euler_discrete.py``. EDM
arXiv:2206.00364v2 (Alg. 1, Eq. 5); DPM-Solver++ arXiv:2211.01095v2 (Alg. 2); SD3
arXiv:2403.03206v1 (Eq. 23).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any

import refdiff as rd
from refdiff.testing.checks import Target
from refdiff.testing.diffusers_adapters import _typed

STEP_CHECK = {"EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler_ancestral",
              "HeunDiscreteScheduler": "heun", "DPMSolverMultistepScheduler": "dpmpp_2m",
              "FlowMatchEulerDiscreteScheduler": "flow_euler"}
NAMES = tuple(STEP_CHECK)
_MODULE = {"EulerDiscreteScheduler": "scheduling_euler_discrete",
           "EulerAncestralDiscreteScheduler": "scheduling_euler_ancestral_discrete"}
_PREDICTIONS = {"EulerDiscreteScheduler": ("epsilon", "v_prediction", "sample"),
                "EulerAncestralDiscreteScheduler": ("epsilon", "v_prediction"),
                "HeunDiscreteScheduler": ("epsilon", "v_prediction", "sample"),
                "DPMSolverMultistepScheduler": ("epsilon", "v_prediction", "sample")}
# values the adapters can map (any other value of these keys is refused)
_ONLY = {"trained_betas": (None,), "rescale_betas_zero_snr": (False,), "interpolation_type": ("linear",),
         "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,), "clip_sample": (False,),
         "solver_order": (2,), "thresholding": (False,), "algorithm_type": ("dpmsolver++",),
         "solver_type": ("midpoint",), "use_lu_lambdas": (False,), "use_flow_sigmas": (False,),
         "lambda_min_clipped": (-math.inf,), "variance_type": (None,), "invert_sigmas": (False,),
         "shift_terminal": (None,), "stochastic_sampling": (False,),
         "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
         "timestep_spacing": ("linspace", "leading", "trailing"),
         "final_sigmas_type": rd.FINAL_LEVELS, "time_shift_type": ("exponential", "linear"),
         "timestep_type": ("discrete", "continuous")}
_POSITIVE = ("sigma_min", "sigma_max", "shift", "beta_start", "beta_end")


def _checked(cls: type, config: dict) -> dict:
    """``config`` typed and mappable; ValueError naming the key."""
    params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
              if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}
    out = {}
    for key, value in config.items():
        if key not in params:
            raise ValueError(f"{key}: not a {cls.__name__} configuration key; choose from "
                             f"{', '.join(params)}")
        if key in ("sigma_min", "sigma_max") and value is not None:
            value = _typed(key, value, 1.0)
        elif key != "lambda_min_clipped":
            value = _typed(key, value, params[key])
        if key in _ONLY and value not in _ONLY[key]:
            raise ValueError(f"{key}={value!r}: not mapped onto refdiff; choose from "
                             f"{', '.join(map(repr, _ONLY[key]))}")
        if key == "prediction_type" and value not in _PREDICTIONS[cls.__name__]:
            raise ValueError(f"{key}={value!r}: not mapped onto refdiff for {cls.__name__}; "
                             f"choose from {', '.join(_PREDICTIONS[cls.__name__])}")
        if key in _POSITIVE and value is not None and not value > 0:
            raise ValueError(f"{key}={value!r}: must be > 0")
        if key in ("num_train_timesteps", "steps_offset") and value < (2 if key[0] == "n" else 0):
            raise ValueError(f"{key}={value!r}: out of range")
        out[key] = value
    return out


class DiffusersSolver:
    """A diffusers σ-space or flow scheduler plus a configuration, seen through the
    solver checks' adapter signatures (module docstring).

    Parameters
    ----------
    name : one of :data:`NAMES`
    mu : float, optional
        FlowMatch with ``use_dynamic_shifting=True``: the μ given to ``set_timesteps`` (FLUX's
        :func:`refdiff.dynamic_shift`); required there, refused elsewhere.
    **config
        Scheduler configuration (``use_karras_sigmas=True``, ``shift=3.0``, ...).

    Raises
    ------
    ValueError
        For another name, or a configuration key or value the adapters cannot map (the
        message starts with the key).
    """

    def __init__(self, name: str = "EulerDiscreteScheduler", *, mu: float | None = None,
                 **config: Any):
        import diffusers

        if name not in NAMES:
            raise ValueError(f"name must be one of {', '.join(NAMES)}; got {name!r}")
        self.name, self.cls = name, getattr(diffusers, name)
        self.config = dict(self.cls(**_checked(self.cls, config)).config)
        dynamic = self.config.get("use_dynamic_shifting", False)
        if dynamic and not self.is_flow:
            raise ValueError("use_dynamic_shifting=True: not mapped onto refdiff for "
                             f"{name} (flow sigmas only)")
        if dynamic and mu is None:
            raise ValueError("mu: required with use_dynamic_shifting=True (set_timesteps(n, mu=mu))")
        if mu is not None and not dynamic:
            raise ValueError(f"mu={mu!r}: applies with use_dynamic_shifting=True only")
        self.mu = None if mu is None else _typed("mu", mu, 1.0)
        if dynamic and self.config["time_shift_type"] == "linear" and not self.mu > 0:
            raise ValueError(f"mu={mu!r}: must be > 0 with time_shift_type='linear'")
        if self.config.get("use_karras_sigmas") and self.is_flow:
            raise ValueError("use_karras_sigmas=True: not mapped onto refdiff for flow times")

    def __repr__(self) -> str:
        mu = [f"mu={self.mu!r}"] * (self.mu is not None)
        return f"diffusers.{self.name}({', '.join([*(f'{k}={v!r}' for k, v in self.changed().items()), *mu])})"

    def changed(self) -> dict:
        """The configuration keys that differ from the scheduler's defaults."""
        default = self.cls().config
        return {k: v for k, v in self.config.items() if not k.startswith("_") and default.get(k) != v}

    def source(self, method: str = "") -> str:
        """Python source that builds this adapter (and names ``method``)."""
        args = [repr(self.name)] + [f"{k}={v!r}" for k, v in self.changed().items()]
        args += [f"mu={self.mu!r}"] * (self.mu is not None)
        return f"DiffusersSolver({', '.join(args)})" + (f".{method}" if method else "")

    @property
    def is_flow(self) -> bool:
        return self.name == "FlowMatchEulerDiscreteScheduler"

    @property
    def target(self) -> Target:
        """torch float64 for Heun, float32 for the others (module docstring)."""
        return Target("torch", "float64" if self.name == "HeunDiscreteScheduler" else "float32")

    def schedule(self) -> rd.Schedule:
        """refdiff's float64 table of the configured β schedule (VP schedulers)."""
        c = self.config
        if c["beta_schedule"] == "linear":
            return rd.linear_schedule(c["num_train_timesteps"], c["beta_start"], c["beta_end"])
        if c["beta_schedule"] == "scaled_linear":
            return rd.scaled_linear_schedule(c["num_train_timesteps"], c["beta_start"], c["beta_end"])
        return rd.cosine_schedule(c["num_train_timesteps"])

    # ----- what applies --------------------------------------------------------------------

    def checks(self) -> tuple[str, ...]:
        """Names of the checks that apply: the step check, "timesteps" (the configured list,
        :func:`~refdiff.testing.diffusers_sigma_lists.check_configured_sigmas`), "karras"
        (Euler with ``use_karras_sigmas``) and "flow_times" (FlowMatch, fixed shift)."""
        out = [STEP_CHECK[self.name], "timesteps"]
        if self.name == "EulerDiscreteScheduler" and self.config["use_karras_sigmas"]:
            out.append("karras")
        if self.is_flow and not self.config["use_dynamic_shifting"]:
            out.append("flow_times")
        return tuple(out)

    def conventions(self, check: str) -> dict:
        """The check options the configuration implies."""
        c = self.config
        if check == "euler_ancestral":
            return {"eta": 1.0}                                   # diffusers has no η
        if check == "dpmpp_2m":                                   # the last step first order
            return {"lower_order_final": bool(c["lower_order_final"] or c["euler_at_final"]
                                              or c["final_sigmas_type"] == "zero")}
        if check == "karras":
            return {"rho": 7.0, "final": c["final_sigmas_type"]}
        if check == "flow_times":
            return {"shift": c["shift"], "t_min": 1.0 / c["num_train_timesteps"], "final": "zero"}
        return {}

    def adapter(self, check: str):
        """The bound method with ``check``'s adapter signature."""
        return {"euler": self.euler_step, "euler_ancestral": self.euler_ancestral_step,
                "heun": self.heun_step, "flow_euler": self.flow_euler_step,
                "dpmpp_2m": self.dpmpp_2m, "karras": self.karras,
                "flow_times": self.flow_times}[check]

    # ----- diffusers, prepared -------------------------------------------------------------

    def _set(self, n: int, **overrides):
        """A scheduler of the configuration (plus ``overrides``) after ``set_timesteps(n)``;
        the one without overrides is made once (Heun's and Karras' ``__init__`` are slow)."""
        if overrides:
            s = self.cls(**{**self._init_config(), **overrides})
        else:
            s = self.__dict__.get("_scheduler") or self.cls(**self._init_config())
            self._scheduler = s
        if self.is_flow and s.config.use_dynamic_shifting:
            s.set_timesteps(n, mu=self.mu)
        else:
            s.set_timesteps(n)
        return s

    def _init_config(self) -> dict:
        return {k: v for k, v in self.config.items() if not k.startswith("_")}

    def _prepared(self, levels: list[float], n: int | None = None):
        """A scheduler whose ``.sigmas`` are ``levels`` (float64), at step 0."""
        import torch

        s = self._set(n or len(levels) - 1)
        s.sigmas = torch.tensor([float(v) for v in levels], dtype=torch.float64)
        s._step_index, s._begin_index = 0, 0
        s.is_scale_input_called = True
        return s

    def _output(self, x, denoised, sigma: float):
        """D as the configured prediction type, in float64 (module docstring)."""
        x64, d64, kind = x.double(), denoised.double(), self.config["prediction_type"]
        if kind == "sample":
            out = d64
        else:
            eps = (x64 - d64) / sigma
            out = eps if kind == "epsilon" else (eps - sigma * d64) / math.sqrt(1.0 + sigma * sigma)
        return out

    # ----- step adapters -------------------------------------------------------------------

    def euler_step(self, x, denoised, sigma, sigma_next):
        """Euler (γ = 0: ``s_churn`` at its default)."""
        s = self._prepared([sigma, sigma_next])
        return s.step(self._output(x, denoised, sigma), s.timesteps[0], x).prev_sample.to(x.dtype)

    def euler_ancestral_step(self, x, denoised, sigma, sigma_next, *, eta=1.0, noise=None):
        """Euler-ancestral; diffusers' η is 1 (another η is a ValueError)."""
        if eta != 1.0:
            raise ValueError(f"eta={eta!r}: diffusers' EulerAncestralDiscreteScheduler has eta = 1 only")
        s = self._prepared([sigma, sigma_next])
        with _fixed_noise(self.name, noise if noise is not None else 0 * x):
            return s.step(self._output(x, denoised, sigma), s.timesteps[0], x).prev_sample.to(x.dtype)

    def heun_step(self, denoiser, x, sigma, sigma_next):
        """Heun: predictor then corrector (Euler alone to σ' = 0, as diffusers' last step)."""
        if sigma_next == 0:
            s = self._prepared([sigma, 0.0], 1)
            s.dt = s.prev_derivative = None
            return s.step(self._output(x, denoiser(x, sigma), sigma), 0, x).prev_sample
        s = self._prepared([sigma, sigma_next, sigma_next, 0.0], 2)
        s.dt = s.prev_derivative = None
        x_e = s.step(self._output(x, denoiser(x, sigma), sigma), 0, x).prev_sample
        return s.step(self._output(x_e, denoiser(x_e, sigma_next), sigma_next), 0, x_e).prev_sample

    def flow_euler_step(self, x, velocity, t, t_next):
        """FlowMatch's Euler step; the model output is the velocity."""
        s = self._prepared([t, t_next])
        return s.step(velocity, s.timesteps[0], x).prev_sample

    def dpmpp_2m(self, denoiser, x, sigmas):
        """A whole DPM-Solver++(2M) run over ``sigmas`` (VE x in and out)."""
        sig = [float(v) for v in sigmas]
        s = self._prepared(sig)
        s.model_outputs, s.lower_order_nums = [None] * s.config.solver_order, 0
        for i in range(len(sig) - 1):
            out = self._output(x, denoiser(x, sig[i]), sig[i])
            x_vp = s.step(out, s.timesteps[i], x.double() / math.sqrt(1.0 + sig[i] ** 2)).prev_sample
            x = (x_vp * math.sqrt(1.0 + sig[i + 1] ** 2)).to(x.dtype)
        return x

    # ----- lists ---------------------------------------------------------------------------

    def karras(self, n: int, sigma_min: float, sigma_max: float) -> list[float]:
        """Euler's Karras list for its own ``sigma_min``/``sigma_max`` (n + 1 floats)."""
        s = self._set(n, use_karras_sigmas=True, sigma_min=float(sigma_min),
                      sigma_max=float(sigma_max))
        return [float(v) for v in s.sigmas]

    def flow_times(self, n: int, shift: float) -> list[float]:
        """FlowMatch's bare ``set_timesteps(n)`` with ``shift`` (n + 1 floats)."""
        return [float(v) for v in self._set(n, shift=float(shift)).sigmas]

    def sigma_list(self, n: int) -> list[float]:
        """The configured list of ``set_timesteps(n)``: n levels and the final one (Heun's
        repeated levels once)."""
        sig = [float(v) for v in self._set(n).sigmas]
        if self.name == "HeunDiscreteScheduler":
            sig = sig[:1] + sig[1:-1:2] + sig[-1:]
        return sig


def _check_functions() -> dict:
    from refdiff.testing import level_checks as LC, solver_checks as SC

    return {"euler": SC.check_euler_step, "heun": SC.check_heun_step,
            "euler_ancestral": SC.check_euler_ancestral_step,
            "flow_euler": SC.check_flow_euler_step, "dpmpp_2m": SC.check_dpmpp_2m,
            "karras": LC.check_karras_sigmas, "flow_times": LC.check_flow_times}


def run_solver_checks(adapter: DiffusersSolver, checks=None, *, max_examples: int | None = None,
                      seed: int | None = None, **options: Any) -> list:
    """Run the checks that apply to ``adapter`` with the options its configuration implies.

    ``options`` are per check (``karras={"rho": 7.0}``); "timesteps" is
    :func:`~refdiff.testing.diffusers_sigma_lists.check_configured_sigmas` (``max_examples``
    / ``seed`` do not apply). Step checks run on :attr:`DiffusersSolver.target`; the list
    checks claim float32 (diffusers stores its lists in float32). Each failed result gets a
    ``classification`` (:func:`~refdiff.testing.diffusers_sigma_lists.explain_check`) and a
    reproduction that builds this adapter.

    Raises
    ------
    ValueError
        For a check that does not apply to the scheduler.
    """
    from refdiff.testing._engine import bind_reproduction
    from refdiff.testing.diffusers_adapters import check_kwargs, checked_names
    from refdiff.testing.diffusers_sigma_lists import check_configured_sigmas, explain_check

    names = checked_names(adapter, checks)
    results = []
    for name in names:
        kwargs: dict = {}
        if name == "timesteps":
            result = check_configured_sigmas(adapter)
        else:
            kwargs = check_kwargs(adapter, name, seed, max_examples, options)
            lists = name in ("karras", "flow_times")
            kwargs.update({"dtype": "float32"} if lists else {"target": adapter.target})
            result = _check_functions()[name](adapter.adapter(name), **kwargs)
            method = adapter.adapter(name).__name__
            bind_reproduction(result, ["from refdiff.testing.diffusers_solvers import DiffusersSolver",
                                       f"candidate = {adapter.source(method)}"],
                              None if lists else adapter.target)
        if not result.passed:
            result.classification = explain_check(adapter, name, result, kwargs)
        results.append(result)
    return results


@contextlib.contextmanager
def _fixed_noise(name: str, noise):
    """Make the scheduler module's ``randn_tensor`` return ``noise`` for the duration."""
    import importlib

    module = importlib.import_module(f"diffusers.schedulers.{_MODULE[name]}")
    original = module.randn_tensor
    module.randn_tensor = lambda shape, **_: noise
    try:
        yield
    finally:
        module.randn_tensor = original
