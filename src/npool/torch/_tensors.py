"""Tensors to npool's core arrays and back, without copies."""
import torch


class _OnCurrentStream:
    """A CUDA tensor seen through a version-3 ``__cuda_array_interface__`` that names torch's
    current stream, so the GPU core orders its kernels with it instead of blocking."""

    def __init__(self, tensor):
        self.tensor = tensor  # keeps the memory alive
        stream = torch.cuda.current_stream(tensor.device).cuda_stream
        self.__cuda_array_interface__ = dict(tensor.__cuda_array_interface__, version=3,
                                             stream=stream or 1)  # 0 is the legacy stream: 1


def to_core(t):
    """A NumPy view (CPU) or a stream-aware GPU array (CUDA) of tensor t's memory."""
    t = t.detach()
    if t.device.type == "cpu":
        return t.numpy()
    if t.device.type == "cuda":
        return _OnCurrentStream(t)
    raise TypeError(f"npool.torch supports CPU and CUDA tensors, got a tensor on {t.device}")


def from_core(a, like):
    """A tensor on ``like``'s device over the memory of core result ``a`` (no copy)."""
    if like.device.type == "cpu":
        return torch.from_numpy(a)
    return torch.as_tensor(a, device=like.device)


def torch_matmul(a, b):
    """numpy.matmul on torch's BLAS, through views (the set pools' ``matmul=``): keeps numpy's
    OpenBLAS threads, which spin after each call, from competing with torch's."""
    return torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()
