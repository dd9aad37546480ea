"""The compiled CPU kernels (built from src/cpu/ by CMakeLists.txt).

Hot kernel modules exist in up to three builds: the baseline x86-64 one (SSE2), an x86-64-v3 one
(AVX2, FMA) and an x86-64-v4 one (AVX-512), all compiled without floating-point contraction or
reordering, so all give the same bits. ``kernel_module`` returns the best build this CPU runs;
``NPOOL_CPU_ISA`` (``baseline``, ``x86-64-v3`` or ``x86-64-v4``) asks for one, which must be
built and supported by the CPU.
"""
import importlib
import os

from . import _openmp_helpers

# Best first: the instruction set, the module suffix of its build, whether this CPU runs it.
_BUILDS = (
    ("x86-64-v4", "_x86_64_v4", _openmp_helpers.cpu_has_x86_64_v4),
    ("x86-64-v3", "_x86_64_v3", _openmp_helpers.cpu_has_x86_64_v3),
    ("baseline", "", lambda: True),
)
_ISA_CHOICES = ("auto",) + tuple(isa for isa, _, _ in _BUILDS)


def _built(suffix):
    try:
        importlib.import_module(f"{__name__}._windowed_softmax{suffix}")
    except ImportError:
        return False
    return True


def available_isas():
    """The kernel builds this installation has and this CPU runs, best first."""
    return tuple(isa for isa, suffix, runs in _BUILDS if _built(suffix) and runs())


def selected_isa():
    """The instruction set of the kernels in use: "x86-64-v4", "x86-64-v3" or "baseline"."""
    wanted = os.environ.get("NPOOL_CPU_ISA", "auto").strip().lower() or "auto"
    if wanted not in _ISA_CHOICES:
        raise ValueError(f"NPOOL_CPU_ISA must be one of {_ISA_CHOICES}, got {wanted!r}")
    available = available_isas()
    if wanted == "auto":
        return available[0]
    if wanted not in available:
        raise RuntimeError(f"NPOOL_CPU_ISA={wanted} but this build or this CPU has no {wanted} "
                           f"kernels (available: {', '.join(available)})")
    return wanted


_ISA = selected_isa()
_SUFFIX = {isa: suffix for isa, suffix, _ in _BUILDS}


def kernel_module(name, isa=None):
    """The compiled kernel module ``npool._cpu.<name>`` in the build selected for this CPU (or
    in the build for ``isa``, one of ``available_isas()``)."""
    return importlib.import_module(f"{__name__}.{name}{_SUFFIX[isa or _ISA]}")
