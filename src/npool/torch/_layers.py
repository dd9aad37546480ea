"""``nn.Module`` forms of npool's ops."""
import torch

from .. import _checks
from ._ops import (global_avg_pool, global_kmax_pool, global_lse_pool, global_max_pool,
                   maxent_pool2d, soft_pool1d, soft_pool2d, soft_pool3d, weldon_pool)


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


class GlobalMaxPool(torch.nn.Module):
    """``y = max x`` over all spatial cells of each (sample, channel) map."""

    def __init__(self, keepdims=False):
        super().__init__()
        self.keepdims = keepdims

    def forward(self, x):
        return global_max_pool(x, self.keepdims)

    def extra_repr(self):
        return f"keepdims={self.keepdims}"


class GlobalAvgPool(GlobalMaxPool):
    """``y = mean x`` over all spatial cells of each map."""

    def forward(self, x):
        return global_avg_pool(x, self.keepdims)


class GlobalLSEPool(torch.nn.Module):
    """``y = (1/beta) log(mean exp(beta x))`` over all spatial cells of each map."""

    def __init__(self, beta=1.0, keepdims=False):
        super().__init__()
        self.beta = _checks.finite_real(beta, "beta")
        self.keepdims = keepdims

    def forward(self, x):
        return global_lse_pool(x, self.beta, self.keepdims)

    def extra_repr(self):
        return f"beta={self.beta}, keepdims={self.keepdims}"


class GlobalKMaxPool(torch.nn.Module):
    """The mean of the k largest cells of each map (k: a count or a fraction in (0, 1])."""

    def __init__(self, k=1, keepdims=False):
        super().__init__()
        _checks.k_count(k, 1, "k")  # fail early on a bad k
        self.k = k
        self.keepdims = keepdims

    def forward(self, x):
        return global_kmax_pool(x, self.k, self.keepdims)

    def extra_repr(self):
        return f"k={self.k}, keepdims={self.keepdims}"


class WeldonPool(torch.nn.Module):
    """WELDON: mean of the kmax largest + alpha * mean of the kmin smallest cells of each map.
    WILDCAT's pooling is half of it."""

    def __init__(self, kmax=1, kmin=None, alpha=1.0, keepdims=False):
        super().__init__()
        _checks.k_count(kmax, 1, "kmax")
        if kmin is not None:
            _checks.k_count(kmin, 1, "kmin", allow_zero=True)
        self.kmax, self.kmin = kmax, kmin
        self.alpha = _checks.finite_real(alpha, "alpha")
        self.keepdims = keepdims

    def forward(self, x):
        return weldon_pool(x, self.kmax, self.kmin, self.alpha, self.keepdims)

    def extra_repr(self):
        return (f"kmax={self.kmax}, kmin={self.kmin}, alpha={self.alpha}, "
                f"keepdims={self.keepdims}")


class MaxEntPool2d(torch.nn.Module):
    """Max-Entropy pooling (Kobayashi, ICCV 2019) with its temperature ``lam``:

    - ``"gfgp"`` (default): the Global-Feature-Guided parameter branch, GAP -> 1x1 conv
      (num_features -> hidden, bias) -> BatchNorm -> ReLU -> 1x1 conv (hidden -> num_features,
      bias) -> BatchNorm -> sigmoid (or softplus), giving lam per sample and channel;
      ``hidden`` defaults to ``num_features // 2``;
    - ``"channel"``: a learnable temperature per channel, starting at 1 (SoftPool);
    - a number: a fixed temperature.

    The window arguments are those of ``nn.MaxPool2d``. The gradient reaches x through the pool
    and through the branch.
    """

    def __init__(self, num_features, kernel_size, stride=None, padding=0, ceil_mode=False,
                 lam="gfgp", activation="sigmoid", hidden=None):
        super().__init__()
        _checks.WindowArgs(2, kernel_size, stride, padding, ceil_mode)  # fail early
        if activation not in ("sigmoid", "softplus"):
            raise ValueError(f"activation must be 'sigmoid' or 'softplus', got {activation!r}")
        self.num_features = num_features
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = ceil_mode
        self.mode = lam if isinstance(lam, str) else "fixed"
        if lam == "gfgp":
            hidden = hidden or max(1, num_features // 2)
            self.branch = torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Conv2d(num_features, hidden, 1), torch.nn.BatchNorm2d(hidden),
                torch.nn.ReLU(),
                torch.nn.Conv2d(hidden, num_features, 1), torch.nn.BatchNorm2d(num_features),
                torch.nn.Sigmoid() if activation == "sigmoid" else torch.nn.Softplus())
        elif lam == "channel":
            self.lam = torch.nn.Parameter(torch.ones(num_features, 1, 1))
        elif isinstance(lam, str):
            raise ValueError(f"lam must be 'gfgp', 'channel' or a number, got {lam!r}")
        else:
            self.register_buffer("lam", torch.tensor(_checks.finite_real(lam, "lam")))

    def temperature(self, x):
        """lam for input x: (N, C, 1, 1) for GFGP, (C, 1, 1) per channel, or a 0-d tensor."""
        return self.branch(x) if self.mode == "gfgp" else self.lam

    def forward(self, x):
        return maxent_pool2d(x, self.temperature(x), self.kernel_size, self.stride,
                             self.padding, self.ceil_mode)

    def extra_repr(self):
        return (f"num_features={self.num_features}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}, "
                f"lam={self.mode!r}")
