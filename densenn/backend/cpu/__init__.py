"""The CPU engine: NumPy arrays, the BLAS (SciPy's OpenBLAS or Intel MKL, see ``mkl``),
the declared operations as Numba loops (``fused``) spread over row blocks on all cores
(``threads``), and their NumPy forms where Numba is absent."""
from densenn.backend.cpu.engine import ALIGN, CPUEngine

__all__ = ["CPUEngine", "ALIGN"]
