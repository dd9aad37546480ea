"""npool's GPU backend: CUDA kernels from src/cuda/ launched through PyCUDA on GPU arrays.

``_arrays`` reads ``__cuda_array_interface__``, ``_device`` holds the primary context, kernels
and stream of each GPU, ``_driver_api`` the driver calls PyCUDA lacks, and one module per kernel
family (``windowed_softmax``) packs arguments and launches. PyCUDA is imported only when a GPU
array arrives, so the CPU path never needs it.
"""
from importlib import resources

from .. import _build_info


def fatbin_path():
    """Path of the fatbin built from src/cuda/, or None when this build had no nvcc."""
    if not _build_info.cuda_fatbin:
        return None
    path = resources.files(__name__) / "npool_kernels.fatbin"  # also right for editable installs
    return path if path.is_file() else None


def kernel_source_dir():
    """The folder of the CUDA sources shipped in the package (compiled at run time when the
    fatbin is absent)."""
    return resources.files(__name__) / "kernels"


def cuda_available() -> bool:
    """Whether GPU arrays can be used here: PyCUDA is installed and sees a GPU.

    Never raises (a missing driver or library reads as False).

    Returns
    -------
    bool

    Examples
    --------
    >>> isinstance(npool.cuda_available(), bool)
    True
    """
    from ._device import available
    return available()
