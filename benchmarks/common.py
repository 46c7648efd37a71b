"""Shared helpers of the benchmark scripts: timing, the machine's description, tables, JSON.

Timing follows docs/benchmarks.md (and the project's performance guide): warm up, then
take the median of repeats timed with ``time.perf_counter``. Libraries compared with each
other are timed *interleaved* (round-robin: one sample of each per round), so that the
noise of a shared machine falls on all of them alike; report ratios, not absolute times.
"""
from __future__ import annotations

import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"

if str(ROOT) not in sys.path:          # run as a script from anywhere: use this checkout
    sys.path.insert(0, str(ROOT))


# -- timing ------------------------------------------------------------------------------
@dataclass
class Timing:
    """Seconds per call: the median (what is reported), the minimum, and every sample."""

    median: float
    min: float
    samples: list = field(default_factory=list)

    @property
    def ms(self) -> float:
        return self.median * 1e3

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "samples_s": list(self.samples)}


def _sample(fn, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def auto_number(fn, target_s: float = 0.02, cap: int = 1000) -> int:
    """Calls per sample so that one sample lasts about ``target_s`` (1 for slow functions)."""
    once = _sample(fn, 1)
    if once >= target_s:
        return 1
    return int(min(cap, max(1, math.ceil(target_s / max(once, 1e-7)))))


def timeit(fn, repeats: int = 7, warmup: int = 2, number: int | None = None, sync=None) -> Timing:
    """Time ``fn()``: ``warmup`` calls, then ``repeats`` samples of ``number`` calls each.

    ``number=None`` picks it so that a sample lasts ~20 ms. ``sync`` (e.g. a device
    synchronise) is called after each sample, inside the timed region.
    """
    return interleaved({"f": fn}, repeats, warmup, number, sync)["f"]


#: seconds to wait before timing the next library: idle BLAS threads stop spinning
SETTLE_S = 0.3


def settle():
    """Let the previous library's idle BLAS threads go to sleep before the next one is timed.

    OpenBLAS's workers (NumPy's, SciPy's, so scikit-learn's and densenn's without MKL)
    spin for about 0.1 s after each call. On 2 cores that spinning thread takes a core
    from whatever runs next: PyTorch timed straight after an OpenBLAS call ran 30-40%
    slower here. Every library is timed after the same pause.
    """
    time.sleep(SETTLE_S)


def interleaved(fns: dict, repeats: int = 7, warmup: int = 2, number: int | None = None, sync=None,
                target_s: float = 0.02) -> dict:
    """Time several functions round-robin; returns {name: Timing} (seconds per call).

    Each round takes one sample of every function, so a burst of load on a shared
    machine hits all of them; before each sample the machine settles (``settle``).
    ``number=None`` makes each sample last about ``target_s``. Garbage collection is
    off while timing (as in ``timeit``).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        if sync:
            sync()
    numbers = {k: (number or auto_number(fn, target_s)) for k, fn in fns.items()}
    samples = {k: [] for k in fns}
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for k, fn in fns.items():
                settle()
                start = time.perf_counter()
                for _ in range(numbers[k]):
                    fn()
                if sync:
                    sync()
                samples[k].append((time.perf_counter() - start) / numbers[k])
    finally:
        if was_enabled:
            gc.enable()
    return {k: Timing(statistics.median(v), min(v), v) for k, v in samples.items()}


# -- the machine -------------------------------------------------------------------------
# Every fact below is optional: one this platform cannot give (no /proc, no affinity, no
# torch, an older library without the call) is left out of run.json, hence the bare
# ``except ...: pass`` lines; none of them stands for unfinished work.
def _cpu_info() -> dict:
    out = {"model": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        out["usable_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if m:
            out["model"] = m.group(1).strip()
        flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        if flags:
            fl = set(flags.group(1).split())
            out["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                                       "avx512_bf16", "amx_tile") if f in fl]
        cores = {(p, c) for p, c in re.findall(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)", text, re.S)}
        if cores:
            out["physical_cores"] = len(cores)
    except OSError:
        pass
    try:
        mem = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        out["memory_gib"] = round(int(mem.group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    return out


def loadavg() -> list | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _version(module: str):
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "?")
    except Exception as exc:  # an absent or broken package is a fact to record, not an error
        return None if isinstance(exc, ImportError) else f"import failed: {type(exc).__name__}"


def blas_info() -> list:
    """threadpoolctl's view of the BLAS/OpenMP libraries loaded now (internal_api, architecture, threads)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"error": "threadpoolctl not installed"}]
    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "num_threads", "threading_layer",
            "filepath")
    out = []
    for info in threadpool_info():
        row = {k: info.get(k) for k in keys if info.get(k) is not None}
        path = str(info.get("filepath", ""))
        # which package ships this copy (numpy.libs, scipy.libs, torch/lib, scikit_learn.libs, ...)
        m = re.search(r"site-packages/([A-Za-z0-9_]+?)(?:\.libs|/)", path)
        if m:
            row["shipped_by"] = m.group(1)
        out.append(row)
    return out


