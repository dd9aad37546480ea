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


def _fixed_rank(cls, spatial_dims):
    """The spatial rank of a global pool: the class's (``…2d``) or ``spatial_dims``."""
    spatial_dims = _checks.check_spatial_dims(spatial_dims)
    if cls.spatial_dims is not None and spatial_dims not in (None, cls.spatial_dims):
        raise ValueError(f"{cls.__name__} pools over {cls.spatial_dims} spatial axes, "
                         f"spatial_dims={spatial_dims} contradicts it")
    return cls.spatial_dims if cls.spatial_dims is not None else spatial_dims


class _GlobalPool(torch.nn.Module):
    """A global pool over every spatial cell of each (sample, channel) map.

    ``spatial_dims=None`` reads the input as (N, C, *spatial) with any number of spatial axes;
    the ``…1d/2d/3d`` classes fix it, so they also take unbatched (C, *spatial) input as
    ``nn.AdaptiveMaxPool2d`` does (and refuse other ranks). Output (N, C), or (N, C, 1, …)
    with ``keepdims`` (unbatched: (C,) or (C, 1, …)).
    """

    spatial_dims = None
    _options = ()

    def __init__(self, keepdims=False, spatial_dims=None):
        super().__init__()
        self.keepdims = _checks.flag(keepdims, "keepdims")
        self.spatial_dims = _fixed_rank(type(self), spatial_dims)

    def forward(self, x):
        return type(self)._function(x, keepdims=self.keepdims, spatial_dims=self.spatial_dims,
                                    **{name: getattr(self, name) for name in self._options})

    def extra_repr(self):
        shown = [f"{name}={getattr(self, name)!r}" for name in self._options
                 if name != "rounding" or self.rounding != "floor"]  # new options: when set
        shown.append(f"keepdims={self.keepdims}")
        if type(self).spatial_dims is None and self.spatial_dims is not None:
            shown.append(f"spatial_dims={self.spatial_dims}")
        return ", ".join(shown)


class GlobalMaxPool(_GlobalPool):
    """``y = max x`` over all spatial cells of each (sample, channel) map."""
    _function = staticmethod(global_max_pool)


class GlobalAvgPool(_GlobalPool):
    """``y = mean x`` over all spatial cells of each map."""
    _function = staticmethod(global_avg_pool)


class GlobalLSEPool(_GlobalPool):
    """``y = (1/beta) log(mean exp(beta x))`` over all spatial cells of each map."""
    _function = staticmethod(global_lse_pool)
    _options = ("beta",)

    def __init__(self, beta=1.0, keepdims=False, spatial_dims=None):
        super().__init__(keepdims, spatial_dims)
        self.beta = _checks.finite_real(beta, "beta")


class GlobalKMaxPool(_GlobalPool):
    """The mean of the k largest cells of each map (k: a count or a fraction in (0, 1] of the
    cells, floored, or rounded half to even with ``rounding="round"`` as WILDCAT)."""
    _function = staticmethod(global_kmax_pool)
    _options = ("k", "rounding")

    def __init__(self, k=1, keepdims=False, rounding="floor", spatial_dims=None):
        super().__init__(keepdims, spatial_dims)
        _checks.k_count(k, 1, "k", rounding=rounding)  # fail early on a bad k
        self.k, self.rounding = k, rounding


class WeldonPool(_GlobalPool):
    """WELDON: mean of the kmax largest + alpha * mean of the kmin smallest cells of each map
    (``kmin=None``: kmin = kmax, as both originals' code). WILDCAT's pooling is half of it
    (``npool.torch.compat.WildcatPool2d`` has WILDCAT's exact conventions)."""
    _function = staticmethod(weldon_pool)
    _options = ("kmax", "kmin", "alpha", "rounding")

    def __init__(self, kmax=1, kmin=None, alpha=1.0, keepdims=False, rounding="floor",
                 spatial_dims=None):
        super().__init__(keepdims, spatial_dims)
        _checks.weldon_counts(kmax, kmin, 1, rounding)  # fail early on bad counts
        self.kmax, self.kmin, self.rounding = kmax, kmin, rounding
        self.alpha = _checks.finite_real(alpha, "alpha")


class GlobalMaxPool1d(GlobalMaxPool):
    """``GlobalMaxPool`` over 1 spatial axis: (N, C, L) or (C, L)."""
    spatial_dims = 1


class GlobalMaxPool2d(GlobalMaxPool):
    """``GlobalMaxPool`` over 2 spatial axises: (N, C, H, W) or (C, H, W)."""
    spatial_dims = 2


class GlobalMaxPool3d(GlobalMaxPool):
    """``GlobalMaxPool`` over 3 spatial axises: (N, C, D, H, W) or (C, D, H, W)."""
    spatial_dims = 3


class GlobalAvgPool1d(GlobalAvgPool):
    """``GlobalAvgPool`` over 1 spatial axis: (N, C, L) or (C, L)."""
    spatial_dims = 1


class GlobalAvgPool2d(GlobalAvgPool):
    """``GlobalAvgPool`` over 2 spatial axises: (N, C, H, W) or (C, H, W)."""
    spatial_dims = 2


