"""npool's GPU side: the CUDA kernels compiled at build time into ``npool_kernels.fatbin``.

Launching them through PyCUDA on GPU arrays is the GPU backend's job; until it lands, GPU arrays
are refused with a clear error by ``npool._dispatch``.
"""
from importlib import resources

from .. import _build_info


def fatbin_path():
    """Path of the fatbin built from src/cuda/, or None when this build had no nvcc."""
    if not _build_info.cuda_fatbin:
        return None
    path = resources.files(__name__) / "npool_kernels.fatbin"  # also right for editable installs
    return path if path.is_file() else None
