"""Adapters that run diffusers' ``DDPMScheduler`` and ``DDIMScheduler`` through the checks.

:class:`DiffusersScheduler` maps a scheduler configuration onto refdiff's conventions and
exposes the adapter signatures of :mod:`refdiff.testing.checks` and
:mod:`refdiff.testing.step_checks`:

- ``schedule_table(kind, T, **params)``: the scheduler's own ``alphas_cumprod`` (float32 in
  diffusers) for ``beta_schedule`` = linear / scaled_linear / squaredcos_cap_v2 (refdiff's
  cosine), with ``rescale_betas_zero_snr`` for refdiff's ``zero_snr_linear``;
- ``timesteps(T, n, spacing)``: ``set_timesteps(n)`` with ``timestep_spacing = spacing``
  and ``steps_offset`` = 0 (for :func:`~refdiff.testing.check_timesteps`, every spacing);
- ``ddim_step`` / ``ddpm_step``: ``set_timesteps(n)`` with the configured spacing, then
  ``scheduler.step(eps, t, x_t, ...)``; t_prev is *not* passed (diffusers finds it itself).
  Noise is explicit: DDIM gets ``variance_noise=noise``; for DDPM, which has no such argument,
  the module's ``randn_tensor`` is replaced for the duration of the call by a function that
  returns ``noise`` (nothing else is changed). Samples of fewer than 3 axes are given to
  diffusers as (B, C, 1) (one sample per batch row, as before): its ``_threshold_sample``
  reshapes to ``channels * np.prod(remaining_dims)``, a NumPy float for no remaining axis,
  which torch refuses (a TypeError for every (B, C) sample with ``thresholding=True``);
- ``ddpm_learned_step`` (``variance_type`` "learned_range" or "learned", for
  :func:`~refdiff.testing.check_ddpm_learned_variance`): the model output is ε and the
  variance channel concatenated along axis 1, as diffusers splits it; for "learned" the
  channel is exp(v) (diffusers reads it as σ², refdiff's v is log σ²);
- ``loop(model, x_T, timesteps, noises)``: ``set_timesteps(len(timesteps))`` and diffusers'
  own ``scheduler.timesteps`` (an error if its length is not n).

``table="float64"`` (default) runs diffusers' step logic on refdiff's float64 ᾱ table cast to
a float64 tensor, so that the step checks test the logic at the float64 tolerance; the
float32 table itself is judged by :func:`~refdiff.testing.check_schedule`. ``table="native"``
keeps diffusers' float32 table (then run the checks with ``Target("torch", "float32")``).

The configuration is checked when the adapter is made: an unknown key, a value of the wrong
type, or one that refdiff cannot map (``beta_schedule="sigmoid"``, ``prediction_type`` other
than ε, ``trained_betas``, with ``thresholding=True`` a ``dynamic_thresholding_ratio``
outside (0, 1] or a ``sample_max_value`` below 1) raises ``ValueError`` naming the key.
:meth:`DiffusersScheduler.conventions` gives the check options that the configuration
implies: ``final_alpha_bar`` ("alpha_bar_0" for DDIM with ``set_alpha_to_one=False``),
``clip_x0`` (``DynamicThreshold(dynamic_thresholding_ratio, sample_max_value)`` when
``thresholding``, which diffusers applies instead of ``clip_sample``; else
``clip_sample_range`` when ``clip_sample``), ``rederive_eps`` (``use_clipped_model_output``),
``variance_type`` (``fixed_small``/``fixed_small_log`` → "fixed_small",
``fixed_large``/``fixed_large_log`` → "fixed_large", ``learned``, ``learned_range``: the
step check is then ``ddpm_learned``, and the loop check does not apply: its model returns ε
only), ``offset`` (``steps_offset``), ``spacings``, and for the schedule check the
configured kind and T.

:func:`run_checks` judges what the configuration uses: its schedule kind at its T, its own
timestep list (:func:`check_configured_timesteps`: every n, the configured spacing and
offset), and the step and loop checks under the implied conventions. Each failure gets a
``classification``: ``"finding: ..."`` when one of diffusers' known conventions (float32
tables, the float-step trailing ``arange``, DDIM's previous timestep ``t − T//n``, DDPM's noise
whenever ``t > 0``) accounts for the counterexample when replayed, else ``"disagreement in the
math ..."``.

References
----------
diffusers, https://github.com/huggingface/diffusers, ``schedulers/scheduling_ddim.py`` and
``scheduling_ddpm.py`` (checked against 0.42.1). DDPM arXiv:2006.11239v2; DDIM
arXiv:2010.02502v4; ZSNR arXiv:2305.08891v4.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from typing import Any, Callable

import numpy as np

import refdiff as rd
from refdiff.testing import references as R
from refdiff.testing._engine import CheckResult, bind_reproduction
from refdiff.testing.checks import Target
from refdiff.testing.strategies import ScheduleSpec
from refdiff.testing.tolerance import dtype_name, to_numpy
from refdiff.thresholding import DynamicThreshold

KINDS = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2",
         "zero_snr_linear": "linear"}
VARIANCE_TYPES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
                  "fixed_large": "fixed_large", "fixed_large_log": "fixed_large",
                  "learned": "learned", "learned_range": "learned_range"}
LEARNED = ("learned", "learned_range")
# configuration values the adapters cannot map: the checks give ε and refdiff's schedules
_FIXED = {"prediction_type": "epsilon", "trained_betas": None}
_CHOICES = {"timestep_spacing": rd.SPACINGS, "beta_schedule": tuple(dict.fromkeys(KINDS.values())),
            "variance_type": tuple(VARIANCE_TYPES)}
_MINIMUM = {"num_train_timesteps": 2, "steps_offset": 0}
CONVENTION = "a convention, not a math error"
MATH = "disagreement in the math (no known diffusers convention explains it)"


def _typed(key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the key's default (bool, int, float, str); ValueError if not."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "True or False"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        kind, value = "a finite number", float(value) if ok else value
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a string"
    else:
        ok, kind = True, ""
    if not ok:
        raise ValueError(f"{key}={value!r}: expected {kind}")
    return value


def _checked_config(cls: type, config: dict) -> dict:
    """``config`` with every key known to ``cls``, typed, and mappable onto refdiff."""
    params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
              if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}
    out = {}
    for key, value in config.items():
        if key not in params:
            raise ValueError(f"{key}: not a {cls.__name__} configuration key; choose from "
                             f"{', '.join(params)}")
        value = out[key] = _typed(key, value, params[key])
        if key in _FIXED and value != _FIXED[key]:
            raise ValueError(f"{key}={value!r}: not mapped onto refdiff (only {_FIXED[key]!r})")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ValueError(f"{key}={value!r}: not mapped onto refdiff; choose from "
                             f"{', '.join(_CHOICES[key])}")
        if key in _MINIMUM and value < _MINIMUM[key]:
            raise ValueError(f"{key}={value!r}: must be >= {_MINIMUM[key]}")
        if key == "clip_sample_range" and not value > 0:
            raise ValueError(f"{key}={value!r}: must be > 0")
    if out.get("thresholding"):
        _threshold_of({**params, **out})
    return out


def _threshold_of(config: dict) -> DynamicThreshold:
    """diffusers' dynamic thresholding options as refdiff's; ValueError naming the key."""
    for key, field in (("dynamic_thresholding_ratio", "ratio"), ("sample_max_value", "max_value")):
        try:
            DynamicThreshold(**{field: config[key]})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{key}={config[key]!r}: not mapped onto refdiff with "
                             f"thresholding=True (DynamicThreshold: {exc})") from None
    return DynamicThreshold(config["dynamic_thresholding_ratio"], config["sample_max_value"])


class DiffusersScheduler:
    """A diffusers scheduler class plus a configuration, seen through refdiff's adapters.

    Parameters
    ----------
    name : {"DDIMScheduler", "DDPMScheduler"}
    table : {"float64", "native"}
        Which ᾱ table the step adapters run on (module docstring).
    use_clipped_model_output : bool
        DDIM ``step`` argument (re-derive ε after clipping).
    **config
        Scheduler configuration (``timestep_spacing="trailing"``, ``steps_offset=1``, ...).

    Raises
    ------
    ValueError
        For another name or table, or a configuration key or value the adapters cannot map
        (the message starts with the key).
    """

    def __init__(self, name: str = "DDIMScheduler", *, table: str = "float64",
                 use_clipped_model_output: bool = False, **config: Any):
        import diffusers

        if name not in ("DDIMScheduler", "DDPMScheduler"):
            raise ValueError(f"name must be 'DDIMScheduler' or 'DDPMScheduler', got {name!r}")
        if table not in ("float64", "native"):
            raise ValueError(f"table must be 'float64' or 'native', got {table!r}")
        self.name, self.table, self.use_clipped = name, table, use_clipped_model_output
        self.eta = 0.0  # η of the DDIM loop adapter (see with_eta)
        self.cls = getattr(diffusers, name)
        self.config = dict(self.cls(**_checked_config(self.cls, config)).config)
        self._cache: dict[int, Any] = {}
        self._spec = self.schedule_spec()
        self._refdiff = self._spec.build()  # refdiff checks the β range (ValueError naming it)

    def __repr__(self) -> str:
        return f"diffusers.{self.name}({', '.join(f'{k}={v!r}' for k, v in self._changed().items())})"

    def _changed(self) -> dict:
        default = self.cls().config
        return {k: v for k, v in self.config.items() if not k.startswith("_") and default.get(k) != v}

    def source(self, method: str) -> str:
        """Python source of this adapter's ``method``, for reproduction snippets."""
        args = [repr(self.name)] + [f"{k}={v!r}" for k, v in self._changed().items()]
        args += [f"table={self.table!r}"] * (self.table != "float64")
        args += ["use_clipped_model_output=True"] * self.use_clipped
        return f"DiffusersScheduler({', '.join(args)}).{method}"

    @property
    def is_ddim(self) -> bool:
        return self.name == "DDIMScheduler"

    @property
    def target(self) -> Target:
        """Where the step adapters take their inputs: torch, in the table's dtype."""
        return Target("torch", "float64" if self.table == "float64" else "float32")

    def schedule_spec(self) -> ScheduleSpec:
        """refdiff's schedule for this configuration (raises for trained betas or sigmoid)."""
        c = self.config
        kind = {v: k for k, v in KINDS.items() if k != "zero_snr_linear"}.get(c["beta_schedule"])
        if kind is None or c.get("trained_betas") is not None:
            raise ValueError(f"beta_schedule {c['beta_schedule']!r} has no refdiff equivalent")
        if c.get("rescale_betas_zero_snr"):
            kind = "zero_snr_linear" if kind == "linear" else None
            if kind is None:
                raise ValueError("rescale_betas_zero_snr is mapped for the linear schedule only")
        params = {} if kind == "cosine" else {"beta_start": c["beta_start"], "beta_end": c["beta_end"]}
        return ScheduleSpec(kind, c["num_train_timesteps"], params)

    def conventions(self, check: str) -> dict:
        """Check options implied by the configuration, for ``check`` in refdiff.testing.CHECKS."""
        c = self.config
        out: dict[str, Any] = {}
        if check == "schedule":
            T = c["num_train_timesteps"]
            out.update(kinds=(self.schedule_spec().kind,), min_T=T, max_T=T)
        if check in ("ddim", "ddpm", "ddpm_learned", "loop", "posterior"):
            out["spacings"] = (c["timestep_spacing"],)
        if check in ("ddim", "ddpm", "ddpm_learned", "loop"):
            out["offset"] = c["steps_offset"] if c["timestep_spacing"] == "leading" else 0
            out["clip_x0"] = (_threshold_of(c) if c["thresholding"] else
                              c["clip_sample_range"] if c["clip_sample"] else None)
            one = c.get("set_alpha_to_one", True) if self.is_ddim else True
            out["final_alpha_bar"] = "one" if one else "alpha_bar_0"
        if check in ("ddim", "loop") and self.is_ddim:
            out["rederive_eps"] = self.use_clipped
        if check in ("ddpm", "ddpm_learned", "loop") and not self.is_ddim:
            out["variance_type"] = VARIANCE_TYPES[c["variance_type"]]
        if check == "loop":
            out["sampler"] = "ddim" if self.is_ddim else "ddpm"
        return out

    def _scheduler(self, **overrides: Any):
        return self.cls(**{**self._init_config(), **overrides})

    def _init_config(self) -> dict:
        return {k: v for k, v in self.config.items() if not k.startswith("_")}

    def schedule_table(self, kind: str, T: int, **params: Any):
        """Adapter for check_schedule: the scheduler's ``alphas_cumprod`` (its own dtype)."""
        zsnr = kind == "zero_snr_linear"
        sched = self._scheduler(num_train_timesteps=T, beta_schedule=KINDS[kind],
                                rescale_betas_zero_snr=zsnr, **params)
        return sched.alphas_cumprod

    def timesteps(self, T: int, n: int, spacing: str) -> list[int]:
        """Adapter for check_timesteps: ``set_timesteps(n)`` under ``spacing``, no offset."""
        sched = self._scheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=0)
        sched.set_timesteps(n)
        return [int(t) for t in sched.timesteps]

    def _stepper(self, n: int):
        """A scheduler after set_timesteps(n), on the float64 table if ``table="float64"``."""
        if n not in self._cache:
            import torch
            sched = self._scheduler()
            sched.set_timesteps(n)
            if self.table == "float64":
                table = np.asarray(self._refdiff.alphas_cumprod)
                sched.alphas_cumprod = torch.asarray(table, dtype=torch.float64)
                one = self.config.get("set_alpha_to_one", True)
                sched.final_alpha_cumprod = torch.tensor(1.0 if one else table[0], dtype=torch.float64)
                sched.one = torch.tensor(1.0, dtype=torch.float64)
            self._cache[n] = sched
        return self._cache[n]

    def ddim_step(self, x_t, eps, t: int, t_prev: int, *, eta: float, noise, num_inference_steps: int):
        """Adapter for check_ddim_step (t_prev unused: diffusers computes it)."""
        sched = self._stepper(num_inference_steps)
        shape = tuple(x_t.shape)
        x_t, eps, noise = _three_axes(x_t, eps, noise)
        return sched.step(eps, t, x_t, eta=eta, variance_noise=noise,
                          use_clipped_model_output=self.use_clipped).prev_sample.reshape(shape)

    def ddpm_step(self, x_t, eps, t: int, t_prev: int, *, noise, num_inference_steps: int):
        """Adapter for check_ddpm_step (t_prev unused: diffusers computes it)."""
        sched = self._stepper(num_inference_steps)
        shape = tuple(x_t.shape)
        x_t, eps, noise = _three_axes(x_t, eps, noise)  # diffusers reads shape[1] (channels)
        with _fixed_noise(noise):
            return sched.step(eps, t, x_t).prev_sample.reshape(shape)

    def ddpm_learned_step(self, x_t, eps, t: int, t_prev: int, *, var_values, noise,
                          num_inference_steps: int):
        """Adapter for check_ddpm_learned_variance: the model output is (ε, channel) along
        axis 1, the channel v ("learned_range") or exp(v) ("learned": diffusers' σ²)."""
        import torch

        sched = self._stepper(num_inference_steps)
        shape = tuple(x_t.shape)
        x_t, eps, noise, v = _three_axes(x_t, eps, noise, var_values)
        channel = torch.exp(v) if self.config["variance_type"] == "learned" else v
        with _fixed_noise(noise):
            return sched.step(torch.cat([eps, channel], dim=1), t, x_t).prev_sample.reshape(shape)

    def loop(self, model: Callable, x_T, timesteps, noises):
        """Adapter for check_sampling_loop: diffusers' own list for n = len(timesteps)."""
        ts = self._own_list(len(timesteps))
        if len(ts) != len(noises):
            raise ValueError(f"set_timesteps({len(timesteps)}) gave {len(ts)} timesteps, "
                             f"ending {ts[-4:]}")
        x = x_T
        for i, t in enumerate(ts):
            step = self.ddim_step if self.is_ddim else self.ddpm_step
            extra = {"eta": self.eta} if self.is_ddim else {}
            x = step(x, model(x, t), t, -1, noise=noises[i], num_inference_steps=len(ts), **extra)
        return x

    def with_eta(self, eta: float) -> "DiffusersScheduler":
        """The loop adapter runs DDIM with this η (default 0)."""
        self.eta = float(eta)
        return self

    def adapter(self, check: str) -> Callable:
        """The adapter method for a check name of refdiff.testing.CHECKS."""
        return getattr(self, self._methods()[check])

    @property
    def learned(self) -> bool:
        """DDPM with a learned variance (the model also returns a variance channel)."""
        return not self.is_ddim and self.config["variance_type"] in LEARNED

    def _step_check(self) -> str:
        return "ddim" if self.is_ddim else "ddpm_learned" if self.learned else "ddpm"

    def _methods(self) -> dict:
        step = {"ddim": "ddim_step", "ddpm": "ddpm_step", "ddpm_learned": "ddpm_learned_step"}
        methods = {"schedule": "schedule_table", "timesteps": "timesteps",
                   self._step_check(): step[self._step_check()]}
        if not self.learned:  # the loop's model returns ε only
            methods["loop"] = "loop"
        return methods

    def checks(self) -> tuple[str, ...]:
        """The checks that apply to this scheduler."""
        return tuple(self._methods())

    # -- what a failure is: replay the counterexample under diffusers' conventions ----------

    def _own_list(self, n: int) -> list[int]:
        return [int(t) for t in self._stepper(n).timesteps]

    def _previous(self, t: int, n: int) -> int | None:
        """The timestep diffusers' step goes to from t (−1: the final ᾱ; None: t not listed).

        DDIM: ``t − T//n`` (DDIMScheduler.step); DDPM: the next element of its own list.
        """
        if self.is_ddim:
            return max(t - self.config["num_train_timesteps"] // n, -1)
        ts = self._own_list(n)
        if t not in ts:
            return None
        i = ts.index(t)
        return ts[i + 1] if i + 1 < len(ts) else -1

    def _reference_step(self, x, eps, t: int, prev: int, noise, conventions: dict,
                        var_values=None):
        keys = ("eta", "final_alpha_bar", "clip_x0", "rederive_eps", "variance_type")
        conv = {k: conventions[k] for k in keys if k in conventions}
        if var_values is not None:
            conv["var_values"] = var_values
        step = R.ddim_step if self.is_ddim else R.ddpm_step
        return step(x, eps, t, prev, noise=noise, schedule=self._refdiff, **conv)

    def _verdict(self, found: list[str], actual, replayed, result: CheckResult) -> str:
        """A finding when conventions were ``found`` and refdiff ``replayed`` under them meets
        ``actual``: to 1e-9 (float64 table; 1e-4 float32) of max(1, |replayed|), and at
        least 100 times closer than the failure was."""
        if not found or actual is None or not hasattr(actual, "shape"):
            return MATH
        a, e = to_numpy(actual), to_numpy(replayed)
        if a.shape != e.shape:
            return MATH
        rel = 1e-9 if self.table == "float64" else 1e-4
        residual = float(np.max(np.abs(a - e), initial=0.0))
        if not residual <= min(rel * max(1.0, float(np.max(np.abs(e), initial=0.0))),
                               1e-2 * result.max_abs):
            return MATH
        return f"finding: {'; '.join(found)} ({CONVENTION})"

    def _last_noise(self, t: int) -> str:
        return f"diffusers' DDPM step adds noise whenever t > 0, also on the last step (t = {t})"

    def explain(self, check: str, result: CheckResult, options: dict) -> str:
        """``"finding: ..."`` when diffusers' conventions account for a failed ``result``, else
        :data:`MATH`. ``options`` are the keyword arguments the check was run with.

        Each step or loop counterexample is replayed in refdiff under diffusers' rules (its
        previous timestep, its own list) and, for DDPM with a last timestep t > 0, diffusers is
        replayed without the last step's noise; the conventions that changed something are
        the finding when the replays meet (:meth:`_verdict`).
        """
        ce = result.counterexample or {}
        if check == "schedule":
            return self._explain_schedule()
        if check == "timesteps":
            T, n = ce["T"], ce["n"]
            if ce["spacing"] == "trailing" and result.actual == [
                    int(t) - 1 for t in np.round(np.arange(T, 0, -T / n))]:
                return (f"finding: diffusers builds trailing timesteps as round(arange(T, 0, -T/n)) "
                        f"- 1, a float-step arange (n + 1 steps for some n, off by one at rounding "
                        f"ties; {CONVENTION})")
            return MATH
        if check == "loop":
            return self._explain_loop(result, options)
        put, rounded = self.target.put, self.target.rounded
        t, n, listed = ce["t"], ce["n"], ce["t_prev"]
        prev = self._previous(t, n)
        if prev is None:
            return f"finding: t = {t} is not in diffusers' own list for n = {n} ({CONVENTION})"
        x_t, eps, noise = (rounded(ce[k]) for k in ("x_t", "eps", "noise"))
        v = rounded(ce["var_values"]) if "var_values" in ce else None
        replayed = self._reference_step(x_t, eps, t, prev, noise, {**options, "eta": ce.get("eta")},
                                        v)
        found = [f"diffusers' DDIM step goes to t - T//n = {prev}, not to the next listed "
                 f"timestep {listed}"] * (prev != listed)
        actual = result.actual
        if not self.is_ddim and prev == -1 and t > 0 and actual is not None:
            step = self.ddpm_learned_step if v is not None else self.ddpm_step
            given = {"var_values": put(v)} if v is not None else {}
            quiet = step(put(x_t), put(eps), t, listed, noise=put(0 * noise),
                         num_inference_steps=n, **given)
            if not np.array_equal(to_numpy(quiet), to_numpy(actual)):
                found.append(self._last_noise(t))
            actual = quiet
        return self._verdict(found, actual, replayed, result)

    def _explain_schedule(self) -> str:
        """A float32 table whose values pass refdiff's float32 tolerance is a dtype finding."""
        from refdiff.testing import ConformanceError, assert_close

        spec = self._spec
        table = self.schedule_table(spec.kind, spec.T, **spec.params)
        if dtype_name(table) != "float32":
            return MATH
        try:
            assert_close(table, R.schedule_table(spec), dtype="float32", scale=1.0)
        except ConformanceError:
            return MATH
        return f"finding: diffusers keeps float32 tables ({CONVENTION})"

    def _explain_loop(self, result: CheckResult, options: dict) -> str:
        from refdiff.testing import default_model

        ce = result.counterexample
        listed, n = list(ce["timesteps"]), len(ce["timesteps"])
        ts = self._own_list(n)
        if len(ts) != n:
            return (f"finding: diffusers' set_timesteps({n}) gives {len(ts)} timesteps, ending "
                    f"{ts[-3:]} (a float-step arange; {CONVENTION})")
        model = options.get("model", default_model)
        put, rounded = self.target.put, self.target.rounded
        x_T, noises = rounded(ce["x_T"]), [rounded(z) for z in ce["noises"]]
        found = [f"diffusers' own list for n = {n} differs from refdiff's"] * (ts != listed)
        x, strides = x_T, []
        for i, t in enumerate(ts):
            prev = self._previous(t, n)
            strides += [(t, prev)] * (prev != (ts[i + 1] if i + 1 < n else -1))
            x = self._reference_step(x, model(x, t), t, prev, noises[i], options)
        if strides:
            found.append(f"diffusers' DDIM step goes to t - T//n ({strides[0][0]} -> "
                         f"{strides[0][1]}), not to the next listed timestep")
        actual = result.actual
        if not self.is_ddim and ts[-1] > 0 and actual is not None:
            quiet = self.loop(model, put(x_T), listed,
                              [put(z) for z in noises[:-1]] + [put(0 * noises[-1])])
            if not np.array_equal(to_numpy(quiet), to_numpy(actual)):
                found.append(self._last_noise(ts[-1]))
            actual = quiet
        return self._verdict(found, actual, x, result)


def _three_axes(*arrays):
    """The arrays as (B, C, ...) with at least 3 axes: (B,) → (B, 1, 1), (B, C) → (B, C, 1).
    Each batch row stays one sample (its elements are the same), so a per-sample threshold
    is unchanged."""
    shape = tuple(arrays[0].shape)
    if len(shape) >= 3:
        return arrays
    full = (shape[0] if shape else 1, shape[1] if len(shape) > 1 else 1, 1)
    return tuple(a.reshape(full) for a in arrays)


@contextlib.contextmanager
def _fixed_noise(noise):
    """Make diffusers' DDPM step draw exactly ``noise`` (its randn_tensor returns it)."""
    from diffusers.schedulers import scheduling_ddpm

    original = scheduling_ddpm.randn_tensor
    scheduling_ddpm.randn_tensor = lambda shape, **_: noise
    try:
        yield
    finally:
        scheduling_ddpm.randn_tensor = original


def _every_n(T: int) -> list[int]:
    """n = 1 … T (T ≤ 2000), else 1 … 1000 and 1000 more spread up to T."""
    if T <= 2000:
        return list(range(1, T + 1))
    return sorted({*range(1, 1001), *np.linspace(1001, T, 1000).astype(int).tolist()})


def check_configured_timesteps(adapter: DiffusersScheduler) -> CheckResult:
    """The scheduler's own ``set_timesteps(n)`` list, as configured (T, ``timestep_spacing``,
    ``steps_offset``), for every n, exactly equal to refdiff's list.

    Exhaustive rather than searched: the configuration fixes T, so every n is tried (n for
    which refdiff's leading list with the offset leaves [0, T − 1] are skipped: no valid list).
    The counterexample is the smallest failing n; the message counts the failing n.
    """
    c = adapter.config
    T, spacing = c["num_train_timesteps"], c["timestep_spacing"]
    offset = c["steps_offset"] if spacing == "leading" else 0
    sched, t0, tried, failed, first = adapter._scheduler(), time.perf_counter(), 0, [], None
    for n in _every_n(T):
        try:
            expected = R.timesteps(T, n, spacing, offset)
        except ValueError:
            continue
        tried += 1
        sched.set_timesteps(n)
        actual = [int(t) for t in sched.timesteps]
        if actual != expected:
            failed.append(n)
            first = first or (n, actual, expected, tried, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    name = "inference timesteps"
    if first is None:
        return CheckResult(name, True, tried, seconds, settings={"every_n": True})
    n, actual, expected, at, when = first
    if len(actual) != n:
        where, err = f"set_timesteps({n}) gives {len(actual)} timesteps", float("inf")
    else:
        diff = [i for i, (a, e) in enumerate(zip(actual, expected)) if a != e]
        where = f"{len(diff)} timestep(s) differ, first at index {diff[0]}"
        err = float(max(abs(a - e) for a, e in zip(actual, expected)))
    repro = ["import diffusers", "from refdiff.testing import references as R",
             f"scheduler = diffusers.{adapter.name}(**{adapter._changed()!r})",
             f"scheduler.set_timesteps({n})",
             "actual = [int(t) for t in scheduler.timesteps]",
             f"expected = R.timesteps({T}, {n}, {spacing!r}, {offset})",
             "assert actual == expected, (actual, expected)"]
    return CheckResult(
        name, False, tried, seconds, counterexample={"T": T, "n": n, "spacing": spacing,
                                                     "offset": offset},
        actual=actual, expected=expected, max_abs=err, max_rel=err,
        message=f"timesteps: {len(failed)} of {tried} values of n differ; first n = {n}: {where}",
        examples_to_fail=at, time_to_fail=when, reproduction="\n".join(repro),
        settings={"every_n": True})


def checked_names(adapter: Any, checks) -> list:
    """The checks to run on an adapter (all that apply when ``checks`` is None); ValueError
    for one that does not apply."""
    names = list(checks or adapter.checks())
    for name in names:
        if name not in adapter.checks():
            raise ValueError(f"check {name!r} does not apply to {adapter.name}; choose from "
                             f"{', '.join(adapter.checks())}")
    return names


def check_kwargs(adapter: Any, name: str, seed, max_examples, options: dict) -> dict:
    """The keyword arguments of one check on an adapter: the conventions its configuration
    implies, the search's seed and size, then the caller's options for that check."""
    kwargs = dict(adapter.conventions(name), seed=seed, **options.get(name, {}))
    if max_examples is not None:
        kwargs["max_examples"] = max_examples
    return kwargs


def run_checks(adapter: DiffusersScheduler, checks=None, *, max_examples: int | None = None,
               seed: int | None = None, **options: Any) -> list:
    """Run the applicable checks on a diffusers adapter with the implied conventions.

    ``options`` are per check (``ddim={"eta": 0.5}``). Step checks run on torch float64
    (``table="float64"``) or float32 (``"native"``); "timesteps" is
    :func:`check_configured_timesteps` (``max_examples``/``seed`` do not apply). Each failed
    result gets a ``classification`` (:meth:`DiffusersScheduler.explain`) and a reproduction
    that builds this adapter.

    Raises
    ------
    ValueError
        For a check that does not apply to the scheduler.
    """
    from refdiff.testing import CHECKS

    names = checked_names(adapter, checks)
    results = []
    for name in names:
        if name == "timesteps":
            result, kwargs = check_configured_timesteps(adapter), {}
        else:
            kwargs = check_kwargs(adapter, name, seed, max_examples, options)
            if name != "schedule":
                kwargs.update(schedule=adapter.schedule_spec(), target=adapter.target)
            if name == "loop" and adapter.is_ddim:
                adapter.with_eta(kwargs.get("eta", 0.0))
            result = CHECKS[name](adapter.adapter(name), **kwargs)
            bind_reproduction(result, ["from refdiff.testing.diffusers_adapters import DiffusersScheduler",
                                       f"candidate = {adapter.source(adapter._methods()[name])}"],
                              None if name == "schedule" else adapter.target)
        if not result.passed:
            result.classification = adapter.explain(name, result, kwargs)
        results.append(result)
    return results


# ----- adaptive projected guidance (diffusers.guiders) ---------------------------------------

def diffusers_apg(use_original_formulation: bool = False,
                  scale_shift: float | None = None) -> Callable:
    """diffusers' ``normalized_guidance`` (``diffusers.guiders.adaptive_projected_guidance``)
    with :func:`~refdiff.testing.check_apg`'s adapter signature (torch arrays).

    ``guidance_scale = scale − scale_shift``; the default shift is the one diffusers' own
    guiders imply for the flag: 0 for ``use_original_formulation=False`` (its result is then
    pred_uncond + s·update, s the CFG scale) and 1 for ``True`` (pred_cond +
    guidance_scale·update: the paper's form with guidance_scale = w − 1 = s − 1). With
    ``momentum=``/``state=`` (check_apg's momentum run) the state is diffusers'
    ``MomentumBuffer(momentum)``, created at the first step. ``norm_dim`` is left at None
    (all non-batch axes, as the check's norms).
    """
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

    shift = (1.0 if use_original_formulation else 0.0) if scale_shift is None else scale_shift

    def candidate(pred_uncond, pred_cond, scale, *, eta, norm_threshold, **run):
        buffer = None
        if run:
            buffer = run["state"] if run.get("state") is not None else MomentumBuffer(run["momentum"])
        out = normalized_guidance(pred_cond, pred_uncond, scale - shift, buffer, eta=eta,
                                  norm_threshold=norm_threshold,
                                  use_original_formulation=use_original_formulation)
        return (out, buffer) if run else out
    return candidate


def check_diffusers_apg(use_original_formulation: bool = False, *,
                        scale_shift: float | None = None,
                        target: Target = Target("torch", "float32"), **options: Any) -> CheckResult:
    """:func:`~refdiff.testing.check_apg` on :func:`diffusers_apg`, with a runnable
    reproduction and a ``classification`` of a failure.

    ``options`` go to check_apg (``eta``, ``norm_threshold``, ``momentum``, ``formulation``,
    ``max_examples``, ``seed``). A failure of a single-step run is replayed under the
    formulation D_u + s·update: if that accounts for the counterexample, it is classified
    as the finding that diffusers' default result is pred_uncond + guidance_scale·update,
    which equals the paper's D_c + (s − 1)·update only where update = Δ (η = 1, no norm
    threshold, no momentum); otherwise as a disagreement in the math.
    """
    from refdiff.testing import check_apg
    from refdiff.testing import apg_check as AC
    from refdiff.testing.checks import compare

    candidate = diffusers_apg(use_original_formulation, scale_shift)
    result = check_apg(candidate, target=target, **options)
    args = f"use_original_formulation={use_original_formulation!r}"
    if scale_shift is not None:
        args += f", scale_shift={scale_shift!r}"
    bind_reproduction(result, ["from refdiff.testing.diffusers_adapters import diffusers_apg",
                               f"candidate = diffusers_apg({args})"], target)
    if result.passed:
        return result
    result.classification = MATH
    ce = result.counterexample or {}
    if options.get("formulation", "paper") == "paper" and not options.get("momentum"):
        du, dc = target.rounded(ce["pred_uncond"]), target.rounded(ce["pred_cond"])
        s, eta, r = ce["scale"], ce["eta"], ce["norm_threshold"]
        out = candidate(target.put(du), target.put(dc), s, eta=eta, norm_threshold=r)
        expected, _ = AC._apg_reference(du, dc, s, eta, r, 0.0, None, "diffusers")
        bound = AC._apg_bound(du, dc, s, eta, r, 0.0, None, None, target.dtype, "diffusers")[0]
        try:
            compare(out, expected, dtype=target.dtype, device=target.device, bound=bound)
        except AssertionError:
            return result
        result.classification = (
            f"finding: diffusers' normalized_guidance returns pred_uncond + guidance_scale*update "
            f"({args}), the paper's D_c + (s - 1)*update only where update = D_c - D_u "
            f"(eta = 1, no norm threshold, no momentum); here eta = {eta!r}, norm_threshold = "
            f"{r!r} ({CONVENTION})")
    return result
