"""refdiff: a NumPy-first, spec-grade reference for the sampling math of diffusion models.

The math is written once against the Python array API standard and runs unchanged on NumPy,
torch (CPU and CUDA) and any conforming namespace; the namespace is inferred from the inputs.
The conventions (timestep indexing, guidance-scale form, last step, names) are stated in
docs/conventions.md and the README, and in the docstrings of each module.
"""

from refdiff.classifier_free import cfg, cfg_multi, cfg_scale_from_w, guidance_rescale, w_from_cfg_scale
from refdiff.classifier_guidance import (classifier_gradient, classifier_guided_eps,
                                         classifier_guided_mean, cross_entropy, label_log_prob,
                                         noisy_classifier_loss)
from refdiff.distillation import (guidance_distillation_target, guidance_scale_embedding,
                                  sample_guidance_scales, sinusoidal_embedding)
from refdiff.forward import (PREDICTION_TYPES, posterior_coefficients, predict_x0_eps,
                             prediction_from_x0_eps, q_posterior, q_sample, v_target)
from refdiff.presets import INVERSION_PRESETS, PRESETS
from refdiff.fused import guided_ddim_step, guided_ddpm_step
from refdiff.guidance_variants import APG, apg, cfgpp_ddim_step
from refdiff.sampling import GUIDANCE_METHODS, Guidance, ddim_invert, sample
from refdiff.scale_schedules import (SCHEDULE_KINDS, ScaleSchedule, interval_from_steps,
                                     scheduled_scale, sigma_from_alpha_bar)
from refdiff.noise_levels import (FINAL_LEVELS, dynamic_shift, exponential_time_shift,
                                  flow_times, karras_sigmas, time_shift, vp_sigmas)
from refdiff.ode_sampling import SOLVERS, sample_flow, sample_ode
from refdiff.paths import (PATH_PREDICTIONS, PATHS, change_path, convert_prediction,
                           path_coefficients, path_level, path_prediction, path_sigma,
                           path_x0_eps)
from refdiff.solvers import (MultistepState, ancestral_sigmas, dpmpp_2m_step, euler_ancestral_step,
                             euler_step, flow_euler_step, heun_step)
from refdiff.respacing import ORIGINAL_SPACINGS, compvis_timesteps, guided_diffusion_timesteps
from refdiff.schedules import (SPACINGS, Schedule, cosine_schedule,
                               guided_diffusion_linear_schedule, inference_timesteps,
                               linear_schedule, rescale_zero_terminal_snr, scaled_linear_schedule)
from refdiff.thresholding import DynamicThreshold, dynamic_threshold
from refdiff.steps import (VARIANCE_TYPES, ddim_inversion_step, ddim_sigma, ddim_step,
                           ddpm_mean_variance, ddpm_step)
from refdiff.training import (alpha_bar_at, diffusion_loss, drop_condition, min_snr_weight,
                              sample_timesteps, snr)

__version__ = "0.6.0"

__all__ = [
    "INVERSION_PRESETS", "PRESETS", "PREDICTION_TYPES", "SPACINGS", "VARIANCE_TYPES", "Guidance", "Schedule", "cfg", "cfg_multi",
    "cfg_scale_from_w", "classifier_gradient", "classifier_guided_eps", "classifier_guided_mean",
    "cosine_schedule", "ddim_invert", "ddim_inversion_step", "ddim_sigma", "ddim_step",
    "ddpm_mean_variance", "ddpm_step", "guidance_rescale", "guided_diffusion_linear_schedule",
    "guided_ddim_step", "guided_ddpm_step",  # refdiff.fused
    "inference_timesteps", "linear_schedule", "posterior_coefficients", "predict_x0_eps",
    "prediction_from_x0_eps", "q_posterior", "q_sample", "rescale_zero_terminal_snr", "sample",
    "scaled_linear_schedule", "v_target", "w_from_cfg_scale",
    # training side (refdiff.training, refdiff.distillation)
    "alpha_bar_at", "cross_entropy", "diffusion_loss", "drop_condition",
    "guidance_distillation_target", "guidance_scale_embedding", "label_log_prob",
    "min_snr_weight", "noisy_classifier_loss", "sample_guidance_scales", "sample_timesteps",
    "sinusoidal_embedding", "snr",
    "DynamicThreshold", "dynamic_threshold",  # refdiff.thresholding
    "ORIGINAL_SPACINGS", "compvis_timesteps", "guided_diffusion_timesteps",  # refdiff.respacing
    "APG", "GUIDANCE_METHODS", "apg", "cfgpp_ddim_step",  # refdiff.guidance_variants
    "SCHEDULE_KINDS", "ScaleSchedule", "interval_from_steps", "scheduled_scale",
    "sigma_from_alpha_bar",  # refdiff.scale_schedules
    "PATHS", "PATH_PREDICTIONS", "change_path", "convert_prediction", "path_coefficients",
    "path_level", "path_prediction", "path_sigma", "path_x0_eps",  # refdiff.paths
    "FINAL_LEVELS", "dynamic_shift", "exponential_time_shift", "flow_times", "karras_sigmas",
    "time_shift", "vp_sigmas",  # refdiff.noise_levels
    "MultistepState", "ancestral_sigmas", "dpmpp_2m_step", "euler_ancestral_step", "euler_step",
    "flow_euler_step", "heun_step",  # refdiff.solvers
    "SOLVERS", "sample_flow", "sample_ode",  # refdiff.ode_sampling
]
