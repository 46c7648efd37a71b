"""CUDA devices: whether the CUDA engine can run here, and on what (never raises).

Importing this module needs neither CuPy nor a GPU.
"""
from __future__ import annotations

import importlib

from densenn.config import setting

try:
    import cupy
except Exception as _exc:  # ImportError, or a CuPy build that cannot load its runtime
    cupy = None
    _CUPY_ERROR: Exception | None = _exc
else:
    _CUPY_ERROR = None


def _env_flag(name: str) -> bool:
    return bool(setting(name))


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def unavailable_reason(device: int = 0) -> str | None:
    """None when the CUDA engine can run on ``device`` here, else why not (never raises)."""
    try:
        if cupy is None:
            return f"engine 'cuda' needs CuPy ({_CUPY_ERROR}): pip install 'densenn[cuda]'"
        try:
            ok = cupy.cuda.is_available()
        except Exception as exc:
            return f"no CUDA device: {type(exc).__name__}: {exc}"
        if not ok:
            return "no CUDA device: cupy.cuda.is_available() is False"
        count = cupy.cuda.runtime.getDeviceCount()
        if not 0 <= device < count:
            return f"no CUDA device {device}: this machine has {count} (cuda:0 to cuda:{count - 1})"
        try:
            importlib.import_module("cupy_backends.cuda.libs.cublas")   # loads libcublas
        except Exception as exc:
            return (f"CuPy cannot load cuBLAS ({exc}); install the CUDA libraries: "
                    "pip install 'cupy-cuda12x[ctk]' (or the toolkit)")
        try:
            cupy.cuda.nvrtc.getVersion()
        except Exception as exc:
            return (f"CuPy cannot load NVRTC, which compiles the kernels ({exc}); "
                    "pip install 'cupy-cuda12x[ctk]' (or the toolkit)")
        return None
    except Exception as exc:  # a broken driver must not break `densenn info`
        return f"CUDA check failed: {type(exc).__name__}: {exc}"


def describe() -> dict:
    """What ``densenn info`` shows for CUDA: whether it works, and on what. Never raises."""
    info: dict = {"engine": "cuda", "available": False, "reason": None, "cupy": None,
                  "cuda_runtime": None, "cuda_driver": None, "nvrtc": None,
                  "tf32_default": _env_flag("DENSENN_TF32"), "devices": []}
    try:
        if cupy is None:
            info["reason"] = unavailable_reason()
            return info
        info["cupy"] = cupy.__version__
        for key, get in (("cuda_runtime", lambda: cupy.cuda.runtime.runtimeGetVersion()),
                         ("cuda_driver", lambda: cupy.cuda.runtime.driverGetVersion())):
            try:
                version = int(get())
                info[key] = _cuda_version(version) if version > 0 else None
            except Exception:
                pass
        try:
            info["nvrtc"] = ".".join(str(v) for v in cupy.cuda.nvrtc.getVersion())
        except Exception:
            pass
        reason = unavailable_reason()
        if reason is not None and not reason.startswith("CuPy cannot"):
            info["reason"] = reason
            return info
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            dev: dict = {"id": i}
            try:
                props = cupy.cuda.runtime.getDeviceProperties(i)
                name = props.get("name", b"")
                dev["name"] = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
                dev["memory_bytes"] = int(props.get("totalGlobalMem", 0))
                dev["compute_capability"] = f"{props.get('major', '?')}.{props.get('minor', '?')}"
                dev["multiprocessors"] = int(props.get("multiProcessorCount", 0))
                with cupy.cuda.Device(i):
                    free, total = cupy.cuda.runtime.memGetInfo()
                dev["free_bytes"] = int(free)
            except Exception as exc:
                dev["error"] = f"{type(exc).__name__}: {exc}"
            info["devices"].append(dev)
        info["reason"] = reason
        info["available"] = reason is None
    except Exception as exc:
        info["available"] = False
        info["reason"] = f"{type(exc).__name__}: {exc}"
    return info
