"""The small torch networks of the digits examples and their training loops.

- :class:`Denoiser`: an MLP with residual blocks. The conditional-DDPM recipe: a sinusoidal
  embedding of t goes through a small MLP, a learned embedding of the label (index 10 is ∅)
  is added to it, and the sum modulates every block. The scale-conditioned student of
  guidance distillation adds a third embedding, of the CFG scale.
- :class:`NoisyClassifier`: the same trunk without the label, ending in 10 logits:
  p_φ(y | x_t, t) for classifier guidance.

Every loss, every timestep, noise and dropout draw comes from refdiff (``refdiff.training``,
``refdiff.distillation``) with one seeded ``torch.Generator`` per run, so a run is
reproducible bit for bit on a fixed thread count. Trained weights are cached as state dicts
(``torch.save(model.state_dict())``, read back with ``weights_only=True``) under a key that
hashes the whole configuration.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pathlib
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

import refdiff as rd
from refdiff.training import per_sample_mse
from _digits import NULL_LABEL, NUM_CLASSES, Digits

EMB_IN = 64  # width of the sinusoidal features


def _as_timesteps(t, batch: int) -> torch.Tensor:
    """refdiff's loop passes a Python int; training passes an int64 tensor (B,)."""
    if isinstance(t, int):
        return torch.full((batch,), t, dtype=torch.int64)
    return t


