"""OpenCL devices: what is installed, which devices there are, and which one an engine uses.

Importing this module needs neither PyOpenCL nor a device: ``list_devices`` and
``describe`` never raise, and say why the engine cannot run where it cannot.
"""
from __future__ import annotations

from densenn.errors import DensennError, EngineUnavailable

try:
    import pyopencl as cl
    import pyopencl.array as cla
except Exception as _exc:  # ImportError (pyopencl or mako missing) or a broken ICD loader
    cl = cla = None
    _OPENCL_ERROR: Exception | None = _exc
else:
    _OPENCL_ERROR = None

try:
    import pyclblast
except Exception as _exc:
    pyclblast = None
    _CLBLAST_ERROR: Exception | None = _exc
else:
    _CLBLAST_ERROR = None

INSTALL_HINT = ('pip install "densenn[opencl]" (PyOpenCL with PoCL, a CPU OpenCL device, '
                'plus pyclblast, which builds against CLBlast: apt-get install libclblast-dev cmake)')
NO_PLATFORM_HINT = ('install an OpenCL driver: PoCL for the CPU (pip install "pyopencl[pocl]"), '
                    "or your GPU vendor's ICD (e.g. nvidia-opencl-icd, intel-opencl-icd, rocm-opencl)")
DEVICE_ENV = "DENSENN_OPENCL_DEVICE"

# =========================================================================================
# Devices
# =========================================================================================
class DeviceList(list):
    """A list of device dicts that also says, in ``reason``, why the engine can't run (None if it can)."""

    def __init__(self, devices=(), reason: str | None = None):
        super().__init__(devices)
        self.reason = reason


def _unavailable_reason() -> str | None:
    if _OPENCL_ERROR is not None:
        name = getattr(_OPENCL_ERROR, "name", None)
        what = f"the Python package {name!r}" if name else f"PyOpenCL ({_OPENCL_ERROR})"
        return f"engine 'opencl' needs {what}: {INSTALL_HINT}"
    if _CLBLAST_ERROR is not None:
        return (f"engine 'opencl' needs pyclblast for its matrix products ({_CLBLAST_ERROR}): "
                "apt-get install libclblast-dev cmake, then pip install pyclblast")
    return None


def _platforms():
    """[(platform, [devices])], or EngineUnavailable when no OpenCL platform is installed."""
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:   # PLATFORM_NOT_FOUND_KHR from the ICD loader
        raise EngineUnavailable(f"engine 'opencl' found no OpenCL platform ({exc}); {NO_PLATFORM_HINT}") from None
    if not platforms:
        raise EngineUnavailable(f"engine 'opencl' found no OpenCL platform; {NO_PLATFORM_HINT}")
    out = []
    for p in platforms:
        try:
            devices = p.get_devices()
        except cl.Error:      # a platform without devices (DEVICE_NOT_FOUND)
            devices = []
        out.append((p, devices))
    if not any(devices for _, devices in out):
        raise EngineUnavailable(f"engine 'opencl' found OpenCL platforms but no device; {NO_PLATFORM_HINT}")
    return out


def _device_type(device) -> str:
    t = device.type
    for flag, name in ((cl.device_type.GPU, "GPU"), (cl.device_type.CPU, "CPU"),
                       (cl.device_type.ACCELERATOR, "accelerator")):
        if t & flag:
            return name
    return "other"


def _has_fp64(device) -> bool:
    return "cl_khr_fp64" in device.extensions.split()


def _device_info(p_index, platform, d_index, device) -> dict:
    return {"id": f"{p_index}:{d_index}", "engine": f"opencl:{p_index}:{d_index}",
            "platform": platform.name.strip(), "device": device.name.strip(),
            "type": _device_type(device), "fp64": _has_fp64(device),
            "memory": int(device.global_mem_size), "compute_units": int(device.max_compute_units),
            "version": device.version.strip()}


def list_devices() -> DeviceList:
    """Every OpenCL device as a dict (``id`` "P:D", platform, device, type, fp64, memory in bytes, ...).

    Never raises: without PyOpenCL or a platform it returns an empty list whose
    ``reason`` attribute says why (``reason`` is also set when pyclblast is missing).
    """
    if _OPENCL_ERROR is not None:
        return DeviceList([], _unavailable_reason())
    try:
        found = _platforms()
    except EngineUnavailable as exc:
        return DeviceList([], str(exc))
    except Exception as exc:   # a broken driver must not break `densenn info`
        return DeviceList([], f"{type(exc).__name__}: {exc}")
    devices = [_device_info(pi, p, di, d) for pi, (p, ds) in enumerate(found) for di, d in enumerate(ds)]
    return DeviceList(devices, _unavailable_reason())


def describe() -> dict:
    """{"available": bool, "reason": str | None, "devices": [...]} for ``densenn info``; never raises."""
    devices = list_devices()
    return {"available": devices.reason is None and bool(devices), "reason": devices.reason,
            "devices": list(devices)}


def _listing(found) -> str:
    return "; ".join(f"{pi}:{di} = {d.name.strip()} ({_device_type(d)}, {p.name.strip()})"
                     for pi, (p, ds) in enumerate(found) for di, d in enumerate(ds)) or "none"


def _pick_device(spec: str, source: str):
    """The device for "P:D" (``source`` names where the text came from), or the default one."""
    found = _platforms()
    if not spec:
        for want_gpu in (True, False):   # the first GPU over all platforms, else the first device
            for _, devices in found:
                for d in devices:
                    if not want_gpu or d.type & cl.device_type.GPU:
                        return d
    parts = spec.split(":")
    try:
        p_index, d_index = (int(v) for v in parts)
    except ValueError:
        raise DensennError(f"{source} must be 'P:D' (platform and device numbers, e.g. '0:0'), got {spec!r}; "
                           f"devices here: {_listing(found)}") from None
    if not (0 <= p_index < len(found) and 0 <= d_index < len(found[p_index][1])):
        raise DensennError(f"no OpenCL device {p_index}:{d_index} ({source}); devices here: {_listing(found)}")
    return found[p_index][1][d_index]
