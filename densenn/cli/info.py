"""``densenn info``: versions, CPU, BLAS and threads, and which engines work here (and why not).

The engines are probed by the backends themselves: ``densenn.backend.available_engines()``
and each device backend's ``describe()``; this module only gathers and prints.
"""
from __future__ import annotations

import importlib
import os
import platform
import sys

import numpy as np

from densenn.backend.cpu.threads import usable_cores
from densenn.cli.common import _clean, _engine, _guard, _oneline, _print_json

#: the packages whose versions info shows (distribution names)
PACKAGES = ("numpy", "scipy", "scikit-learn", "numba", "threadpoolctl", "safetensors", "matplotlib",
            "tqdm", "pyopencl", "pyclblast", "cupy-cuda12x")


def _version(module: str):
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        try:
            mod = __import__(module)
            return getattr(mod, "__version__", "installed")
        except Exception:
            return None


def _blas_info() -> dict:
    """BLAS and thread pools: threadpoolctl when installed, else NumPy's build configuration."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        __import__("scipy.linalg")   # load SciPy's BLAS so its pool is listed too
        from densenn.backend.cpu import mkl as cpu_mkl
        cpu_mkl.load()               # and MKL's, when installed

        pools = []
        for pool in threadpool_info():
            pools.append({k: pool.get(k) for k in ("user_api", "internal_api", "prefix", "version",
                                                   "num_threads", "threading_layer", "architecture", "filepath")
                          if pool.get(k) is not None})
        return {"source": "threadpoolctl", "pools": pools}
    facts: dict = {"source": "numpy.show_config"}
    try:
        config = np.show_config(mode="dicts")
        deps = config.get("Build Dependencies", {})
        for key in ("blas", "lapack"):
            if key in deps:
                facts[key] = {k: deps[key].get(k) for k in ("name", "version", "found", "openblas configuration")
                              if deps[key].get(k) is not None}
    except Exception as exc:  # older NumPy: no mode="dicts"
        facts["note"] = f"threadpoolctl not installed and NumPy's config unreadable ({_oneline(exc)})"
    return facts


def _threads_info(blas: dict) -> dict:
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                      "NUMBA_NUM_THREADS", "DENSENN_ENGINE", "DENSENN_NUMBA") if k in os.environ}
    out: dict = {"env": env}
    pools = blas.get("pools") or []
    blas_threads = [p.get("num_threads") for p in pools if p.get("user_api") == "blas"]
    if blas_threads:
        out["blas"] = max(t for t in blas_threads if t is not None)
    omp = [p.get("num_threads") for p in pools if p.get("user_api") == "openmp"]
    if omp:
        out["openmp"] = max(t for t in omp if t is not None)
    try:
        import numba

        out["numba"] = int(numba.config.NUMBA_NUM_THREADS)
    except Exception:
        pass
    return out


def _describe_backend(kind: str) -> dict:
    """``densenn.backend.<kind>.describe()`` (``available``, ``reason``, ``devices``, ...).

    The backend modules import without their device packages, so only a densenn build
    without the module ends here with a reason."""
    try:
        module = importlib.import_module(f"densenn.backend.{kind}")
    except Exception as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {_oneline(exc)}"}
    return module.describe()


def _engines() -> dict:
    from densenn.backend import available_engines

    return {kind: {"available": reason is None, "reason": reason} for kind, reason in available_engines().items()}


def collect_info() -> dict:
    from densenn.backend import default_engine_name

    info: dict = {}
    info["densenn"] = _guard(lambda: __import__("densenn").__version__)
    info["python"] = _guard(lambda: f"{platform.python_implementation()} {platform.python_version()}")
    info["executable"] = sys.executable
    info["platform"] = _guard(platform.platform)
    info["machine"] = _guard(platform.machine)
    info["processor"] = _guard(lambda: platform.processor() or None)
    info["packages"] = {name: _guard(lambda name=name: _version(name)) for name in PACKAGES}
    info["cpu_count"] = _guard(os.cpu_count)
    info["usable_cpus"] = _guard(usable_cores)
    blas = _guard(_blas_info)
    info["blas"] = blas
    info["threads"] = _guard(lambda: _threads_info(blas if isinstance(blas, dict) else {}))
    info["engines"] = _guard(_engines)
    info["default_engine"] = _guard(default_engine_name)
    info["cpu_engine"] = _guard(lambda: repr(_engine("cpu")))
    info["opencl"] = _guard(lambda: _describe_backend("opencl"))
    info["cuda"] = _guard(lambda: _describe_backend("cuda"))
    return _clean(info)


def _print_info(info: dict) -> None:
    def show(label, value):
        print(f"{label:<16}{value}")

    packages = info.get("packages") or {}
    show("densenn", info.get("densenn"))
    show("python", f"{info.get('python')} ({info.get('executable')})")
    show("platform", info.get("platform"))
    show("packages", ", ".join(f"{k} {v}" for k, v in packages.items() if v and not str(v).startswith("error")))
    show("missing", ", ".join(k for k, v in packages.items() if not v) or "-")
    show("cpus", f"{info.get('cpu_count')} ({info.get('usable_cpus')} usable by this process)")
    blas = info.get("blas")
    if isinstance(blas, dict) and blas.get("pools") is not None:
        for pool in blas["pools"]:
            show("thread pool", f"{pool.get('user_api')}: {pool.get('internal_api')} {pool.get('version') or ''} "
                                f"{pool.get('num_threads')} threads"
                                + (f", {pool.get('architecture')}" if pool.get("architecture") else "")
                                + (f" ({pool.get('filepath')})" if pool.get("filepath") else ""))
    elif isinstance(blas, dict):
        for key in ("blas", "lapack"):
            if key in blas:
                show(key, ", ".join(f"{k} {v}" for k, v in blas[key].items()))
        if "note" in blas:
            show("blas", blas["note"])
    else:
        show("blas", blas)
    threads = info.get("threads")
    if isinstance(threads, dict):
        parts = [f"{k} {v}" for k, v in threads.items() if k != "env"]
        parts += [f"{k}={v}" for k, v in (threads.get("env") or {}).items()]
        show("threads", ", ".join(parts) or "-")
    show("default engine", f"{info.get('default_engine')} ({info.get('cpu_engine')})")
    engines = info.get("engines")
    if isinstance(engines, dict):
        for kind, state in engines.items():
            show(f"engine {kind}", "available" if state.get("available") else f"not available: {state.get('reason')}")
    else:
        show("engines", engines)
    opencl = info.get("opencl")
    if isinstance(opencl, dict):
        devices = opencl.get("devices")
        if devices:
            for dev in devices:
                show("opencl", dev if not isinstance(dev, dict) else ", ".join(f"{k} {v}" for k, v in dev.items()))
        elif opencl.get("reason"):
            show("opencl", f"not available: {opencl.get('reason')}")
        else:
            show("opencl", "no devices")
    else:
        show("opencl", opencl)
    cuda = info.get("cuda")
    if isinstance(cuda, dict):
        for dev in cuda.get("devices") or []:
            mem = dev.get("memory_bytes")
            show("cuda", f"device {dev.get('id')}: {dev.get('name')}, compute {dev.get('compute_capability')}"
                         + (f", {mem / 2**30:.1f} GiB" if mem else "")
                         + (f" ({dev['error']})" if dev.get("error") else ""))
        versions = ", ".join(f"{k} {cuda[k]}" for k in ("cupy", "cuda_runtime", "cuda_driver", "nvrtc") if cuda.get(k))
        state = "available" if cuda.get("available") else f"not available: {cuda.get('reason')}"
        show("cuda", state + (f" ({versions})" if versions else ""))
    else:
        show("cuda", cuda)


def cmd_info(args) -> int:
    info = collect_info()
    if args.json:
        _print_json(info)
    else:
        _print_info(info)
    return 0