def torch_info() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    out = {"version": torch.__version__, "num_threads": torch.get_num_threads(),
           "num_interop_threads": torch.get_num_interop_threads()}
    try:
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:
        pass
    try:
        show = torch.__config__.show()
        for key in ("BLAS_INFO", "LAPACK_INFO"):
            m = re.search(key + r"=([^,\s]+)", show)
            if m:
                out[key.lower()] = m.group(1)
        out["mkl_available"] = bool(torch.backends.mkl.is_available())
        out["mkldnn_available"] = bool(torch.backends.mkldnn.is_available())
        para = torch.__config__.parallel_info()
        m = re.search(r"Intel\(R\) oneAPI Math Kernel Library Version ([^\n]+)", para)
        if m:
            out["mkl"] = m.group(1).strip()
        m = re.search(r"ATen parallel backend: (\S+)", para)
        if m:
            out["parallel_backend"] = m.group(1)
    except Exception as exc:
        out["config_error"] = repr(exc)
    out["note"] = ("PyTorch's BLAS (MKL) is linked into libtorch_cpu, so threadpoolctl does not list it; "
                   "its threads follow torch.set_num_threads")
    return out


def machine(threads: int | None = None) -> dict:
    """Everything needed to read the numbers later: CPU, BLAS kernels and threads, versions, date."""
    versions = {"python": platform.python_version()}
    for mod in ("numpy", "scipy", "densenn", "torch", "sklearn", "jax", "numba", "threadpoolctl", "matplotlib"):
        versions[mod] = _version(mod)
    densenn_info = {}
    try:
        import densenn
        from densenn.backend import get_engine
        e = get_engine("cpu")
        densenn_info = {"path": str(Path(densenn.__file__).parent), "cpu_engine": repr(e),
                        "fused_kernels": bool(getattr(e, "fused", False))}
    except Exception as exc:
        densenn_info = {"error": repr(exc)}
    git = None
    try:
        import subprocess
        git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10).stdout.strip() or None
    except Exception:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": _cpu_info(),
        "threads_used": threads,
        "loadavg_at_start": loadavg(),
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("OPENBLAS", "OMP_", "MKL_", "DENSENN", "NUMBA_"))},
        "blas": blas_info(),
        "torch": torch_info(),
        "densenn": densenn_info,
        "git": git,
        "versions": versions,
    }


