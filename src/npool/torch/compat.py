"""The originals' PyTorch calls, running on npool: drop-in names and arguments for code ported
from SoftPool (``SoftPool.idea``), GFGP (``modules.mylayers``), WILDCAT (``wildcat.pooling``)
and the Lua modules of spatial-pooling.torch, so that a model's code and its checkpoint load
unchanged. npool's own API (``npool.torch``) is unaffected.

What each class keeps of its original and what it does not (npool computes the exact math and
never a silently wrong number; the original's bugs are not reproduced) is in the migration
guide, ``docs/migration.md``. No math here: every class calls ``npool.torch``'s functions.
"""
import numbers

import torch

from .. import _checks
from . import _layers
from ._layers import MaxEntPool2d
from ._ops import (global_avg_pool, global_kmax_pool, global_lse_pool, global_max_pool,
                   soft_pool1d as _soft_pool1d, soft_pool2d as _soft_pool2d,
                   soft_pool3d as _soft_pool3d, weldon_pool)

__all__ = ["soft_pool1d", "soft_pool2d", "soft_pool3d", "SoftPool1d", "SoftPool2d",
           "SoftPool3d", "MaxEntPoolingCuda2d", "WildcatPool2d", "ClassWisePool",
           "GlobalMaxPooling", "GlobalAveragePooling", "GlobalkMaxPooling", "LogSumExpPooling",
           "WeldonPooling"]


# ------------------------------------------------------------------ SoftPool (Stergiou et al.)
def _soft_pool(function, x, kernel_size, stride, force_inplace):
    _checks.flag(force_inplace, "force_inplace")  # the original's switch to its CPU path
    return function(x, kernel_size, stride)


def soft_pool1d(x, kernel_size=2, stride=None, force_inplace=False):
    """``SoftPool.soft_pool1d``: npool's ``soft_pool1d`` with the original's default kernel 2;
    ``force_inplace`` (which chose the original's CPU formula on a GPU) is accepted and has no
    effect: npool has one exact implementation."""
    return _soft_pool(_soft_pool1d, x, kernel_size, stride, force_inplace)


def soft_pool2d(x, kernel_size=2, stride=None, force_inplace=False):
    """``SoftPool.soft_pool2d`` (see ``soft_pool1d``)."""
    return _soft_pool(_soft_pool2d, x, kernel_size, stride, force_inplace)


def soft_pool3d(x, kernel_size=2, stride=None, force_inplace=False):
    """``SoftPool.soft_pool3d`` (see ``soft_pool1d``)."""
    return _soft_pool(_soft_pool3d, x, kernel_size, stride, force_inplace)


class _OriginalSoftPool:
    """The original's constructor on npool's ``SoftPool{1,2,3}d``: kernel 2 by default, no
    padding or ceil_mode, and ``force_inplace`` (accepted, no effect)."""

    def __init__(self, kernel_size=2, stride=None, force_inplace=False):
        super().__init__(kernel_size, stride)
        self.force_inplace = _checks.flag(force_inplace, "force_inplace")


class SoftPool1d(_OriginalSoftPool, _layers.SoftPool1d):
    """``SoftPool.SoftPool1d(kernel_size=2, stride=None, force_inplace=False)``."""


class SoftPool2d(_OriginalSoftPool, _layers.SoftPool2d):
    """``SoftPool.SoftPool2d(kernel_size=2, stride=None, force_inplace=False)``."""


class SoftPool3d(_OriginalSoftPool, _layers.SoftPool3d):
    """``SoftPool.SoftPool3d(kernel_size=2, stride=None, force_inplace=False)``."""


# ------------------------------------------------------------------ GFGP (Kobayashi)
class MaxEntPoolingCuda2d(MaxEntPool2d):
    """GFGP's ``MaxEntPoolingCuda2d(num_features, kernel_size, stride=None, padding=0,
    ceil_mode=False, activation='sigmoid', hidden_node=None)``: Max-Entropy pooling with the
    Global-Feature-Guided branch, named ``ToParam`` as in the original so its state_dicts load
    and save with the original's keys (``ToParam.1.weight``, ...). Padded cells are left out of
    the windows (the original's ``count_include_pad=False``)."""

    _branch_name = "ToParam"
    _other_branch_names = ("branch",)

    def __init__(self, num_features, kernel_size, stride=None, padding=0, ceil_mode=False,
                 activation="sigmoid", hidden_node=None):
        super().__init__(num_features, kernel_size, stride, padding, ceil_mode, lam="gfgp",
                         activation=activation, hidden=hidden_node)