def _embedding_mlp(emb_dim: int, zero_last: bool = False) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(EMB_IN, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
    if zero_last:  # a new input that starts as a no-op (the distilled student's scale)
        nn.init.zeros_(mlp[2].weight)
        nn.init.zeros_(mlp[2].bias)
    return mlp


class Block(nn.Module):
    """h + W₂·SiLU(W₁·LN(h) + E·SiLU(e)): a residual MLP block modulated by the embedding."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.emb = nn.Linear(width, 2 * width), nn.Linear(emb_dim, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + self.emb(F.silu(e))))


class Trunk(nn.Module):
    """64 pixels → width → blocks → ``out`` features, with a time embedding."""

    def __init__(self, out: int, width: int, depth: int, emb_dim: int):
        super().__init__()
        self.time = _embedding_mlp(emb_dim)
        self.inp = nn.Linear(64, width)
        self.blocks = nn.ModuleList(Block(width, emb_dim) for _ in range(depth))
        self.norm, self.out = nn.LayerNorm(width), nn.Linear(width, out)

    def forward(self, x: torch.Tensor, t, extra: torch.Tensor | None = None) -> torch.Tensor:
        t = _as_timesteps(t, x.shape[0])
        e = self.time(rd.sinusoidal_embedding(t, EMB_IN, dtype=x.dtype))  # (B, emb_dim)
        if extra is not None:
            e = e + extra
        h = self.inp(x.reshape(x.shape[0], -1))  # (B, 1, 8, 8) → (B, width)
        for block in self.blocks:
            h = block(h, e)
        return self.out(self.norm(h))


class Denoiser(nn.Module):
    """ε_θ(x_t, t, c) for 8×8 digits; c = labels (B,) with 10 = ∅, or (labels, scale) for
    the scale-conditioned student."""

    def __init__(self, width: int = 192, depth: int = 3, emb_dim: int = 128,
                 scale_conditioned: bool = False):
        super().__init__()
        self.trunk = Trunk(64, width, depth, emb_dim)
        self.label = nn.Embedding(NUM_CLASSES + 1, emb_dim)
        self.scale = _embedding_mlp(emb_dim, zero_last=True) if scale_conditioned else None

    def forward(self, x: torch.Tensor, t, c) -> torch.Tensor:
        if self.scale is not None:
            c, s = c
            w_emb = rd.guidance_scale_embedding(s, EMB_IN, dtype=x.dtype)  # of w = s − 1
            extra = self.label(c) + self.scale(w_emb)
        else:
            extra = self.label(c)
        return self.trunk(x, t, extra).reshape(x.shape)


class NoisyClassifier(nn.Module):
    """Logits of p_φ(y | x_t, t) (10 classes)."""

    def __init__(self, width: int = 128, depth: int = 2, emb_dim: int = 64):
        super().__init__()
        self.trunk = Trunk(NUM_CLASSES, width, depth, emb_dim)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.trunk(x, t)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``p_uncond`` (condition dropout) and ``prediction_type``,
    ``weighting`` apply to denoisers; ``scale_min``/``scale_max`` to distillation."""

    steps: int = 4000
    batch: int = 128
    lr: float = 1e-3
    ema: float = 0.999
    seed: int = 0
    num_train_timesteps: int = 1000
    p_uncond: float = 0.15
    prediction_type: str = "epsilon"
    weighting: str = "none"
    scale_min: float = 1.0
    scale_max: float = 6.0
    width: int = 192
    depth: int = 3

    def schedule(self) -> rd.Schedule:
        return rd.cosine_schedule(self.num_train_timesteps)


def _fit(model: nn.Module, cfg: TrainConfig, loss_fn: Callable[[torch.Generator], torch.Tensor]):
    """AdamW with cosine decay, and an EMA of the weights (returned)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    losses = []
    for step in range(cfg.steps):
        loss = loss_fn(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1.0 - decay)
        losses.append(float(loss.detach()))
    tail = losses[-max(1, cfg.steps // 10):]
    return ema.eval(), sum(tail) / len(tail)


def _batch(data: Digits, cfg: TrainConfig, gen: torch.Generator):
    idx = torch.randint(data.x_train.shape[0], (cfg.batch,), generator=gen)
    return data.x_train[idx], data.y_train[idx]


def _noised(x0: torch.Tensor, cfg: TrainConfig, gen: torch.Generator):
    """(t, ᾱ_t, ε, x_t) for a batch: DDPM Algorithm 1, lines 3–5, through refdiff."""
    t = rd.sample_timesteps(x0, cfg.num_train_timesteps, generator=gen)
    ab = rd.alpha_bar_at(cfg.schedule(), t)
    noise = torch.randn(x0.shape, generator=gen)
    return t, ab, noise, rd.q_sample(x0, ab, noise)


def train_denoiser(data: Digits, cfg: TrainConfig):
    """The conditional denoiser, trained with condition dropout (CFG Algorithm 1)."""
    torch.manual_seed(cfg.seed)
    model = Denoiser(cfg.width, cfg.depth)

    def loss_fn(gen):
        x0, y = _batch(data, cfg, gen)
        y, _ = rd.drop_condition(y, NULL_LABEL, cfg.p_uncond, generator=gen)
        t, ab, noise, x_t = _noised(x0, cfg, gen)
        return rd.diffusion_loss(model(x_t, t, y), x0, noise, ab, cfg.prediction_type,
                                 weighting=cfg.weighting)

    return _fit(model, cfg, loss_fn)


def train_noisy_classifier(data: Digits, cfg: TrainConfig):
    """p_φ(y | x_t, t): cross-entropy on q_sample'd digits at uniform t (CG §4)."""
    torch.manual_seed(cfg.seed)
    model = NoisyClassifier()

    def loss_fn(gen):
        x0, y = _batch(data, cfg, gen)
        t, ab, noise, _ = _noised(x0, cfg, gen)
        return rd.noisy_classifier_loss(model, x0, y, t, ab, noise)

    return _fit(model, cfg, loss_fn)


def distil_student(data: Digits, teacher: Denoiser, cfg: TrainConfig):
    """Guidance distillation, stage one: the student at (x_t, t, y, s) regresses onto the
    teacher's CFG output at s ~ U[s_min, s_max]; initialised from the teacher."""
    torch.manual_seed(cfg.seed)
    student = Denoiser(cfg.width, cfg.depth, scale_conditioned=True)
    student.load_state_dict(teacher.state_dict(), strict=False)  # the scale MLP starts at 0
    null = torch.full((cfg.batch,), NULL_LABEL)

    def loss_fn(gen):
        x0, y = _batch(data, cfg, gen)
        t, _, _, x_t = _noised(x0, cfg, gen)
        s = rd.sample_guidance_scales(x0, cfg.scale_min, cfg.scale_max, generator=gen)
        with torch.no_grad():
            target = rd.guidance_distillation_target(teacher(x_t, t, null), teacher(x_t, t, y), s)
        return per_sample_mse(student(x_t, t, (y, s.float())), target).mean()

    return _fit(student, cfg, loss_fn)


def cached(cache_dir: pathlib.Path | None, name: str, cfg: TrainConfig,
           build: Callable[[], nn.Module], train: Callable[[], tuple[nn.Module, float]], extra_key: str = ""):
    """Load a state dict trained with this exact configuration, or train and save one.

    Returns ``(model, info)`` with info = {"train_seconds", "final_loss", "cached"}; the
    training time is the one measured when the weights were made.
    """
    key = hashlib.sha256(json.dumps([name, asdict(cfg), extra_key, torch.__version__],
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir / f"{name}-{key}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        model = build()
        model.load_state_dict(torch.load(path, weights_only=True))
        info = json.loads(path.with_suffix(".json").read_text())
        return model.eval(), {**info, "cached": True}
    t0 = time.perf_counter()
    model, final_loss = train()
    info = {"train_seconds": round(time.perf_counter() - t0, 2), "final_loss": round(final_loss, 5)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps(info))
    return model, {**info, "cached": False}


def as_refdiff_model(net: nn.Module) -> Callable:
    """``model(x_t, t, c)`` for :func:`refdiff.sample`, evaluated without autograd (the
    classifier of classifier guidance keeps its own autograd)."""

    def model(x_t, t, c):
        with torch.no_grad():
            return net(x_t, t, c)

    return model


def teacher_config(quick: bool, seed: int = 0) -> TrainConfig:
    """The CFG denoiser of every example (quick: a few hundred steps, for the tests)."""
    return TrainConfig(steps=300 if quick else 6000, seed=seed)


def get_teacher(data: Digits, quick: bool, cache_dir, seed: int = 0):
    """The conditional denoiser trained with condition dropout (p_uncond = 0.15), cached."""
    cfg = teacher_config(quick, seed)
    return cached(cache_dir, "denoiser", cfg, lambda: Denoiser(cfg.width, cfg.depth),
                  lambda: train_denoiser(data, cfg))


def classifier_config(quick: bool, seed: int = 0) -> TrainConfig:
    """The noisy classifier p_φ(y | x_t, t) of the classifier-guidance example."""
    return TrainConfig(steps=300 if quick else 4000, seed=seed)


def get_noisy_classifier(data: Digits, quick: bool, cache_dir, seed: int = 0):
    cfg = classifier_config(quick, seed)
    return cached(cache_dir, "noisy-classifier", cfg, NoisyClassifier,
                  lambda: train_noisy_classifier(data, cfg))


def student_config(quick: bool, seed: int = 0) -> TrainConfig:
    """Guidance distillation: s ~ U[1, 6] (the paper's w = s − 1 in [0, 5]), lower lr."""
    return TrainConfig(steps=200 if quick else 5000, lr=5e-4, seed=seed, scale_min=1.0,
                       scale_max=6.0)


def get_student(data: Digits, teacher: Denoiser, quick: bool, cache_dir, seed: int = 0):
    cfg = student_config(quick, seed)
    key = json.dumps(asdict(teacher_config(quick, seed)), sort_keys=True)  # the teacher it copies
    return cached(cache_dir, "student", cfg,
                  lambda: Denoiser(cfg.width, cfg.depth, scale_conditioned=True),
                  lambda: distil_student(data, teacher, cfg), extra_key=key)
