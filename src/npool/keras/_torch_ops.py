"""npool.torch's functions with the signatures of npool.tf's (``data_format`` included), for
the Keras layers on Keras' PyTorch backend. Channels-last tensors reach npool.torch as
channels-last views of the same memory (``permute``, no copy); this module holds no math."""
import torch

import npool.torch as nt
from .._op_table import ops_of



def _last(data_format):
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got "
                         f"{data_format!r}")
    return data_format == "channels_last"


def _to_first(x, last):
    """(N, *spatial, C) as (N, C, *spatial) (a view), or x itself."""
    return x.permute(0, x.dim() - 1, *range(1, x.dim() - 1)) if last else x


def _from_first(y, last):
    return y.permute(0, *range(2, y.dim()), 1) if last else y


def _make_soft_pool(nd):
    function = getattr(nt, f"soft_pool{nd}d")

    def soft_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                  data_format="channels_last"):
        last = _last(data_format)
        return _from_first(function(_to_first(x, last), kernel_size, stride, padding,
                                    ceil_mode), last)

    soft_pool.__name__ = f"soft_pool{nd}d"
    return soft_pool


soft_pool1d, soft_pool2d, soft_pool3d = (_make_soft_pool(nd) for nd in (1, 2, 3))


def _make_adaptive_soft_pool(nd):
    function = getattr(nt, f"adaptive_soft_pool{nd}d")

    def adaptive_soft_pool(x, output_size, data_format="channels_last"):
        last = _last(data_format)
        return _from_first(function(_to_first(x, last), output_size), last)

    adaptive_soft_pool.__name__ = f"adaptive_soft_pool{nd}d"
    return adaptive_soft_pool


adaptive_soft_pool1d, adaptive_soft_pool2d, adaptive_soft_pool3d = (
    _make_adaptive_soft_pool(nd) for nd in (1, 2, 3))


def maxent_pool2d(x, lam, kernel_size, stride=None, padding=0, ceil_mode=False,
                  data_format="channels_last"):
    """``lam`` a number or a tensor that broadcasts to the output in x's axis order."""
    last = _last(data_format)
    if isinstance(lam, torch.Tensor) and last:
        lam = lam.reshape((1,) * (4 - lam.dim()) + tuple(lam.shape)).permute(0, 3, 1, 2)
    return _from_first(nt.maxent_pool2d(_to_first(x, last), lam, kernel_size, stride,
                                        padding, ceil_mode), last)


def _make_global(name):
    function = getattr(nt, name)

    def pool(x, keepdims=False, data_format="channels_last", **options):
        last = _last(data_format)
        y = function(_to_first(x, last), keepdims=keepdims, **options)
        return _from_first(y, last) if keepdims else y

    pool.__name__ = name
    return pool


# The global pools of the op table, by name (global_max_pool, ..., global_gem_pool).
globals().update({op.name: _make_global(op.name) for op in ops_of("global")})
# The set ops take LOUPE's (B, M, D) in every framework: npool.torch's own.
netvlad_pool = nt.netvlad_pool
netrvlad_pool = nt.netrvlad_pool
netfv_pool = nt.netfv_pool
soft_dbow_pool = nt.soft_dbow_pool
context_gating = nt.context_gating
__all__ = ["netvlad_pool", "netrvlad_pool", "netfv_pool", "soft_dbow_pool", "context_gating",
           "soft_pool1d", "soft_pool2d", "soft_pool3d", "maxent_pool2d",
           "adaptive_soft_pool1d", "adaptive_soft_pool2d", "adaptive_soft_pool3d",
           *(op.name for op in ops_of("global"))]
