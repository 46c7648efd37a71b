"""Optimizers and learning-rate schedules.

An optimizer holds its hyper-parameters and, once bound to a network's
parameters, the state buffers it needs (velocity; first and second moments) on
the network's engine. ``step`` runs one update per parameter through the
engine's ``map`` of the optimizer's declared update; nothing is allocated per
step. L2 weight decay is applied to weights only, not biases.
"""
from densenn.optim.adam import ADAM_UPDATE, Adam, AdamW, adam_update
from densenn.optim.base import Optimizer
from densenn.optim.registry import _REGISTERED, OPTIMIZERS, get_optimizer, register_optimizer
from densenn.optim.schedules import SCHEDULES, Constant, CosineDecay, LinearDecay, Schedule, StepDecay, get_schedule
from densenn.optim.sgd import MOMENTUM_UPDATE, NESTEROV_UPDATE, SGD, SGD_UPDATE, sgd_update

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "OPTIMIZERS", "register_optimizer", "get_optimizer",
           "Schedule", "Constant", "StepDecay", "LinearDecay", "CosineDecay", "SCHEDULES", "get_schedule",
           "SGD_UPDATE", "MOMENTUM_UPDATE", "NESTEROV_UPDATE", "ADAM_UPDATE", "sgd_update", "adam_update",
           "_REGISTERED"]
