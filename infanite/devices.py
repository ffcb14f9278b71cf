"""The compute devices this Python's PyTorch can train on, for people and for GUIs (``infanite devices``).

Importing this module imports nothing heavy; :func:`detect_devices` imports torch and initialises CUDA, which can
take seconds: the Slicer modules run ``python -m infanite devices --progress-json -`` in a background process
rather than call it in the application.
"""
from __future__ import annotations


def detect_devices() -> list[str]:
    """``["cuda", "cpu"]`` when this Python's PyTorch sees a CUDA GPU, else ``["cpu"]`` (also without torch, or
    with a broken CUDA install)."""
    try:
        import torch
    except ImportError:
        return ["cpu"]
    try:
        return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    except Exception:                                    # a broken CUDA install must not break the caller
        return ["cpu"]


def describe_devices() -> str:
    """One line on what this Python's PyTorch can train on: each CUDA GPU's name and memory, or why only the
    CPU."""
    try:
        import torch
    except ImportError:
        return ("PyTorch is not installed in this Python: CPU only here (a Python environment with CUDA PyTorch "
                "can be chosen to train on its GPU)")
    try:
        if not torch.cuda.is_available():
            return f"PyTorch {torch.__version__}: no CUDA GPU visible, training runs on the CPU (slow)"
        gpus = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(f"cuda:{index} {props.name}, {props.total_memory / 2 ** 30:.1f} GiB")
        return "; ".join(gpus)
    except Exception as exc:                             # a broken CUDA install must not break the caller
        return f"PyTorch {getattr(torch, '__version__', '?')}: the CUDA check failed ({exc}); CPU only"


def devices_record() -> dict:
    """The progress event ``infanite devices`` reports: ``stage "devices"``, ``devices`` (best first) and a
    human-readable ``message``."""
    return {"stage": "devices", "step": 1, "total": 1, "devices": detect_devices(), "message": describe_devices()}


#: training key ``cpu_matmul``: float32 matrix products of a CPU run computed in bf16 where the CPU multiplies bf16
#: natively (auto), never (fp32) or always (bf16)
CPU_MATMUL_MODES = ("auto", "fp32", "bf16")


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (Intel AMX tiles or AVX-512 BF16), as PyTorch reports
    it; False where PyTorch cannot tell (or has no such check)."""
    import torch

    for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(getattr(torch, "cpu", None), check, None)
        try:
            if probe is not None and bool(probe()):
                return True
        except Exception:                                # an unknown platform: no native bf16
            continue
    return False


def cpu_matmul_in_bf16(mode: str) -> bool:
    """Whether a CPU run's float32 matrix products are computed in bf16 (training key ``cpu_matmul``): ``fp32``
    never, ``bf16`` always, ``auto`` where the CPU multiplies bf16 natively (:func:`cpu_multiplies_bf16`: there
    oneDNN's bf16 products of a 16,000 × 256 by 256 × 256 float32 matrix take a fifth of the time; elsewhere they
    would be emulated, slower than float32)."""
    if mode not in CPU_MATMUL_MODES:
        raise ValueError(f"cpu_matmul must be auto, fp32 or bf16, got {mode!r}")
    return mode == "bf16" or (mode == "auto" and cpu_multiplies_bf16())


class float32_matmul_precision:
    """Context manager: ``torch.set_float32_matmul_precision(precision)`` inside, the previous one restored after
    (it is process-wide).  ``medium`` lets float32 matrix products run in bf16 (inputs rounded to bf16, products
    accumulated in float32, float32 out); every other operation stays float32."""

    def __init__(self, precision: str):
        self.precision = precision

    def __enter__(self):
        import torch

        self.previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.precision)
        return self

    def __exit__(self, *exc) -> None:
        import torch

        torch.set_float32_matmul_precision(self.previous)


def peak_resident_mb() -> float | None:
    """This process's peak resident memory (MiB), on Linux, macOS and Windows; None where it cannot be read.

    The platform modules (``resource`` on POSIX, ``ctypes.windll`` on Windows) are imported here, never at file
    scope, so that the core imports on every platform."""
    import sys

    if sys.platform == "win32":
        return _peak_working_set_mb_windows()
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss          # KiB on Linux, bytes on macOS
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def _peak_working_set_mb_windows() -> float | None:
    """Windows: ``PeakWorkingSetSize`` of ``GetProcessMemoryInfo`` (psapi) for this process."""
    import ctypes
    from ctypes import wintypes

    class ProcessMemoryCounters(ctypes.Structure):
        _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD),
                    ("PeakWorkingSetSize", ctypes.c_size_t), ("WorkingSetSize", ctypes.c_size_t),
                    ("QuotaPeakPagedPoolUsage", ctypes.c_size_t), ("QuotaPagedPoolUsage", ctypes.c_size_t),
                    ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t), ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
                    ("PagefileUsage", ctypes.c_size_t), ("PeakPagefileUsage", ctypes.c_size_t)]

    try:
        counters = ProcessMemoryCounters()
        counters.cb = ctypes.sizeof(counters)
        process = ctypes.windll.kernel32.GetCurrentProcess()
        if not ctypes.windll.psapi.GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb):
            return None
        return counters.PeakWorkingSetSize / 2 ** 20
    except (AttributeError, OSError):
        return None


def available_memory_bytes() -> int | None:
    """Physical memory this machine has (bytes): ``sysconf`` on Linux/macOS, ``GlobalMemoryStatusEx`` on Windows;
    None where it cannot be read."""
    import os
    import sys

    if sys.platform == "win32":
        import ctypes

        class MemoryStatus(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

        try:
            status = MemoryStatus()
            status.dwLength = ctypes.sizeof(status)
            if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
                return None
            return int(status.ullTotalPhys)
        except (AttributeError, OSError):
            return None
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def choose_device(requested: str | None) -> str:
    """``requested`` as a torch device name; ``None`` or ``"auto"``: ``"cuda"`` when PyTorch sees a CUDA GPU, else
    ``"cpu"`` (what every command's ``--device auto`` default means)."""
    if requested is None or str(requested).strip().lower() == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(requested)
