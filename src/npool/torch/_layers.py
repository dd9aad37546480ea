"""``nn.Module`` forms of npool's ops."""
import torch

from .. import _checks
from ._ops import soft_pool1d, soft_pool2d, soft_pool3d


class _SoftPoolNd(torch.nn.Module):
    """SoftPool with the constructor of ``torch.nn.MaxPool{1,2,3}d``.

    ``dilation`` and ``return_indices`` are accepted for drop-in compatibility but only at
    their defaults: SoftPool has no dilated windows and no single selected index.
    """

    _function = None

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        if dilation not in (1, (1,) * self._nd, [1] * self._nd):
            raise ValueError(f"dilation must be 1: SoftPool has no dilated windows, "
                             f"got {dilation!r}")
        if return_indices:
            raise ValueError("return_indices must be False: SoftPool weighs every cell of a "
                             "window, there is no index to return")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode
        _checks.WindowArgs(self._nd, kernel_size, stride, padding, ceil_mode)  # fail early

    def forward(self, x):
        return type(self)._function(x, self.kernel_size, self.stride, self.padding,
                                    self.ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")


class SoftPool1d(_SoftPoolNd):
    """SoftPool over 1 spatial axis: ``y_o = sum_i softmax(x over window o)_i x_i``."""
    _nd = 1
    _function = staticmethod(soft_pool1d)


class SoftPool2d(_SoftPoolNd):
    """SoftPool over 2 spatial axes: ``y_o = sum_i softmax(x over window o)_i x_i``."""
    _nd = 2
    _function = staticmethod(soft_pool2d)


class SoftPool3d(_SoftPoolNd):
    """SoftPool over 3 spatial axes: ``y_o = sum_i softmax(x over window o)_i x_i``."""
    _nd = 3
    _function = staticmethod(soft_pool3d)
