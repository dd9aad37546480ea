"""Tensors to npool's core arrays and back, without copies."""
import numpy as np
import torch

from .._checks import bfloat16, is_bfloat16


class _OnCurrentStream:
    """A CUDA tensor seen through a version-3 ``__cuda_array_interface__`` that names torch's
    current stream, so the GPU core orders its kernels with it instead of blocking."""

    def __init__(self, tensor):
        self.tensor = tensor  # keeps the memory alive
        stream = torch.cuda.current_stream(tensor.device).cuda_stream
        self.__cuda_array_interface__ = dict(tensor.__cuda_array_interface__, version=3,
                                             stream=stream or 1)  # 0 is the legacy stream: 1


def to_core(t):
    """A NumPy view (CPU) or a stream-aware GPU array (CUDA) of tensor t's memory; a bfloat16
    CPU tensor becomes an ml_dtypes bfloat16 array over the same bytes (a bfloat16 CUDA tensor's
    interface says ``typestr="<V2"``, which the GPU core reads as bfloat16)."""
    t = t.detach()
    if t.device.type == "cpu":
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(bfloat16())
        return t.numpy()
    if t.device.type == "cuda":
        return _OnCurrentStream(t)
    raise TypeError(f"npool.torch supports CPU and CUDA tensors, got a tensor on {t.device}")


class _Int16View:
    """GPU array ``a`` (bfloat16) seen through its ``__cuda_array_interface__`` as int16."""

    def __init__(self, a):
        self.array = a  # keeps the memory alive
        self.__cuda_array_interface__ = dict(a.__cuda_array_interface__, typestr="<i2")


def from_core(a, like):
    """A tensor on ``like``'s device over the memory of core result ``a`` (no copy). A bfloat16
    result passes as int16 (torch.from_numpy knows no ml_dtypes bfloat16) and is viewed back."""
    cpu = like.device.type == "cpu"
    if is_bfloat16(a.dtype):
        bits = a.view(np.int16) if cpu else _Int16View(a)
        return (torch.from_numpy(bits) if cpu else
                torch.as_tensor(bits, device=like.device)).view(torch.bfloat16)
    return torch.from_numpy(a) if cpu else torch.as_tensor(a, device=like.device)


def torch_matmul(a, b):
    """numpy.matmul on torch's BLAS, through views (the set pools' ``matmul=``): keeps numpy's
    OpenBLAS threads, which spin after each call, from competing with torch's."""
    with torch.autocast("cpu", enabled=False):  # the core chose the dtype: keep it
        return torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()
