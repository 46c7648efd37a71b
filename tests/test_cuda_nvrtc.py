"""Every CUDA kernel the CUDA engine can compile compiles, with NVRTC, for sm_80 and sm_90.

No GPU is needed: NVRTC is a host library (``pip install nvidia-cuda-nvrtc-cu12``, in the
``dev`` extra on x86-64 Linux), called through ctypes (``tests/nvrtc_compile.py``) with the
options CuPy's ``RawModule`` uses. So the CUDA engine's kernel text is checked on every CI
run, on machines that cannot run it. The module is skipped when libnvrtc cannot be loaded.

The programs come from :func:`densenn.kernels.gpu.cuda_sources` (the shared kernels and
every declared operation, float and double) and, where it has one, the CUDA engine's own
``densenn.backend.cuda.sources()``. Each must compile without errors and without warnings,
and its cubin must hold every ``extern "C"`` kernel the text declares, by that name (the
engine looks kernels up by name).
"""
from __future__ import annotations

import re

import nvrtc_compile as nvrtc
import pytest

REASON = nvrtc.unavailable_reason()
if REASON is not None:
    pytest.skip(f"NVRTC unavailable: {REASON}", allow_module_level=True)

#: Ampere (A100) and Hopper (H100/H200)
ARCHS = ("sm_80", "sm_90")


def _sources() -> dict[str, str]:
    import densenn  # noqa: F401  (importing declares the built-in operations)
    from densenn.kernels import gpu

    programs = dict(gpu.cuda_sources())
    from densenn.backend import cuda

    own = getattr(cuda, "sources", None)
    if own is not None:
        programs.update(own())
    return programs


def _ids(names) -> list[str]:
    """Stable test ids: the names without the id(op) hex part, numbered if that repeats one."""
    out: list[str] = []
    for name in names:
        base = re.sub(r"_[0-9a-f]{8,}(?=_|$)", "", name)
        ident, k = base, 2
        while ident in out:
            ident, k = f"{base}#{k}", k + 1
        out.append(ident)
    return out


SOURCES = _sources()
NAMES = sorted(SOURCES)


def test_there_are_kernels_to_compile():
    assert len(SOURCES) >= 4, f"cuda_sources() returned only {sorted(SOURCES)}"
    for dtype in ("float", "double"):
        assert any(name.endswith(dtype) for name in SOURCES), f"no {dtype} program in {sorted(SOURCES)}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", NAMES, ids=_ids(NAMES))
def test_kernel_compiles(name, arch):
    if int(arch.split("_")[1]) not in nvrtc.supported_archs():
        pytest.skip(f"this NVRTC ({nvrtc.version()}) cannot compile for {arch}")
    source = SOURCES[name]
    log, cubin = nvrtc.compile_program(source, name, arch)      # NVRTCError with the log if not
    assert not log, f"NVRTC warned compiling {name} for {arch}:\n{log}"
    declared = sorted(nvrtc.declared_kernels(source))
    assert declared, f"{name} declares no kernel (no 'KERNEL name(' or 'extern \"C\" __global__ void name(')"
    assert nvrtc.cubin_kernels(cubin) == declared, f"{name}: kernels in the cubin differ from those declared"


def test_a_broken_kernel_fails_with_nvrtcs_log():
    """The harness itself: an error comes back with NVRTC's message and the source."""
    bad = 'extern "C" __global__ void broken(float *x) { x[0] = undeclared_name; }\n'
    with pytest.raises(nvrtc.NVRTCError, match=r"(?s)undeclared_name.*is undefined.*--- source ---"):
        nvrtc.compile_cuda(bad, "broken", "sm_80")
