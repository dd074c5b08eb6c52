"""Adapters that run diffusers' ``DDPMScheduler`` and ``DDIMScheduler`` through the checks.

:class:`DiffusersScheduler` maps a scheduler configuration onto refdiff's conventions and
exposes the adapter signatures of :mod:`refdiff.testing.checks` and
:mod:`refdiff.testing.step_checks`:

- ``schedule_table(kind, T, **params)``: the scheduler's own ``alphas_cumprod`` (float32 in
  diffusers) for ``beta_schedule`` = linear / scaled_linear / squaredcos_cap_v2 (refdiff's
  cosine), with ``rescale_betas_zero_snr`` for refdiff's ``zero_snr_linear``;
- ``timesteps(T, n, spacing)``: ``set_timesteps(n)`` with ``timestep_spacing = spacing``
  (``steps_offset`` = 0, refdiff's ``offset`` for the leading spacing);
- ``ddim_step`` / ``ddpm_step``: ``set_timesteps(n)`` with the configured spacing, then
  ``scheduler.step(eps, t, x_t, ...)``; t_prev is *not* passed (diffusers finds it itself).
  Noise is explicit: DDIM gets ``variance_noise=noise``; for DDPM, which has no such argument,
  the module's ``randn_tensor`` is replaced for the duration of the call by a function that
  returns ``noise`` (nothing else is changed);
- ``loop(model, x_T, timesteps, noises)``: ``set_timesteps(len(timesteps))`` and diffusers'
  own ``scheduler.timesteps`` (an error if its length is not n).

``table="float64"`` (default) runs diffusers' step logic on refdiff's float64 ᾱ table cast to
a float64 tensor, so that the step checks test the logic at the float64 tolerance; the
float32 table itself is judged by :func:`~refdiff.testing.check_schedule`. ``table="native"``
keeps diffusers' float32 table (then run the checks with ``Target("torch", "float32")``).

:meth:`DiffusersScheduler.conventions` gives the check options that the configuration
implies: ``final_alpha_bar`` ("alpha_bar_0" for DDIM with ``set_alpha_to_one=False``),
``clip_x0`` (``clip_sample_range`` when ``clip_sample``), ``rederive_eps``
(``use_clipped_model_output``), ``variance_type`` (``fixed_small``/``fixed_small_log`` →
"fixed_small", ``fixed_large``/``fixed_large_log`` → "fixed_large"), ``offset``
(``steps_offset``) and ``spacings``.

References
----------
diffusers, https://github.com/huggingface/diffusers, ``schedulers/scheduling_ddim.py`` and
``scheduling_ddpm.py`` (checked against 0.42.1). DDPM arXiv:2006.11239v2; DDIM
arXiv:2010.02502v4; ZSNR arXiv:2305.08891v4.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np

from refdiff.testing.strategies import ScheduleSpec

KINDS = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2",
         "zero_snr_linear": "linear"}
VARIANCE_TYPES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
             "fixed_large": "fixed_large", "fixed_large_log": "fixed_large"}


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
        self.config = dict(self.cls().config) if not config else dict(self.cls(**config).config)
        self._cache: dict[int, Any] = {}

    def __repr__(self) -> str:
        return f"diffusers.{self.name}({', '.join(f'{k}={v!r}' for k, v in self._changed().items())})"

    def _changed(self) -> dict:
        default = self.cls().config
        return {k: v for k, v in self.config.items() if not k.startswith("_") and default.get(k) != v}

    @property
    def is_ddim(self) -> bool:
        return self.name == "DDIMScheduler"

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
        if check in ("ddim", "ddpm", "loop", "posterior"):
            out["spacings"] = (c["timestep_spacing"],)
        if check in ("ddim", "ddpm", "loop"):
            out["offset"] = c["steps_offset"] if c["timestep_spacing"] == "leading" else 0
            out["clip_x0"] = c["clip_sample_range"] if c["clip_sample"] else None
            one = c.get("set_alpha_to_one", True) if self.is_ddim else True
            out["final_alpha_bar"] = "one" if one else "alpha_bar_0"
        if check in ("ddim", "loop") and self.is_ddim:
            out["rederive_eps"] = self.use_clipped
        if check in ("ddpm", "loop") and not self.is_ddim:
            if c["variance_type"] not in VARIANCE_TYPES:
                raise ValueError(f"variance_type {c['variance_type']!r} is not mapped")
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
        """Adapter for check_timesteps: ``set_timesteps(n)`` under ``spacing``."""
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
                table = np.asarray(self.schedule_spec().build().alphas_cumprod)
                sched.alphas_cumprod = torch.asarray(table, dtype=torch.float64)
                one = self.config.get("set_alpha_to_one", True)
                sched.final_alpha_cumprod = torch.tensor(1.0 if one else table[0], dtype=torch.float64)
                sched.one = torch.tensor(1.0, dtype=torch.float64)
            self._cache[n] = sched
        return self._cache[n]

    def ddim_step(self, x_t, eps, t: int, t_prev: int, *, eta: float, noise, num_inference_steps: int):
        """Adapter for check_ddim_step (t_prev unused: diffusers computes it)."""
        sched = self._stepper(num_inference_steps)
        return sched.step(eps, t, x_t, eta=eta, variance_noise=noise,
                          use_clipped_model_output=self.use_clipped).prev_sample

    def ddpm_step(self, x_t, eps, t: int, t_prev: int, *, noise, num_inference_steps: int):
        """Adapter for check_ddpm_step (t_prev unused: diffusers computes it)."""
        sched = self._stepper(num_inference_steps)
        shape = tuple(x_t.shape)
        if len(shape) < 2:  # diffusers' DDPM step reads shape[1] (channels): give it (B, 1)
            x_t, eps, noise = (a.reshape(shape[0] if shape else 1, 1) for a in (x_t, eps, noise))
        with _fixed_noise(noise):
            return sched.step(eps, t, x_t).prev_sample.reshape(shape)

    def loop(self, model: Callable, x_T, timesteps, noises):
        """Adapter for check_sampling_loop: diffusers' own list for n = len(timesteps)."""
        sched = self._stepper(len(timesteps))
        ts = [int(t) for t in sched.timesteps]
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
        return {"schedule": self.schedule_table, "timesteps": self.timesteps,
                "ddim": self.ddim_step, "ddpm": self.ddpm_step, "loop": self.loop}[check]

    def checks(self) -> tuple[str, ...]:
        """The checks that apply to this scheduler."""
        return ("schedule", "timesteps", "ddim" if self.is_ddim else "ddpm", "loop")


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


def run_checks(adapter: DiffusersScheduler, checks=None, *, max_examples: int | None = None,
               seed: int | None = None, **options: Any) -> list:
    """Run the applicable checks on a diffusers adapter with the implied conventions.

    Step checks run on torch float64 (``table="float64"``) or float32 (``"native"``).
    """
    from refdiff.testing import CHECKS, Target

    dtype = "float64" if adapter.table == "float64" else "float32"
    results = []
    for name in checks or adapter.checks():
        kwargs = dict(adapter.conventions(name), seed=seed, **options.get(name, {}))
        if max_examples is not None:
            kwargs["max_examples"] = max_examples
        if name == "schedule":
            kind = adapter.schedule_spec().kind
            kwargs.update(kinds=(kind,), dtype=kwargs.get("dtype", "float64"))
        elif name != "timesteps":
            kwargs.update(schedule=adapter.schedule_spec(), target=Target("torch", dtype))
        if name == "loop" and adapter.is_ddim:
            adapter.with_eta(kwargs.get("eta", 0.0))
        results.append(CHECKS[name](adapter.adapter(name), **kwargs))
    return results