def describe_machine(m: dict) -> str:
    cpu = m["cpu"]
    lines = [f"{m['date']}  {cpu.get('model')}, {cpu.get('usable_cpus', cpu.get('logical_cpus'))} usable CPUs "
             f"({', '.join(cpu.get('simd', []))}), {cpu.get('memory_gib')} GiB; load {m.get('loadavg_at_start')}"]
    v = m["versions"]
    lines.append("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    for b in m["blas"]:
        if "internal_api" in b:
            lines.append(f"  {b.get('user_api')} of {b.get('shipped_by', '?')}: {b.get('internal_api')} "
                         f"{b.get('version', '')} {b.get('architecture', '')}".rstrip()
                         + f", {b.get('num_threads')} threads ({b.get('prefix')})")
    t = m.get("torch")
    if t:
        lines.append(f"  torch: BLAS {t.get('blas_info')} ({t.get('mkl', '?')}), CPU capability "
                     f"{t.get('cpu_capability')}, {t.get('num_threads')} threads")
    lines.append(f"  environment: {m['env'] or 'no OPENBLAS_/OMP_/MKL_ variables set'}; threads used: "
                 f"{m['threads_used']}; densenn {m['densenn']}")
    return "\n".join(lines)


def limit_threads(n: int):
    """Pin every library to n threads: BLAS/OpenMP pools (threadpoolctl), PyTorch, Numba.

    Returns the threadpoolctl controller (keep a reference for the run's lifetime).
    """
    ctl = None
    from densenn.backend import get_engine
    get_engine("cpu").set_threads(n)    # also loads MKL when densenn uses it, so that its pool is limited too
    try:
        from threadpoolctl import threadpool_limits
        ctl = threadpool_limits(limits=n)
    except ImportError:
        pass
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass
    except RuntimeError:
        pass
    try:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except Exception:
        pass
    return ctl


# -- tables ------------------------------------------------------------------------------------
def fmt(value, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if unit == "%":
        return f"{value:.2f}%"
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return text + (f" {unit}" if unit else "")


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def table(headers: list, rows: list, aligns: str | None = None) -> str:
    """A plain-text table; ``aligns`` one char per column ('<' or '>'), default first left, rest right."""
    cells = [[str(c) for c in headers]] + [[("—" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    aligns = aligns or "<" + ">" * (len(headers) - 1)
    out = []
    for n, r in enumerate(cells):
        out.append("  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, aligns, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# -- JSON ----------------------------------------------------------------------------------------
def _jsonable(obj):
    if isinstance(obj, Timing):
        return obj.to_dict()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    if hasattr(obj, "item") and callable(obj.item):      # NumPy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return repr(obj)


def _clean(obj):
    """Non-finite floats become None (JSON has no NaN); containers are walked."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Timing):
        return _clean(obj.to_dict())
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _clean(obj.item())
    return obj


def write_json(path, data) -> str:
    """Write ``data`` as JSON atomically: a temporary file in the same folder, then os.replace."""
    data = _clean(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=_jsonable, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, 0o644)                 # mkstemp makes it private; results are for everyone
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return str(path)


def rel_err(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def interleaved_epochs(libs: dict, epochs: int, log) -> dict:
    """Train every library epoch by epoch, interleaved: epoch e of each before epoch e+1 of any.

    ``libs`` is {name: (run one epoch, test accuracy)}; each epoch is timed after the machine
    settles, the accuracy measured outside the timed region; a row per epoch goes to ``log``.
    Returns {name: {"seconds": [...], "test_accuracy": [...]}}.
    """
    per = {k: {"seconds": [], "test_accuracy": []} for k in libs}
    hdr = ["epoch"] + [f"{k} {c}" for k in libs for c in ("s", "acc %")]
    log(table(hdr, []).splitlines()[0])
    for epoch in range(epochs):
        row = [str(epoch + 1)]
        for name, (run_epoch, acc) in libs.items():
            gc.collect()
            settle()
            t0 = time.perf_counter()
            run_epoch()
            dt = time.perf_counter() - t0
            a = acc()
            per[name]["seconds"].append(dt)
            per[name]["test_accuracy"].append(a)
            row += [f"{dt:.2f}", f"{100 * a:.2f}"]
        log("  ".join(f"{c:>{max(len(h), 5)}}" for c, h in zip(row, hdr)))
    return per


def load_mnist_or_skip(log):
    """(MNIST from MNIST_DIR, None), or (None, a section's result saying why it was skipped)."""
    from densenn.datasets import load_mnist

    try:
        return load_mnist(MNIST_DIR), None
    except Exception as exc:
        reason = f"MNIST not loadable from {MNIST_DIR}: {type(exc).__name__}: {exc}"
        log(reason)
        return None, {"skipped_all": reason}
