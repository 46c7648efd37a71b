"""Optimizers and learning-rate schedules.

An optimizer holds its hyper-parameters and, once bound to a network's
parameters, the state buffers it needs (velocity; first and second moments) on
the network's engine. ``step`` runs one update per parameter through the
engine's ``map`` of the optimizer's declared update; nothing is allocated per
step. L2 weight decay is applied to weights only, not biases. ``clipnorm=`` (every
optimizer) clips the gradients by their global L2 norm on the engine (see densenn.optim.clip).
"""
from densenn.optim.adam import ADAM_CLIP_UPDATE, ADAM_UPDATE, Adam, AdamW, adam_update
from densenn.optim.base import Optimizer
from densenn.optim.clip import CLIP_FACTOR, CLIP_GRADIENT, SUM_SQUARES
from densenn.optim.registry import _REGISTERED, OPTIMIZERS, get_optimizer, register_optimizer
from densenn.optim.schedules import SCHEDULES, Constant, CosineDecay, LinearDecay, Schedule, StepDecay, get_schedule
from densenn.optim.sgd import (
    MOMENTUM_CLIP_UPDATE,
    MOMENTUM_UPDATE,
    NESTEROV_CLIP_UPDATE,
    NESTEROV_UPDATE,
    SGD,
    SGD_CLIP_UPDATE,
    SGD_UPDATE,
    sgd_update,
)

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "OPTIMIZERS", "register_optimizer", "get_optimizer",
           "Schedule", "Constant", "StepDecay", "LinearDecay", "CosineDecay", "SCHEDULES", "get_schedule",
           "SGD_UPDATE", "MOMENTUM_UPDATE", "NESTEROV_UPDATE", "ADAM_UPDATE", "sgd_update", "adam_update",
           "SGD_CLIP_UPDATE", "MOMENTUM_CLIP_UPDATE", "NESTEROV_CLIP_UPDATE", "ADAM_CLIP_UPDATE",
           "SUM_SQUARES", "CLIP_FACTOR", "CLIP_GRADIENT",
           "_REGISTERED"]
