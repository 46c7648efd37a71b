"""The CUDA engine: CuPy arrays, cuBLAS, the declared operations as CUDA C generated from
their bodies (``kernels``, from densenn.kernels.gpu), the training step replayed as one CUDA
graph (``graph``); ``devices`` imports CuPy and describes the GPU."""
from densenn.backend.cuda.engine import CUDAEngine, create_engine, describe, sources, unavailable_reason

__all__ = ["CUDAEngine", "create_engine", "describe", "unavailable_reason", "sources"]
