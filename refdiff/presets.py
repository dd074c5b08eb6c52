"""Named conventions of the originals, as plain mappings of :func:`refdiff.sample` options.

A preset is the set of ``sample`` (or ``ddim_invert``) options under which refdiff's loop
makes the same choices as a given original in its default configuration::

    x0 = rd.sample(model, x_T, schedule, num_inference_steps=50, **rd.PRESETS["guided_diffusion"])

The caller still chooses what the original leaves to its user: the number of steps, the
guidance, η, and what the model is (``prediction_type``; ``variance_type`` where the model
learns its variance). ``refdiff conventions`` prints every preset next to refdiff's defaults.

What the presets do not reproduce, on purpose: diffusers' ``t − T // n`` previous timestep (it
equals the next listed timestep for the leading spacing of the defaults, and is wrong for
others) and its noise on a last step whose timestep is not 0 (trailing spacing). The
conformance kit (``refdiff check``) reports those as findings instead. Not reproduced, because
refdiff's levels differ: guided-diffusion's ``ddim_reverse_sample_loop`` treats its input as x
at the smallest respaced timestep (no step from ᾱ = 1) and ends with a step to ᾱ = 0;
``INVERSION_PRESETS["guided_diffusion"]`` follows its steps in between (source timestep, clip,
ε̂ re-derived) but starts at ᾱ = 1 and ends at the largest listed timestep, as
:func:`refdiff.ddim_invert` always does.

References
----------
The default configurations, read from each project's code:

- ``guided_diffusion``: openai/guided-diffusion, ``gaussian_diffusion.py`` (``ddim_sample``
  with ``clip_denoised=True``, ``condition_score``) and ``respace.py`` (``"ddimN"``);
  ``guided_diffusion_ddpm``: its ``p_sample`` with ``condition_mean``, a section respacing
  (``timestep_respacing="250"``) and the index-0 variance ``posterior_variance[1]``;
- ``compvis_ddim``: CompVis latent-diffusion / stable-diffusion ``DDIMSampler``
  (``make_ddim_timesteps("uniform")``, ᾱ_prev = ᾱ of the table's first entry after the last
  step, no clipping);
- ``diffusers_ddim`` / ``diffusers_ddpm``: ``DDIMScheduler()`` / ``DDPMScheduler()`` defaults
  (``timestep_spacing="leading"``, ``clip_sample=True`` with range 1, ``set_alpha_to_one=True``,
  ε̂ kept after clipping; DDPM ``variance_type="fixed_small"``).

Papers of the originals: guided-diffusion is the code of Dhariwal & Nichol, arXiv:2105.05233v4
(and IDDPM, arXiv:2102.09672v1); CompVis' DDIM sampler is that of Rombach et al.,
arXiv:2112.10752v2, implementing DDIM, arXiv:2010.02502v4.
"""

from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import Any, Mapping

_freeze = MappingProxyType

# ----- sample(): reverse sampling ---------------------------------------------------------

PRESETS: Mapping[str, Mapping[str, Any]] = _freeze({
    "guided_diffusion": _freeze({
        "sampler": "ddim", "spacing": "guided_diffusion_ddim", "final_alpha_bar": "one",
        "clip_x0": 1.0, "rederive_eps": True, "classifier_order": "clip_then_shift"}),
    "guided_diffusion_ddpm": _freeze({
        "sampler": "ddpm", "spacing": "guided_diffusion", "final_alpha_bar": "one",
        "clip_x0": 1.0, "last_step_variance": "previous_beta_tilde"}),
    "compvis_ddim": _freeze({
        "sampler": "ddim", "spacing": "compvis_uniform", "final_alpha_bar": "alpha_bar_0",
        "clip_x0": None}),
    "diffusers_ddim": _freeze({
        "sampler": "ddim", "spacing": "leading", "final_alpha_bar": "one", "clip_x0": 1.0,
        "rederive_eps": False}),
    "diffusers_ddpm": _freeze({
        "sampler": "ddpm", "spacing": "leading", "final_alpha_bar": "one", "clip_x0": 1.0,
        "variance_type": "fixed_small"}),
})

# ----- ddim_invert(): inversion -----------------------------------------------------------

INVERSION_PRESETS: Mapping[str, Mapping[str, Any]] = _freeze({
    "guided_diffusion": _freeze({"spacing": "guided_diffusion_ddim", "clip_x0": 1.0,
                                 "rederive_eps": True, "model_timestep": "source"}),
    "diffusers_ddim": _freeze({"spacing": "leading", "clip_x0": 1.0, "rederive_eps": False,
                               "model_timestep": "destination"}),
})

_DDPM_ONLY = ("variance_type", "last_step_variance")
_DDIM_ONLY = ("classifier_order", "eta")


def _unset(preset: Mapping[str, Any], key: str) -> str:
    """The printed cell of an option a preset does not set."""
    sampler = preset.get("sampler")
    if (sampler == "ddim" and key in _DDPM_ONLY) or (sampler == "ddpm" and key in _DDIM_ONLY):
        return "—"                                                  # not an option of it
    return "the model's" if key == "variance_type" else "(default)"


def defaults(function: Any) -> dict[str, Any]:
    """refdiff's own default of every option a preset of ``function`` may set."""
    keys = {k for table in (PRESETS, INVERSION_PRESETS) for p in table.values() for k in p}
    params = inspect.signature(function).parameters
    out = {k: params[k].default for k in sorted(keys) if k in params}
    if "spacing" in out and out["spacing"] is None:
        out["spacing"] = "leading"                                  # sample's documented default
    if "variance_type" in out and out["variance_type"] is None:
        out["variance_type"] = "fixed_small"
    return out


def table(function_name: str = "sample") -> str:
    """A Markdown table: one row per option, refdiff's default then each preset."""
    import refdiff

    presets = PRESETS if function_name == "sample" else INVERSION_PRESETS
    base = defaults(getattr(refdiff, function_name))
    keys = [k for k in base if any(k in p for p in presets.values())]
    head = ["option", "refdiff", *presets]
    rows = [head, ["---"] * len(head)]
    for k in keys:
        cells = [repr(p[k]) if k in p else _unset(p, k) for p in presets.values()]
        rows.append([f"`{k}`", repr(base[k]), *cells])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def main(argv: list[str]) -> int:
    """``refdiff conventions``: print the presets of ``sample`` and ``ddim_invert``."""
    from refdiff.cli import ArgumentParser

    p = ArgumentParser(prog="refdiff conventions",
                       description="The named presets (PRESETS, INVERSION_PRESETS) next to "
                                   "refdiff's defaults.")
    p.parse_args(argv)
    print("refdiff.sample(..., **refdiff.PRESETS[name])\n")
    print(table("sample"))
    print("\nrefdiff.ddim_invert(..., **refdiff.INVERSION_PRESETS[name])\n")
    print(table("ddim_invert"))
    print("\n(default): the preset keeps refdiff's default; the model's: set by the model "
          "(learned variances: 'learned_range' for guided-diffusion's released models).")
    return 0
