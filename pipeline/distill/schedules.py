"""Per-iteration schedules of learning rate, weight decay, EMA momentum and teacher temperature.

Precomputed as arrays indexed by iteration, as DINOv2 does, so a resumed run
reads exactly the value an uninterrupted run would have used.
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
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    @classmethod
    def from_config(cls, config: DistillConfig, iterations: int) -> Schedules:
        per_epoch = config.train.iterations_per_epoch
        optim, loss = config.optim, config.loss
        lr = optim.base_lr * math.sqrt(config.train.batch_size_total / 1024)
        warmup_temp = min(loss.teacher_temp_warmup_epochs * per_epoch, iterations)
        temp = np.full(iterations, loss.teacher_temp)
        temp[:warmup_temp] = np.linspace(loss.warmup_teacher_temp, loss.teacher_temp, warmup_temp)
        return cls(
            lr=cosine_schedule(lr, optim.min_lr, iterations, optim.warmup_epochs * per_epoch),
            weight_decay=cosine_schedule(optim.weight_decay, optim.weight_decay_end, iterations),
            momentum=cosine_schedule(optim.ema_momentum, 1.0, iterations),
            teacher_temp=temp,
        )
