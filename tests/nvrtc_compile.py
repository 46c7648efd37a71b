"""Compile CUDA C with NVRTC through ctypes: no GPU, no CUDA driver, no CuPy needed.

NVRTC (the CUDA runtime compiler, ``libnvrtc.so``) is a plain host library: it turns CUDA C
into PTX or a cubin for any GPU architecture it knows, on a machine without a GPU. The
``nvidia-cuda-nvrtc-cu12`` wheel (in the ``dev`` extra, x86-64 Linux) ships it under
``site-packages/nvidia/cuda_nvrtc/lib``; a CUDA toolkit's copy is found too.

:func:`compile_cuda` compiles the way CuPy's ``RawModule`` (what the CUDA engine uses)
does for kernels like ours (plain ``extern "C" __global__`` functions, no ``#include``):
CuPy 14 passes ``--std=c++17``, ``-ftz=true`` and ``-arch=sm_XX`` (a cubin for the
device's architecture), plus ``-I`` folders for its own headers, CCCL and the CUDA
headers, which these kernels do not use. ``$DENSENN_NVRTC`` names a libnvrtc to use.
"""
from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import re
import struct

#: what CuPy's RawModule adds to every NVRTC compile (besides -arch and -I folders)
CUPY_OPTIONS = ("--std=c++17", "-ftz=true")

_NVRTC_SUCCESS = 0
_LIB: ctypes.CDLL | None = None
_LIB_PATH = ""
_LIB_ERROR: str | None = None


class NVRTCError(RuntimeError):
    """A compile that failed: the message holds NVRTC's whole log and the numbered source."""


