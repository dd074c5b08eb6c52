"""refdiff.testing: a conformance kit that property-tests other implementations against refdiff.

Each ``check_*`` function takes a candidate callable with a small adapter signature (see
:mod:`refdiff.testing.checks` and :mod:`refdiff.testing.step_checks`), searches inputs with
Hypothesis, compares with refdiff, and returns a :class:`CheckResult`: ``bool(result)`` is True
on agreement; ``result.report()`` prints the shrunk counterexample, both outputs, the size of
the difference and a copy-paste reproduction; ``result.raise_for_failure()`` turns it into a
test failure. :func:`assert_close` is the comparison itself: dtype, shape and device, and
values within an elementwise error bound (``bound=``, derived per example by
:mod:`refdiff.testing.bounds`, which the checks use) or a per-dtype ``rtol``.

Searches are deterministic by default (Hypothesis ``derandomize``); pass ``seed=`` for a
random one. Adapters for diffusers' schedulers live in
:mod:`refdiff.testing.diffusers_adapters`; planted bugs in :mod:`refdiff.testing.mutants`.

This package is test tooling: it needs ``hypothesis`` and uses NumPy directly.

References
----------
See the check modules: DDPM arXiv:2006.11239v2; DDIM arXiv:2010.02502v4; IDDPM
arXiv:2102.09672v1; CFG arXiv:2207.12598v1; CG arXiv:2105.05233v4; ZSNR arXiv:2305.08891v4.
"""

from refdiff.testing import strategies
from refdiff.testing._engine import CheckResult
from refdiff.testing.checks import (Target, check_cfg, check_classifier_guidance,
                                    check_posterior, check_q_sample, check_schedule,
                                    check_timesteps)
from refdiff.testing.apg_check import check_apg
from refdiff.testing.guidance_checks import check_cfgpp, check_guidance_interval
from refdiff.testing.level_checks import check_flow_times, check_karras_sigmas
from refdiff.testing.solver_checks import (check_dpmpp_2m, check_euler_ancestral_step,
                                           check_euler_step, check_flow_euler_step,
                                           check_heun_step)
from refdiff.testing.step_checks import (check_ddim_step, check_ddpm_learned_variance,
                                         check_ddpm_step, check_sampling_loop, default_model)
from refdiff.testing.tolerance import RTOL, ConformanceError, assert_close

CHECKS = {
    "schedule": check_schedule, "timesteps": check_timesteps, "q_sample": check_q_sample,
    "posterior": check_posterior, "ddpm": check_ddpm_step,
    "ddpm_learned": check_ddpm_learned_variance, "ddim": check_ddim_step,
    "cfg": check_cfg, "classifier_guidance": check_classifier_guidance,
    "loop": check_sampling_loop,
    "guidance_interval": check_guidance_interval, "apg": check_apg, "cfgpp": check_cfgpp,
    "euler": check_euler_step, "heun": check_heun_step,
    "euler_ancestral": check_euler_ancestral_step, "flow_euler": check_flow_euler_step,
    "dpmpp_2m": check_dpmpp_2m, "karras": check_karras_sigmas, "flow_times": check_flow_times,
}

__all__ = ["CHECKS", "RTOL", "CheckResult", "ConformanceError", "Target", "assert_close",
           "check_apg", "check_cfg", "check_cfgpp", "check_classifier_guidance",
           "check_ddim_step", "check_dpmpp_2m", "check_euler_ancestral_step",
           "check_euler_step", "check_flow_euler_step", "check_flow_times",
           "check_guidance_interval", "check_heun_step", "check_karras_sigmas",
           "check_ddpm_learned_variance", "check_ddpm_step",
           "check_posterior", "check_q_sample", "check_sampling_loop", "check_schedule",
           "check_timesteps", "default_model", "strategies"]
