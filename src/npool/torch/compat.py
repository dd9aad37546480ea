"""The originals' PyTorch calls, running on npool: drop-in names and arguments for code ported
from SoftPool (``SoftPool.idea``), GFGP (``modules.mylayers``), WILDCAT (``wildcat.pooling``)
and the Lua modules of spatial-pooling.torch, so that a model's code and its checkpoint load
unchanged. npool's own API (``npool.torch``) is unaffected.

What each class keeps of its original and what it does not (npool computes the exact math and
never a silently wrong number; the original's bugs are not reproduced) is in the migration
guide, ``docs/migration.md``. No math here: every class calls ``npool.torch``'s functions.
"""
import numbers
from typing import Optional, Union

import torch

from .. import _checks
from .._types import Count, Size
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


def _original_soft_pool_function_doc(nd):
    """The numpydoc docstring of compat.soft_pool{nd}d."""
    example, out = {1: ("(1, 3, 8)", "[1, 3, 4]"), 2: ("(1, 3, 8, 8)", "[1, 3, 4, 4]"),
                    3: ("(1, 3, 4, 8, 8)", "[1, 3, 2, 4, 4]")}[nd]
    axes = "axis" if nd == 1 else "axes"
    return f"""SoftPool's ``SoftPool.soft_pool{nd}d`` on npool: the original's arguments.

    ``npool.torch.soft_pool{nd}d`` with the original's default kernel 2 and no padding or
    ceil_mode. ``force_inplace`` (which chose the original's CPU formula on a GPU) is accepted
    and has no effect: npool has one exact implementation.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` or ``(C, *spatial)`` with {nd} spatial {axes}; floating, CPU or
        CUDA.
    kernel_size : int or tuple of {nd} ints, default 2
        The window.
    stride : int or tuple of {nd} ints, optional
        The step between windows; default ``kernel_size``.
    force_inplace : bool, default False
        No effect (the original's switch).

    Returns
    -------
    torch.Tensor
        The pooled tensor, as ``npool.torch.soft_pool{nd}d``'s.

    Examples
    --------
    >>> from npool.torch import compat
    >>> compat.soft_pool{nd}d(torch.randn{example}).shape
    torch.Size({out})
    """


def soft_pool1d(x: torch.Tensor, kernel_size: Size = 2, stride: Optional[Size] = None,
                force_inplace: bool = False) -> torch.Tensor:
    return _soft_pool(_soft_pool1d, x, kernel_size, stride, force_inplace)


def soft_pool2d(x: torch.Tensor, kernel_size: Size = 2, stride: Optional[Size] = None,
                force_inplace: bool = False) -> torch.Tensor:
    return _soft_pool(_soft_pool2d, x, kernel_size, stride, force_inplace)


def soft_pool3d(x: torch.Tensor, kernel_size: Size = 2, stride: Optional[Size] = None,
                force_inplace: bool = False) -> torch.Tensor:
    return _soft_pool(_soft_pool3d, x, kernel_size, stride, force_inplace)


soft_pool1d.__doc__ = _original_soft_pool_function_doc(1)
soft_pool2d.__doc__ = _original_soft_pool_function_doc(2)
soft_pool3d.__doc__ = _original_soft_pool_function_doc(3)


def _original_soft_pool_doc(nd):
    """The numpydoc docstring of compat.SoftPool{nd}d."""
    example, out = {1: ("(1, 3, 8)", "[1, 3, 4]"), 2: ("(1, 3, 8, 8)", "[1, 3, 4, 4]"),
                    3: ("(1, 3, 4, 8, 8)", "[1, 3, 2, 4, 4]")}[nd]
    return f"""SoftPool's ``SoftPool.SoftPool{nd}d`` on npool: the original's constructor.

    ``npool.torch.SoftPool{nd}d`` with the original's arguments: kernel 2 by default, no padding
    or ceil_mode, and ``force_inplace`` (accepted, no effect: npool has one exact
    implementation on every device).

    Parameters
    ----------
    kernel_size : int or tuple of {nd} ints, default 2
        The window.
    stride : int or tuple of {nd} ints, optional
        The step between windows; default ``kernel_size``.
    force_inplace : bool, default False
        The original's switch to its CPU formula on a GPU; no effect.

    Examples
    --------
    >>> from npool.torch import compat
    >>> compat.SoftPool{nd}d()(torch.randn{example}).shape
    torch.Size({out})
    """


