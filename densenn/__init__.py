"""densenn: fully-connected neural networks from scratch, on CPU, OpenCL and CUDA.

The packages, bottom up (docs/architecture.md draws them)::

    kernels/      operations declared once (Map, RowMap, Sum) and their C and Python forms
    backend/      the engine protocol and one engine per device (cpu/, opencl/, cuda/)
    nn/           activations, costs, Dense (inference and training forms), the
                  TrainingNetwork (one step) and the Network (the user API)
    optim/        SGD (momentum, Nesterov), Adam/AdamW, learning-rate schedules
    training/     the fit loop, History, callbacks, checkpoints and resume
    datasets/     digits, MNIST, split, Standardizer
    cli/          the command line
"""
from densenn.backend import available_engines, get_engine, set_default_engine
from densenn.errors import DensennError, DensennException, EngineUnavailable, TrainingDiverged
from densenn.io import load
from densenn.nn.activation import ACTIVATIONS, ELU, Activation, LeakyReLU, get_activation, register_activation
from densenn.nn.activations_modern import GELU, SELU, GELUTanh, Mish, SiLU
from densenn.nn.cost import COSTS, get_cost, register_cost
from densenn.nn.dense import DenseInference, DenseTraining
from densenn.nn.gradcheck import check_gradients
from densenn.nn.init import INITIALIZERS
from densenn.nn.metrics import accuracy, confusion_matrix
from densenn.nn.network import (
    ActivationLayer,
    BatchNorm,
    Dense,
    Dropout,
    LayerNorm,
    Network,
    TrainingNetwork,
    from_onnx,
)
from densenn.optim import SGD, Adam, AdamW, CosineDecay, LinearDecay, StepDecay, get_optimizer, register_optimizer
from densenn.training import History
from densenn.training.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
from densenn.training.resume import resume

__version__ = "0.1.0"
__all__ = ["Network", "Dense", "Dropout", "BatchNorm", "LayerNorm", "ActivationLayer",
           "DenseInference", "DenseTraining", "TrainingNetwork", "History", "resume",
           "Callback", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau", "CSVLogger",
           "SGD", "Adam", "AdamW", "StepDecay", "LinearDecay", "CosineDecay", "get_optimizer",
           "Activation", "LeakyReLU", "ELU", "GELU", "GELUTanh", "SiLU", "Mish", "SELU", "ACTIVATIONS",
           "get_activation", "COSTS", "get_cost", "INITIALIZERS",
           "check_gradients", "accuracy", "confusion_matrix", "load", "get_engine", "set_default_engine",
           "available_engines", "from_onnx",
           "DensennError", "DensennException", "EngineUnavailable", "TrainingDiverged",
           "register_activation", "register_cost", "register_optimizer"]
