"""Training: the fit loop over a TrainingNetwork, and its History."""
from densenn.training.fit import fit
from densenn.training.history import History

__all__ = ["fit", "History"]