class GlobalAvgPool3d(GlobalAvgPool):
    """``GlobalAvgPool`` over 3 spatial axises: (N, C, D, H, W) or (C, D, H, W)."""
    spatial_dims = 3


class GlobalLSEPool1d(GlobalLSEPool):
    """``GlobalLSEPool`` over 1 spatial axis: (N, C, L) or (C, L)."""
    spatial_dims = 1


class GlobalLSEPool2d(GlobalLSEPool):
    """``GlobalLSEPool`` over 2 spatial axises: (N, C, H, W) or (C, H, W)."""
    spatial_dims = 2


class GlobalLSEPool3d(GlobalLSEPool):
    """``GlobalLSEPool`` over 3 spatial axises: (N, C, D, H, W) or (C, D, H, W)."""
    spatial_dims = 3


class GlobalKMaxPool1d(GlobalKMaxPool):
    """``GlobalKMaxPool`` over 1 spatial axis: (N, C, L) or (C, L)."""
    spatial_dims = 1


class GlobalKMaxPool2d(GlobalKMaxPool):
    """``GlobalKMaxPool`` over 2 spatial axises: (N, C, H, W) or (C, H, W)."""
    spatial_dims = 2


class GlobalKMaxPool3d(GlobalKMaxPool):
    """``GlobalKMaxPool`` over 3 spatial axises: (N, C, D, H, W) or (C, D, H, W)."""
    spatial_dims = 3


class WeldonPool1d(WeldonPool):
    """``WeldonPool`` over 1 spatial axis: (N, C, L) or (C, L)."""
    spatial_dims = 1


class WeldonPool2d(WeldonPool):
    """``WeldonPool`` over 2 spatial axises: (N, C, H, W) or (C, H, W)."""
    spatial_dims = 2


class WeldonPool3d(WeldonPool):
    """``WeldonPool`` over 3 spatial axises: (N, C, D, H, W) or (C, D, H, W)."""
    spatial_dims = 3


class MaxEntPool2d(torch.nn.Module):
    """Max-Entropy pooling (Kobayashi, ICCV 2019) with its temperature ``lam``:

    - ``"gfgp"`` (default): the Global-Feature-Guided parameter branch, GAP -> 1x1 conv
      (num_features -> hidden, bias) -> BatchNorm -> ReLU -> 1x1 conv (hidden -> num_features,
      bias) -> BatchNorm -> sigmoid (or softplus), giving lam per sample and channel;
      ``hidden`` defaults to ``num_features // 2``;
    - ``"channel"``: a learnable temperature per channel, starting at 1 (SoftPool);
    - a number: a fixed temperature.

    The window arguments are those of ``nn.MaxPool2d``. The gradient reaches x through the pool
    and through the branch. The branch's parameters are ``branch.{1,2,4,5}.*``; a state_dict
    of GFGP's original ``MaxEntPoolingCuda2d`` (``ToParam.*``, the same modules in the same
    order) loads as it is (``npool.torch.compat.MaxEntPoolingCuda2d`` keeps the original's
    names and arguments).
    """

    _branch_name = "branch"  # the name of the GFGP branch in state_dicts
    _other_branch_names = ("ToParam",)

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
            setattr(self, self._branch_name, torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Conv2d(num_features, hidden, 1), torch.nn.BatchNorm2d(hidden),
                torch.nn.ReLU(),
                torch.nn.Conv2d(hidden, num_features, 1), torch.nn.BatchNorm2d(num_features),
                torch.nn.Sigmoid() if activation == "sigmoid" else torch.nn.Softplus()))
            self.register_load_state_dict_pre_hook(_rename_branch)
        elif lam == "channel":
            self.lam = torch.nn.Parameter(torch.ones(num_features, 1, 1))
        elif isinstance(lam, str):
            raise ValueError(f"lam must be 'gfgp', 'channel' or a number, got {lam!r}")
        else:
            self.register_buffer("lam", torch.tensor(_checks.finite_real(lam, "lam")))

    def temperature(self, x):
        """lam for input x: (N, C, 1, 1) for GFGP, (C, 1, 1) per channel, or a 0-d tensor."""
        return getattr(self, self._branch_name)(x) if self.mode == "gfgp" else self.lam

    def forward(self, x):
        return maxent_pool2d(x, self.temperature(x), self.kernel_size, self.stride,
                             self.padding, self.ceil_mode)

    def extra_repr(self):
        return (f"num_features={self.num_features}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}, "
                f"lam={self.mode!r}")


def _rename_branch(module, state_dict, prefix, *_):
    """Load-state-dict pre-hook: the GFGP branch saved under another name (GFGP's ``ToParam``,
    npool's ``branch``) is loaded into this module's branch."""
    own = prefix + module._branch_name + "."
    for name in (MaxEntPool2d._branch_name,) + MaxEntPool2d._other_branch_names:
        other = prefix + name + "."
        if other == own:
            continue
        for key in [key for key in state_dict if key.startswith(other)]:
            if own + key[len(other):] not in state_dict:  # else strict loading reports it
                state_dict[own + key[len(other):]] = state_dict.pop(key)
