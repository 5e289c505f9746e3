"""Per-iteration schedules of learning rate, weight decay, EMA momentum and teacher temperature.

Precomputed as arrays indexed by iteration, as DINOv2 does, so a resumed run
reads exactly the value an uninterrupted run would have used.

A stage shorter than the whole run (the head-fitting stage) gets schedules of
its own: every length the config gives in epochs (LR warm-up, teacher
temperature warm-up, prototype freeze) is scaled by the stage's share of the
run's iterations, and the cosine decays run to the stage's own end. Its 2,000
iterations in Table 4's run thus warm up for 381, freeze the prototypes for 24
and end at ``min_lr``, where the run's lengths would warm up through all of
them and freeze the prototypes for 1,250.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.distill.config import DistillConfig


def cosine_schedule(base: float, final: float, total: int, warmup: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """``total`` values: linear from ``warmup_start`` to ``base`` over ``warmup``, then cosine down to ``final``."""
    warmup = min(warmup, total)
    ramp = np.linspace(warmup_start, base, warmup, endpoint=False) if warmup else np.zeros(0)
    steps = np.arange(total - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate([ramp, cosine])


@dataclass(frozen=True)
class Schedules:
    lr: np.ndarray
    prototype_lr: np.ndarray  # lr, but 0 while the prototype layers are frozen (DINOv2's last_layer_lr)
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    @classmethod
    def from_config(cls, config: DistillConfig, iterations: int) -> Schedules:
        """Schedules of a stage of ``iterations``; epoch lengths scaled by ``iterations / train.iterations``."""
        optim, loss = config.optim, config.loss
        per_epoch = config.train.iterations_per_epoch * iterations / config.train.iterations

        def span(epochs: int) -> int:
            return min(round(epochs * per_epoch), iterations)

        lr = cosine_schedule(
            optim.base_lr * math.sqrt(config.train.batch_size_total / 1024),
            optim.min_lr,
            iterations,
            span(optim.warmup_epochs),
        )
        prototype_lr = lr.copy()
        prototype_lr[: span(optim.freeze_prototypes_epochs)] = 0.0
        warmup_temp = span(loss.teacher_temp_warmup_epochs)
        temp = np.full(iterations, loss.teacher_temp)
        temp[:warmup_temp] = np.linspace(loss.warmup_teacher_temp, loss.teacher_temp, warmup_temp)
        return cls(
            lr=lr,
            prototype_lr=prototype_lr,
            weight_decay=cosine_schedule(optim.weight_decay, optim.weight_decay_end, iterations),
            momentum=cosine_schedule(optim.ema_momentum, 1.0, iterations),
            teacher_temp=temp,
        )