# ------------------------------------------------------------------ WILDCAT (Durand et al.)
def _count(k, n, name, rule):
    """A k of the originals as a cell count over n cells. ``rule`` "wildcat": k <= 0 -> 0,
    k < 1 -> round(k n) (half to even), k > n -> n, else int(k) (so 1.0 is one cell); "lua":
    k <= 0 -> 0 (``nonpositive``), 0 < k < 1 -> max(1, floor(k n)), else int(k) (clipped to
    n: Lua raised an error past n)."""
    if isinstance(k, (bool, torch.Tensor)) or not isinstance(k, numbers.Real) or k != k:
        raise ValueError(f"{name} must be a real number, got {k!r}")
    if k <= 0:
        return 0
    if k < 1:
        return round(k * n) if rule == "wildcat" else max(1, int(k * n // 1))
    return min(int(k), n)


def _cells(x, name):
    if x.dim() not in (3, 4):
        raise ValueError(f"{name} takes (N, C, H, W) or (C, H, W) input, got shape "
                         f"{tuple(x.shape)}")
    return x.shape[-1] * x.shape[-2]


class WildcatPool2d(torch.nn.Module):
    """WILDCAT's ``WildcatPool2d(kmax=1, kmin=None, alpha=1)`` with its conventions:
    ``y = (mean(top kmax) + alpha mean(bottom kmin)) / 2``, but ``y = mean(top kmax)`` (no
    halving) when kmin is 0 or alpha is the int 0 (the original tests ``alpha is not 0``);
    ``kmin=None`` is kmax; a k in (0, 1) is a fraction rounded half to even, a k >= 1 (also the
    float 1.0) a count. Output (N, C). Where the original divides by zero (kmax selecting no
    cell) this raises a ValueError."""

    def __init__(self, kmax=1, kmin=None, alpha=1):
        super().__init__()
        self.kmax = kmax
        self.kmin = kmax if kmin is None else kmin
        self.alpha = alpha
        for name in ("kmax", "kmin"):
            _count(getattr(self, name), 1, name, "wildcat")
        _checks.finite_real(alpha, "alpha")

    def forward(self, x):
        n = _cells(x, "WildcatPool2d")
        kmax = _count(self.kmax, n, "kmax", "wildcat")
        kmin = _count(self.kmin, n, "kmin", "wildcat")
        if kmax == 0:
            raise ValueError(f"kmax={self.kmax!r} selects no cell of {n} (WILDCAT divides by "
                             f"zero there)")
        if kmin == 0 or (self.alpha == 0 and isinstance(self.alpha, int)):
            return global_kmax_pool(x, kmax, spatial_dims=2)
        return 0.5 * weldon_pool(x, kmax, kmin, float(self.alpha), spatial_dims=2)

    def extra_repr(self):
        return f"kmax={self.kmax}, kmin={self.kmin}, alpha={self.alpha}"


class ClassWisePool(torch.nn.Module):
    """WILDCAT's ``ClassWisePool(num_maps)``: the mean of each class's ``num_maps`` consecutive
    channels, (N, classes * num_maps, H, W) -> (N, classes, H, W)."""

    def __init__(self, num_maps):
        super().__init__()
        self.num_maps = _checks.positive_int(num_maps, "num_maps")

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] % self.num_maps:
            raise ValueError(f"ClassWisePool needs (N, C, H, W) input with C a multiple of "
                             f"num_maps={self.num_maps}, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        return x.reshape(n, c // self.num_maps, self.num_maps, h, w).mean(2)

    def extra_repr(self):
        return f"num_maps={self.num_maps}"


# ------------------------------------------------------------------ spatial-pooling.torch (Lua)
class _LuaGlobalPool(torch.nn.Module):
    """The Lua modules' shapes: (N, C, H, W) -> (N, C, 1, 1) and (C, H, W) -> (C, 1, 1)."""

    def _check(self, x):
        return _cells(x, type(self).__name__)


class GlobalMaxPooling(_LuaGlobalPool):
    """Lua ``nn.GlobalMaxPooling()``."""

    def forward(self, x):
        self._check(x)
        return global_max_pool(x, keepdims=True, spatial_dims=2)


class GlobalAveragePooling(_LuaGlobalPool):
    """Lua ``nn.GlobalAveragePooling()``."""

    def forward(self, x):
        self._check(x)
        return global_avg_pool(x, keepdims=True, spatial_dims=2)


class LogSumExpPooling(_LuaGlobalPool):
    """Lua ``nn.LogSumExpPooling(beta=1)``: ``(1/beta) log(mean exp(beta x))``; the gradient
    is exact (the original zeroed entries below 1e-10)."""

    def __init__(self, beta=1):
        super().__init__()
        self.beta = _checks.finite_real(beta, "beta")

    def forward(self, x):
        self._check(x)
        return global_lse_pool(x, self.beta, keepdims=True, spatial_dims=2)

    def extra_repr(self):
        return f"beta={self.beta}"


class GlobalkMaxPooling(_LuaGlobalPool):
    """Lua ``nn.GlobalkMaxPooling(nMax=1)``: ``nMax <= 0`` takes every cell, ``0 < nMax < 1``
    is a fraction ``max(1, floor(nMax n))``, else a count."""

    def __init__(self, nMax=1):  # noqa: N803 (the original's name)
        super().__init__()
        self.nMax = nMax
        _count(nMax, 1, "nMax", "lua")

    def forward(self, x):
        n = self._check(x)
        count = _count(self.nMax, n, "nMax", "lua") or n
        return global_kmax_pool(x, count, keepdims=True, spatial_dims=2)

    def extra_repr(self):
        return f"nMax={self.nMax}"


class WeldonPooling(_LuaGlobalPool):
    """Lua ``nn.WeldonPooling(nMax=1, nMin=nMax)``: ``mean(top nMax) + mean(bottom nMin)``
    (summed, not halved); fractions ``max(1, floor(k n))``; ``nMin <= 0`` drops the bottom
    term. The gradient of a cell in both sets is the sum of both (the original overwrote one
    with the other). ``nMax <= 0`` raises a ValueError (the original divided by zero)."""

    def __init__(self, nMax=1, nMin=None):  # noqa: N803 (the original's names)
        super().__init__()
        self.nMax = nMax
        self.nMin = nMax if nMin is None else nMin
        for name in ("nMax", "nMin"):
            _count(getattr(self, name), 1, name, "lua")

    def forward(self, x):
        n = self._check(x)
        top = _count(self.nMax, n, "nMax", "lua")
        if top == 0:
            raise ValueError(f"nMax={self.nMax!r} selects no cell (the original divides by "
                             f"zero there)")
        return weldon_pool(x, top, _count(self.nMin, n, "nMin", "lua"), keepdims=True,
                           spatial_dims=2)

    def extra_repr(self):
        return f"nMax={self.nMax}, nMin={self.nMin}"