class _OriginalSoftPool:
    """The original's constructor on npool's ``SoftPool{1,2,3}d``: kernel 2 by default, no
    padding or ceil_mode, and ``force_inplace`` (accepted, no effect)."""

    def __init__(self, kernel_size: Size = 2, stride: Optional[Size] = None,
                 force_inplace: bool = False) -> None:
        super().__init__(kernel_size, stride)  # type: ignore[call-arg]  # the npool class's
        self.force_inplace = _checks.flag(force_inplace, "force_inplace")


class SoftPool1d(_OriginalSoftPool, _layers.SoftPool1d):
    __doc__ = _original_soft_pool_doc(1)


class SoftPool2d(_OriginalSoftPool, _layers.SoftPool2d):
    __doc__ = _original_soft_pool_doc(2)


class SoftPool3d(_OriginalSoftPool, _layers.SoftPool3d):
    __doc__ = _original_soft_pool_doc(3)


# ------------------------------------------------------------------ GFGP (Kobayashi)
class MaxEntPoolingCuda2d(MaxEntPool2d):
    """GFGP's ``MaxEntPoolingCuda2d`` on npool: the original's constructor and state_dict keys.

    Max-Entropy pooling with the Global-Feature-Guided branch (``npool.torch.MaxEntPool2d`` with
    ``lam="gfgp"``), the branch named ``ToParam`` as in the original so that its state_dicts
    load and save with the original's keys (``ToParam.1.weight``, ...). Padded cells are left
    out of the windows (the original's ``count_include_pad=False``).

    Parameters
    ----------
    num_features : int
        The channels C.
    kernel_size : int or tuple of 2 ints
        The window.
    stride : int or tuple of 2 ints, optional
        The step between windows; default ``kernel_size``.
    padding : int or tuple of 2 ints, default 0
        Implicit padding on both sides, at most half the kernel.
    ceil_mode : bool, default False
        ``nn.MaxPool2d``'s output-size rule with ceil instead of floor.
    activation : {"sigmoid", "softplus"}, default "sigmoid"
        The branch's last step.
    hidden_node : int, optional
        The branch's width; default ``num_features // 2``.

    Examples
    --------
    >>> from npool.torch import compat
    >>> pool = compat.MaxEntPoolingCuda2d(8, kernel_size=2)
    >>> pool(torch.randn(2, 8, 6, 6)).shape
    torch.Size([2, 8, 3, 3])
    >>> sorted(pool.state_dict())[0]
    'ToParam.1.bias'
    """

    _branch_name = "ToParam"
    _other_branch_names = ("branch",)

    def __init__(self, num_features: int, kernel_size: Size, stride: Optional[Size] = None,
                 padding: Size = 0, ceil_mode: bool = False, activation: str = "sigmoid",
                 hidden_node: Optional[int] = None) -> None:
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
    """WILDCAT's ``WildcatPool2d(kmax=1, kmin=None, alpha=1)`` with its conventions.

    ``y = (mean(top kmax) + alpha * mean(bottom kmin)) / 2``, but ``y = mean(top kmax)`` (no
    halving) when kmin is 0 or alpha is the int 0 (the original tests ``alpha is not 0``). A k
    in (0, 1) is a fraction rounded half to even, a k >= 1 (also the float 1.0) a count. Input
    ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C)`` or ``(C,)``.

    Parameters
    ----------
    kmax : int or float, default 1
        The top count or fraction.
    kmin : int or float, optional
        The bottom count or fraction; None is kmax.
    alpha : int or float, default 1
        The weight of the bottom term.

    Raises
    ------
    ValueError
        A k that is not a real number, or (when called) a kmax that selects no cell, where
        the original divides by zero.

    Examples
    --------
    >>> from npool.torch import compat
    >>> compat.WildcatPool2d(kmax=0.2, kmin=0.2, alpha=0.7)(torch.randn(2, 3, 5, 5)).shape
    torch.Size([2, 3])
    """

    def __init__(self, kmax: Count = 1, kmin: Optional[Count] = None,
                 alpha: Union[int, float] = 1) -> None:
        super().__init__()
        self.kmax = kmax
        self.kmin = kmax if kmin is None else kmin
        self.alpha = alpha
        for name in ("kmax", "kmin"):
            _count(getattr(self, name), 1, name, "wildcat")
        _checks.finite_real(alpha, "alpha")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool x: ``(N, C, H, W)`` or ``(C, H, W)`` -> ``(N, C)`` or ``(C,)``."""
        n = _cells(x, "WildcatPool2d")
        kmax = _count(self.kmax, n, "kmax", "wildcat")
        kmin = _count(self.kmin, n, "kmin", "wildcat")
        if kmax == 0:
            raise ValueError(f"kmax={self.kmax!r} selects no cell of {n} (WILDCAT divides by "
                             f"zero there)")
        if kmin == 0 or (self.alpha == 0 and isinstance(self.alpha, int)):
            return global_kmax_pool(x, kmax, spatial_dims=2)
        return 0.5 * weldon_pool(x, kmax, kmin, float(self.alpha), spatial_dims=2)

    def extra_repr(self) -> str:
        return f"kmax={self.kmax}, kmin={self.kmin}, alpha={self.alpha}"


class ClassWisePool(torch.nn.Module):
    """WILDCAT's ``ClassWisePool(num_maps)``: the mean of each class's consecutive maps.

    ``(N, classes * num_maps, H, W) -> (N, classes, H, W)``.

    Parameters
    ----------
    num_maps : int
        The maps of each class.

    Examples
    --------
    >>> from npool.torch import compat
    >>> compat.ClassWisePool(4)(torch.randn(2, 12, 5, 5)).shape
    torch.Size([2, 3, 5, 5])
    """

    def __init__(self, num_maps: int) -> None:
        super().__init__()
        self.num_maps = _checks.positive_int(num_maps, "num_maps")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Average x's maps class by class: ``(N, classes * num_maps, H, W)`` -> ``(N, classes,
        H, W)``."""
        if x.dim() != 4 or x.shape[1] % self.num_maps:
            raise ValueError(f"ClassWisePool needs (N, C, H, W) input with C a multiple of "
                             f"num_maps={self.num_maps}, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        return x.reshape(n, c // self.num_maps, self.num_maps, h, w).mean(2)

    def extra_repr(self) -> str:
        return f"num_maps={self.num_maps}"


# ------------------------------------------------------------------ spatial-pooling.torch (Lua)
class _LuaGlobalPool(torch.nn.Module):
    """The Lua modules' shapes: (N, C, H, W) -> (N, C, 1, 1) and (C, H, W) -> (C, 1, 1)."""

    def __init__(self) -> None:  # no arguments, as the Lua modules (not nn.Module's *args)
        super().__init__()

    def _check(self, x):
        return _cells(x, type(self).__name__)


class GlobalMaxPooling(_LuaGlobalPool):
    """spatial-pooling.torch's Lua ``nn.GlobalMaxPooling()`` on npool.

    Input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, 1, 1)`` or ``(C, 1, 1)``, as the
    Lua module's.

    Examples
    --------
    >>> from npool.torch import compat
    >>> compat.GlobalMaxPooling()(torch.randn(2, 3, 5, 5)).shape
    torch.Size([2, 3, 1, 1])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool x: ``(N, C, H, W)`` -> ``(N, C, 1, 1)``, ``(C, H, W)`` -> ``(C, 1, 1)``."""
        self._check(x)
        return global_max_pool(x, keepdims=True, spatial_dims=2)


class GlobalAveragePooling(_LuaGlobalPool):
    """spatial-pooling.torch's Lua ``nn.GlobalAveragePooling()`` on npool.

    Input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, 1, 1)`` or ``(C, 1, 1)``, as the
    Lua module's.

    Examples
    --------
    >>> from npool.torch import compat
    >>> compat.GlobalAveragePooling()(torch.randn(3, 5, 5)).shape
    torch.Size([3, 1, 1])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool x: ``(N, C, H, W)`` -> ``(N, C, 1, 1)``, ``(C, H, W)`` -> ``(C, 1, 1)``."""
        self._check(x)
        return global_avg_pool(x, keepdims=True, spatial_dims=2)


class LogSumExpPooling(_LuaGlobalPool):
    """spatial-pooling.torch's Lua ``nn.LogSumExpPooling(beta=1)`` on npool.

    ``y = (1/beta) log(mean exp(beta x))``; the gradient is exact (the original zeroed entries
    below 1e-10). Input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, 1, 1)`` or ``(C, 1, 1)``, as the
    Lua module's.

    Parameters
    ----------
    beta : float, default 1
        The sharpness, any finite number.

    Examples
    --------
    >>> from npool.torch import compat
    >>> compat.LogSumExpPooling(2)(torch.randn(2, 3, 5, 5)).shape
    torch.Size([2, 3, 1, 1])
    """

    def __init__(self, beta: float = 1) -> None:
        super().__init__()
        self.beta = _checks.finite_real(beta, "beta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool x: ``(N, C, H, W)`` -> ``(N, C, 1, 1)``, ``(C, H, W)`` -> ``(C, 1, 1)``."""
        self._check(x)
        return global_lse_pool(x, self.beta, keepdims=True, spatial_dims=2)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class GlobalkMaxPooling(_LuaGlobalPool):
    """spatial-pooling.torch's Lua ``nn.GlobalkMaxPooling(nMax=1)`` on npool.

    ``nMax <= 0`` takes every cell, ``0 < nMax < 1`` is a fraction ``max(1, floor(nMax n))``,
    else a count. Input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, 1, 1)`` or ``(C, 1, 1)``, as the
    Lua module's.

    Parameters
    ----------
    nMax : int or float, default 1
        The count or fraction of largest cells.

    Examples
    --------
    >>> from npool.torch import compat
    >>> compat.GlobalkMaxPooling(0.1)(torch.randn(2, 3, 5, 5)).shape
    torch.Size([2, 3, 1, 1])
    """

    def __init__(self, nMax: Count = 1) -> None:  # noqa: N803 (the original's name)
        super().__init__()
        self.nMax = nMax
        _count(nMax, 1, "nMax", "lua")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool x: ``(N, C, H, W)`` -> ``(N, C, 1, 1)``, ``(C, H, W)`` -> ``(C, 1, 1)``."""
        n = self._check(x)
        count = _count(self.nMax, n, "nMax", "lua") or n
        return global_kmax_pool(x, count, keepdims=True, spatial_dims=2)

    def extra_repr(self) -> str:
        return f"nMax={self.nMax}"


class WeldonPooling(_LuaGlobalPool):
    """spatial-pooling.torch's Lua ``nn.WeldonPooling(nMax=1, nMin=nMax)`` on npool.

    ``y = mean(top nMax) + mean(bottom nMin)`` (summed, not halved); fractions
    ``max(1, floor(k n))``; ``nMin <= 0`` drops the bottom term. The gradient of a cell in both
    sets is the sum of both (the original overwrote one with the other). Input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, 1, 1)`` or ``(C, 1, 1)``, as the
    Lua module's.

    Parameters
    ----------
    nMax : int or float, default 1
        The count or fraction of largest cells; ``nMax <= 0`` raises a ValueError when called
        (the original divided by zero).
    nMin : int or float, optional
        The count or fraction of smallest cells; None is nMax.

    Examples
    --------
    >>> from npool.torch import compat
    >>> compat.WeldonPooling(3, 2)(torch.randn(2, 3, 5, 5)).shape
    torch.Size([2, 3, 1, 1])
    """

    def __init__(self, nMax: Count = 1,  # noqa: N803 (the original's names)
                 nMin: Optional[Count] = None) -> None:
        super().__init__()
        self.nMax = nMax
        self.nMin = nMax if nMin is None else nMin
        for name in ("nMax", "nMin"):
            _count(getattr(self, name), 1, name, "lua")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool x: ``(N, C, H, W)`` -> ``(N, C, 1, 1)``, ``(C, H, W)`` -> ``(C, 1, 1)``."""
        n = self._check(x)
        top = _count(self.nMax, n, "nMax", "lua")
        if top == 0:
            raise ValueError(f"nMax={self.nMax!r} selects no cell (the original divides by "
                             f"zero there)")
        return weldon_pool(x, top, _count(self.nMin, n, "nMin", "lua"), keepdims=True,
                           spatial_dims=2)

    def extra_repr(self) -> str:
        return f"nMax={self.nMax}, nMin={self.nMin}"
