"""densenn: fully-connected neural networks from scratch, on CPU, OpenCL and CUDA.

The layers of the code, bottom up::

    backend/      the engine protocol and one engine per device (cpu, opencl, cuda)
    activation    activations with their derivative, in place
    layer         DenseInference (owns w, b) and DenseTraining (z, a, delta, ∇w, ∇b)
    cost          costs: value and gradient into the last layer
    optimizer     SGD (momentum, Nesterov), Adam/AdamW, learning-rate schedules
    network       Dense specs, Network (user API), TrainingNetwork (one step)
    train         the fit loop and History
"""
from densenn.activation import ACTIVATIONS, Activation, get_activation, register_activation
from densenn.backend import available_engines, get_engine, set_default_engine
from densenn.cost import COSTS, get_cost, register_cost
from densenn.errors import DensennError, DensennException, EngineUnavailable, TrainingDiverged
from densenn.gradcheck import check_gradients
from densenn.init import INITIALIZERS
from densenn.io import load
from densenn.layer import DenseInference, DenseTraining
from densenn.metrics import accuracy, confusion_matrix
from densenn.network import Dense, Network, TrainingNetwork
from densenn.optimizer import SGD, Adam, AdamW, CosineDecay, LinearDecay, StepDecay, get_optimizer, register_optimizer
from densenn.train import History

__version__ = "0.1.0"
__all__ = ["Network", "Dense", "DenseInference", "DenseTraining", "TrainingNetwork", "History",
           "SGD", "Adam", "AdamW", "StepDecay", "LinearDecay", "CosineDecay", "get_optimizer",
           "Activation", "ACTIVATIONS", "get_activation", "COSTS", "get_cost", "INITIALIZERS",
           "check_gradients", "accuracy", "confusion_matrix", "load", "get_engine", "set_default_engine",
           "available_engines", "DensennError", "DensennException", "EngineUnavailable", "TrainingDiverged",
           "register_activation", "register_cost", "register_optimizer"]
