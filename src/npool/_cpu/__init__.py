"""The compiled CPU kernels (built from src/cpu/ by CMakeLists.txt).

Hot kernel modules exist in two builds: the baseline x86-64 one and an x86-64-v3 one (AVX2, FMA;
compiled without floating-point contraction, so both give the same bits). ``kernel_module``
returns the best build this CPU runs; ``NPOOL_CPU_ISA=baseline`` forces the baseline build.
"""
import importlib
import os

from . import _openmp_helpers

_ISA_CHOICES = ("auto", "baseline", "x86-64-v3")


def selected_isa():
    """The instruction set of the kernels in use: "x86-64-v3" or "baseline"."""
    wanted = os.environ.get("NPOOL_CPU_ISA", "auto").strip().lower() or "auto"
    if wanted not in _ISA_CHOICES:
        raise ValueError(f"NPOOL_CPU_ISA must be one of {_ISA_CHOICES}, got {wanted!r}")
    if wanted == "baseline":
        return "baseline"
    try:
        importlib.import_module(f"{__name__}._windowed_softmax_x86_64_v3")
    except ImportError:
        available = False
    else:
        available = True
    if available and _openmp_helpers.cpu_has_x86_64_v3():
        return "x86-64-v3"
    if wanted == "x86-64-v3":
        raise RuntimeError("NPOOL_CPU_ISA=x86-64-v3 but this build or this CPU has no x86-64-v3 kernels")
    return "baseline"


_ISA = selected_isa()


def kernel_module(name):
    """The compiled kernel module ``npool._cpu.<name>`` in the build selected for this CPU."""
    suffix = "_x86_64_v3" if _ISA == "x86-64-v3" else ""
    return importlib.import_module(f"{__name__}.{name}{suffix}")
