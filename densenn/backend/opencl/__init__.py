"""The OpenCL engine: PyOpenCL buffers, CLBlast's GEMM, and the declared operations as
OpenCL C generated from their bodies (see densenn.kernels.gpu). ``devices`` finds and
describes the platforms and devices."""
from densenn.backend.opencl.devices import DEVICE_ENV, cl
from densenn.backend.opencl.engine import DeviceList, OpenCLEngine, create_engine, describe, list_devices

__all__ = ["OpenCLEngine", "create_engine", "list_devices", "describe", "DeviceList", "DEVICE_ENV", "cl"]