def _candidates() -> list[str]:
    """Paths (or bare sonames, for the loader's search) to try, best first."""
    found = []
    env = os.environ.get("DENSENN_NVRTC")
    if env:
        found.append(env)
    # the nvidia-cuda-nvrtc-cu12 wheel: the namespace package nvidia.cuda_nvrtc
    try:
        spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        found += sorted(glob.glob(os.path.join(folder, "lib", "libnvrtc.so*")), key=_prefer_plain)
    # a CUDA toolkit
    for root in filter(None, (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda")):
        found += sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")), key=_prefer_plain)
    found += ["libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.so"]
    return [p for p in found if "builtins" not in os.path.basename(p)]


def _prefer_plain(path: str) -> tuple[int, str]:
    # libnvrtc.so.12 before libnvrtc.alt.so.12 (the "alt" build differs only in its symbol visibility)
    return (".alt." in os.path.basename(path), path)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    c_int, c_size_t, c_char_p, c_void_p = ctypes.c_int, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p
    p_char_p = ctypes.POINTER(c_char_p)
    sigs = {
        "nvrtcVersion": (ctypes.POINTER(c_int), ctypes.POINTER(c_int)),
        "nvrtcCreateProgram": (ctypes.POINTER(c_void_p), c_char_p, c_char_p, c_int, p_char_p, p_char_p),
        "nvrtcCompileProgram": (c_void_p, c_int, p_char_p),
        "nvrtcDestroyProgram": (ctypes.POINTER(c_void_p),),
        "nvrtcGetProgramLogSize": (c_void_p, ctypes.POINTER(c_size_t)),
        "nvrtcGetProgramLog": (c_void_p, c_char_p),
        "nvrtcGetPTXSize": (c_void_p, ctypes.POINTER(c_size_t)),
        "nvrtcGetPTX": (c_void_p, c_char_p),
        "nvrtcGetCUBINSize": (c_void_p, ctypes.POINTER(c_size_t)),
        "nvrtcGetCUBIN": (c_void_p, c_char_p),
        "nvrtcGetNumSupportedArchs": (ctypes.POINTER(c_int),),
        "nvrtcGetSupportedArchs": (ctypes.POINTER(c_int),),
    }
    for name, args in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = c_int
    lib.nvrtcGetErrorString.argtypes = (c_int,)
    lib.nvrtcGetErrorString.restype = c_char_p
    return lib


def load() -> ctypes.CDLL:
    """The bound libnvrtc; RuntimeError saying what was tried when none loads."""
    global _LIB, _LIB_PATH, _LIB_ERROR
    if _LIB is not None:
        return _LIB
    if _LIB_ERROR is not None:
        raise RuntimeError(_LIB_ERROR)
    errors = []
    for path in _candidates():
        try:
            _LIB, _LIB_PATH = _bind(ctypes.CDLL(path)), path
            return _LIB
        except (OSError, AttributeError) as exc:
            errors.append(f"{path}: {exc}")
    _LIB_ERROR = ("libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12, or set $DENSENN_NVRTC); tried: "
                  + "; ".join(errors))
    raise RuntimeError(_LIB_ERROR)


def unavailable_reason() -> str | None:
    """None when libnvrtc loads here, else why not (never raises)."""
    try:
        load()
    except RuntimeError as exc:
        return str(exc)
    return None


def library_path() -> str:
    """The libnvrtc in use (as it was loaded: a path, or a soname the loader found)."""
    load()
    return _LIB_PATH


def version() -> tuple[int, int]:
    lib = load()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def supported_archs() -> list[int]:
    """The compute capabilities this NVRTC compiles for, e.g. [50, 52, ..., 90, 100, 120]."""
    lib = load()
    n = ctypes.c_int()
    _check(lib, lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * n.value)()
    _check(lib, lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return list(archs)


def _check(lib, status: int, what: str) -> None:
    if status != _NVRTC_SUCCESS:
        raise NVRTCError(f"{what} failed: {lib.nvrtcGetErrorString(status).decode()} ({status})")


def _strings(items) -> ctypes.Array:
    return (ctypes.c_char_p * max(len(items), 1))(*[s.encode() for s in items])


def _numbered(source: str) -> str:
    lines = source.splitlines()
    width = len(str(len(lines)))
    return "\n".join(f"{i:>{width}} | {line}" for i, line in enumerate(lines, 1))


def _arch_option(arch: str) -> tuple[str, str]:
    """(--gpu-architecture option, output kind) for "sm_80", "compute_80" or "80"."""
    m = re.fullmatch(r"(sm_|compute_)?(\d+[a-z]?)", arch)
    if m is None:
        raise ValueError(f"arch must look like 'sm_80', 'compute_80' or '80', got {arch!r}")
    kind = "ptx" if m.group(1) == "compute_" else "cubin"
    return f"--gpu-architecture={'compute_' if kind == 'ptx' else 'sm_'}{m.group(2)}", kind


def compile_program(source: str, name: str, arch: str, options=CUPY_OPTIONS) -> tuple[str, bytes]:
    """Compile ``source`` (file name ``name`` in messages) for ``arch``: ("sm_80" gives a
    cubin, "compute_80" PTX). Returns (NVRTC's log, which may hold warnings; the output).
    NVRTCError with the full log and the numbered source when it does not compile."""
    lib = load()
    arch_opt, kind = _arch_option(arch)
    opts = [*options, arch_opt]
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        status = lib.nvrtcCompileProgram(prog, len(opts), _strings(opts))
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buf = ctypes.create_string_buffer(size.value + 1)
        _check(lib, lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.value.decode(errors="replace").strip()
        if status != _NVRTC_SUCCESS:
            raise NVRTCError(f"NVRTC could not compile {name} ({' '.join(opts)}): "
                             f"{lib.nvrtcGetErrorString(status).decode()}\n--- log ---\n{log}\n"
                             f"--- source ---\n{_numbered(source)}")
        get_size, get = (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX) if kind == "ptx" else \
            (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN)
        _check(lib, get_size(prog, ctypes.byref(size)), "nvrtcGet" + kind.upper() + "Size")
        out = ctypes.create_string_buffer(size.value)
        _check(lib, get(prog, out), "nvrtcGet" + kind.upper())
        return log, out.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def compile_cuda(source: str, name: str, arch: str) -> None:
    """Compile ``source`` for ``arch`` ("sm_80", "compute_90", ...) with CuPy's options;
    NVRTCError holding NVRTC's full log when it fails."""
    compile_program(source, name, arch)


def ptx_entries(source: str, name: str, arch: str = "compute_80") -> list[str]:
    """The kernel entry points (``.entry`` names) of ``source`` compiled to PTX."""
    _, ptx = compile_program(source, name, arch)
    return re.findall(r"\.entry\s+([A-Za-z_]\w*)", ptx.decode(errors="replace"))


def cubin_kernels(cubin: bytes) -> list[str]:
    """The kernels in a cubin (an ELF file): the names of its ``.text.NAME`` sections."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise ValueError("not a 64-bit ELF file")
    end = "<" if cubin[5] == 1 else ">"
    shoff, = struct.unpack_from(end + "Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", cubin, 0x3A)

    def section(i: int) -> tuple[int, int, int]:      # (name offset, file offset, size)
        base = shoff + i * shentsize
        name, = struct.unpack_from(end + "I", cubin, base)
        offset, size = struct.unpack_from(end + "QQ", cubin, base + 0x18)
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    strtab = cubin[str_off:str_off + str_size]
    names = []
    for i in range(shnum):
        start = section(i)[0]
        names.append(strtab[start:strtab.index(b"\0", start)].decode(errors="replace"))
    return sorted(n[len(".text."):] for n in names if n.startswith(".text."))


def declared_kernels(source: str) -> list[str]:
    """The names of the ``extern "C" __global__`` kernels in ``source`` (written
    ``KERNEL name(`` with the prelude's macro, or spelled out)."""
    return re.findall(r'(?:\bKERNEL|extern\s+"C"\s+__global__\s+void)\s+([A-Za-z_]\w*)\s*\(', source)


__all__ = ["CUPY_OPTIONS", "NVRTCError", "compile_cuda", "compile_program", "cubin_kernels", "declared_kernels",
           "library_path", "load", "ptx_entries", "supported_archs", "unavailable_reason", "version"]

if __name__ == "__main__":   # python tests/nvrtc_compile.py: which NVRTC, which architectures
    print(f"{library_path()}: NVRTC {version()[0]}.{version()[1]}, architectures {supported_archs()}")
