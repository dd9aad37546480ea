"""The types of npool's public signatures (for annotations; nothing here runs math).

``Array`` is what the core functions take and return: a NumPy array on the CPU, or a GPU array
- any object with ``__cuda_array_interface__`` (PyCUDA ``GPUArray``, CUDA torch tensor, CuPy)
or one that exports DLPack from GPU memory (TensorFlow, JAX). GPU inputs give PyCUDA
``GPUArray`` results.
"""
from typing import Any, Optional, Protocol, Sequence, Tuple, Union

import numpy as np


class CudaArrayLike(Protocol):
    """An object exposing the CUDA array interface."""

    @property
    def __cuda_array_interface__(self) -> "dict[str, Any]": ...


class DLPackLike(Protocol):
    """An object exporting DLPack (read when it lives in GPU memory)."""

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any: ...

    def __dlpack_device__(self) -> Tuple[int, int]: ...


# What the functions take: a NumPy array, or a GPU array by either interface.
ArrayLike = Union[np.ndarray, CudaArrayLike, DLPackLike]
# What they return: a numpy.ndarray for NumPy input, a PyCUDA GPUArray for GPU input (typed
# loosely, as NumPy-or-GPU libraries type their results, so that callers need no narrowing).
Array = Any
# A function with a flag for a second result (return_indices, return_norms): one array or two.
ArrayOrPair = Any
Size = Union[int, Sequence[int]]  # one value for every spatial axis, or one per axis
# A local pool's padding: p on both sides of every axis or one per axis, (before, after) per
# axis, or TensorFlow's "same" / "valid"
Padding = Union[int, Sequence[int], Sequence[Tuple[int, int]], str]
Count = Union[int, float]  # a count of cells, or a fraction in (0, 1] of them
# out=: one destination, or a tuple with one per result (each None or an array)
Out = Optional[Union[ArrayLike, Sequence[Optional[ArrayLike]]]]


# The signatures of the functions npool makes once per dimension (1d, 2d, 3d), so that type
# checkers see them (a function returned by a factory is otherwise Any to them).
class SoftPoolForward(Protocol):
    """``npool.soft_pool{1,2,3}d_forward``."""

    def __call__(self, x: ArrayLike, kernel_size: Size, stride: Optional[Size] = None,
                 padding: Padding = 0, ceil_mode: bool = False, *, dilation: Size = 1,
                 out: Out = None) -> Array: ...


class SoftPoolBackward(Protocol):
    """``npool.soft_pool{1,2,3}d_backward``."""

    def __call__(self, grad_out: ArrayLike, x: ArrayLike, kernel_size: Size,
                 stride: Optional[Size] = None, padding: Padding = 0, ceil_mode: bool = False, *,
                 dilation: Size = 1, out: Out = None) -> Array: ...


class MaxEntPoolForward(Protocol):
    """``npool.maxent_pool{1,2,3}d_forward``."""

    def __call__(self, x: ArrayLike, lam: Union[float, ArrayLike], kernel_size: Size,
                 stride: Optional[Size] = None, padding: Padding = 0, ceil_mode: bool = False, *,
                 dilation: Size = 1, out: Out = None) -> Array: ...


class MaxEntPoolBackward(Protocol):
    """``npool.maxent_pool{1,2,3}d_backward``: the gradients of x and lam."""

    def __call__(self, grad_out: ArrayLike, x: ArrayLike, lam: Union[float, ArrayLike],
                 kernel_size: Size, stride: Optional[Size] = None, padding: Padding = 0,
                 ceil_mode: bool = False, *, dilation: Size = 1,
                 out: Out = None) -> Tuple[Array, Array]: ...


# An adaptive pool's output size: one size for every spatial axis, or one per axis (None: the
# input's size on that axis, as PyTorch's adaptive pools take it)
OutputSize = Union[int, Sequence[Optional[int]]]


class AdaptiveSoftPoolForward(Protocol):
    """``npool.adaptive_soft_pool{1,2,3}d_forward``."""

    def __call__(self, x: ArrayLike, output_size: OutputSize, *, out: Out = None) -> Array: ...


class AdaptiveSoftPoolBackward(Protocol):
    """``npool.adaptive_soft_pool{1,2,3}d_backward``."""

    def __call__(self, grad_out: ArrayLike, x: ArrayLike, output_size: OutputSize, *,
                 out: Out = None) -> Array: ...


class AdaptiveMaxEntPoolForward(Protocol):
    """``npool.adaptive_maxent_pool{1,2,3}d_forward``."""

    def __call__(self, x: ArrayLike, lam: Union[float, ArrayLike], output_size: OutputSize, *,
                 out: Out = None) -> Array: ...


class AdaptiveMaxEntPoolBackward(Protocol):
    """``npool.adaptive_maxent_pool{1,2,3}d_backward``: the gradients of x and lam."""

    def __call__(self, grad_out: ArrayLike, x: ArrayLike, lam: Union[float, ArrayLike],
                 output_size: OutputSize, *, out: Out = None) -> Tuple[Array, Array]: ...


__all__ = ["AdaptiveMaxEntPoolBackward", "AdaptiveMaxEntPoolForward", "AdaptiveSoftPoolBackward",
           "AdaptiveSoftPoolForward", "Array", "ArrayLike", "ArrayOrPair", "Count", "CudaArrayLike", "DLPackLike",
           "MaxEntPoolBackward", "MaxEntPoolForward", "Out", "OutputSize", "Padding", "Size", "SoftPoolBackward",
           "SoftPoolForward"]
