"""LOUPE's learnable set-pooling layers (Miech et al. 2017) as ``nn.Module``s: NetVLAD,
NetRVLAD, NetFV, SoftDBoW and ContextGating, with LOUPE's constructor, parameter names and
initialisers, and masks for lists of different lengths.

Each pooling layer computes ``softmax(BN(x W))`` (or ``softmax(x W + b)`` without BatchNorm)
as the soft assignment, pools with npool's op, projects with ``hidden1_weights`` to
``output_dim`` and optionally gates. BatchNorm statistics come from the real samples only.

BatchNorm defaults are LOUPE's (``slim.batch_norm``: epsilon 1e-3, decay 0.999, that is
PyTorch momentum 0.001), not ``BatchNorm1d``'s (1e-5, 0.1), so LOUPE's trained weights give
LOUPE's numbers (``load_loupe_checkpoint``). LOUPE's ``is_training`` is accepted and sets the
module's train/eval mode.
"""
import math
import os
from typing import Any, Optional, Union

import torch

from .. import _checks
from .._loupe import LOUPE_BN_EPSILON, load_loupe_weights
from ._ops import context_gating, netfv_pool, netrvlad_pool, netvlad_pool, soft_dbow_pool


LOUPE_BN_MOMENTUM = 0.001  # PyTorch's momentum: 1 - LOUPE's decay (0.999)


def _normal(*shape, std, mean=0.0):
    return torch.nn.Parameter(torch.randn(*shape) * std + mean)


def _batch_norm_options(bn_epsilon, bn_momentum):
    return _checks.batch_norm_options(bn_epsilon, bn_momentum,
                                      "PyTorch's meaning: 1 - TensorFlow's decay; or None",
                                      allow_none=True)


def _set_mode(module, is_training):
    """LOUPE's ``is_training``: None keeps PyTorch's default (training); a bool sets
    ``module.train(is_training)``, which ``.train()`` / ``.eval()`` change later as usual."""
    if is_training is not None:
        module.train(_checks.flag(is_training, "is_training"))


def _synced(bn):
    """Whether ``bn`` is a SyncBatchNorm training inside a process group of several ranks."""
    import torch.distributed as dist
    return (isinstance(bn, torch.nn.SyncBatchNorm) and bn.training and dist.is_available()
            and dist.is_initialized() and dist.get_world_size(bn.process_group) > 1)


def masked_batch_norm(bn, z, mask=None):
    """Batch normalisation of ``z`` (..., C) over its last axis by the BatchNorm module ``bn``
    (a ``MaskedBatchNorm1d``, or the ``SyncBatchNorm`` that
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` put in its place), with training statistics
    from the rows ``mask`` marks True only: their mean and biased variance normalise every row,
    and the running statistics are updated with the unbiased variance, as ``BatchNorm1d``
    does. Under a ``SyncBatchNorm`` in a process group the sums are all-reduced (differentiably)
    over the group's ranks first. In eval mode, or without a mask and without sync, it is
    ``bn``'s own forward."""
    flat = z.reshape(-1, bn.num_features)
    synced = _synced(bn)
    if (mask is None and not synced) or not (bn.training or bn.running_mean is None):
        # every row real and nothing to sync, or running statistics: BatchNorm1d's forward
        # (SyncBatchNorm's own needs CUDA tensors to sync; the sums below work on any device)
        return torch.nn.BatchNorm1d.forward(bn, flat).reshape(z.shape)
    real = mask.reshape(-1, 1) if mask is not None else torch.ones_like(flat[:, :1], dtype=bool)
    count = real.sum().to(flat.dtype).reshape(1)
    total = torch.where(real, flat, 0).sum(0)
    if synced:
        from torch.distributed.nn.functional import all_reduce
        count_total = all_reduce(torch.cat([count, total]), group=bn.process_group)
        count, total = count_total[:1], count_total[1:]
    mean = total / count
    centered = torch.where(real, flat - mean, 0)
    squares = (centered * centered).sum(0)
    if synced:
        squares = all_reduce(squares, group=bn.process_group)
    var = squares / count
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            momentum = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                        else bn.momentum)
            unbiased = var * count / (count - 1).clamp(min=1)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
    out = (flat - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        out = out * bn.weight + bn.bias
    return out.reshape(z.shape)


class MaskedBatchNorm1d(torch.nn.BatchNorm1d):
    r"""``BatchNorm1d`` over the last axis of ``(..., C)`` with statistics from the real rows only.

    In training, the mean and biased variance of the rows ``mask`` marks True (every row
    without a mask) normalise every row, and the running statistics are updated from those rows
    (unbiased variance, as ``BatchNorm1d``). Masked rows get no gradient through the
    statistics. ``nn.SyncBatchNorm.convert_sync_batchnorm`` turns it into a ``SyncBatchNorm``,
    which the LOUPE layers still give the mask (the sums are then all-reduced over the ranks).
    In eval mode it is ``BatchNorm1d`` over the last axis.

    Parameters
    ----------
    num_features : int
        C, the size of the last axis.
    eps : float, default 1e-5
        Added to the variance.
    momentum : float, optional
        The running statistics' update weight (default 0.1); None: a cumulative average.
    affine : bool, default True
        Learnable weight and bias.
    track_running_stats : bool, default True
        Keep running statistics for eval mode.
    **kwargs
        Other keyword arguments of ``nn.BatchNorm1d`` (``device``, ``dtype``).

    See Also
    --------
    NetVLAD : A LOUPE layer that normalises its assignment logits with it.

    Examples
    --------
    >>> bn = nt.MaskedBatchNorm1d(4)
    >>> z, mask = torch.randn(2, 5, 4), torch.tensor([[True] * 5, [True, False] * 2 + [False]])
    >>> bn(z, mask).shape
    torch.Size([2, 5, 4])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, **kwargs: Any) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, **kwargs)

    def forward(self, z: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalise z over its last axis.

        Parameters
        ----------
        z : torch.Tensor
            ``(..., C)``.
        mask : torch.Tensor of bool, optional
            z's leading shape: True for the rows the statistics come from; None: every row.

        Returns
        -------
        torch.Tensor
            z's shape.
        """
        return masked_batch_norm(self, z, mask)


class ContextGating(torch.nn.Module):
    r"""Context Gating (Miech et al. 2017): ``y = x * sigmoid(x W + b)`` over the last axis.

    With ``add_batch_norm``: ``y = x * sigmoid(BN(x W))``. LOUPE's initialisers:
    ``W, b ~ N(0, 1/sqrt(input_size))``. Input ``(..., input_size)``; output of the same shape.

    Parameters
    ----------
    input_size : int
        The features n of the last axis.
    add_batch_norm : bool, default True
        BatchNorm on ``x W`` instead of the bias.
    bn_epsilon : float, default 1e-3
        The BatchNorm's eps (LOUPE's).
    bn_momentum : float, default 0.001
        The BatchNorm's momentum in PyTorch's meaning, ``1 - decay`` (LOUPE's decay 0.999).
    is_training : bool, optional
        LOUPE's flag: None keeps PyTorch's mode (training), a bool sets
        ``train(is_training)``.

    Raises
    ------
    ValueError
        A size that is not a positive int, or bad BatchNorm options.
    TypeError
        A flag that is not a bool.

    See Also
    --------
    context_gating : The function.

    Examples
    --------
    >>> nt.ContextGating(8, add_batch_norm=False)(torch.randn(4, 8)).shape
    torch.Size([4, 8])
    """

    def __init__(self, input_size: int, add_batch_norm: bool = True,
                 bn_epsilon: float = LOUPE_BN_EPSILON, bn_momentum: float = LOUPE_BN_MOMENTUM,
                 is_training: Optional[bool] = None) -> None:
        super().__init__()
        self.input_size = _checks.positive_int(input_size, "input_size")
        self.add_batch_norm = _checks.flag(add_batch_norm, "add_batch_norm")
        eps, momentum = _batch_norm_options(bn_epsilon, bn_momentum)
        std = 1 / math.sqrt(self.input_size)
        self.gating_weights = _normal(self.input_size, self.input_size, std=std)
        if self.add_batch_norm:
            self.gating_bn = torch.nn.BatchNorm1d(self.input_size, eps=eps, momentum=momentum)
        else:
            self.gating_biases = _normal(self.input_size, std=std)
        _set_mode(self, is_training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate x.

        Parameters
        ----------
        x : torch.Tensor
            ``(..., input_size)``.

        Returns
        -------
        torch.Tensor
            x's shape.
        """
        if not self.add_batch_norm:
            return context_gating(x, self.gating_weights.to(x.dtype),
                                  self.gating_biases.to(x.dtype))
        gates = masked_batch_norm(self.gating_bn,
                                  x.reshape(-1, self.input_size) @ self.gating_weights)
        return x * torch.sigmoid(gates).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, add_batch_norm={self.add_batch_norm}"


def _loupe_doc(name, summary, pooled, formula):
    """The numpydoc docstring of LOUPE pooling layer ``name``."""
    return summary + """

    {formula}

    The LOUPE layer (Miech et al. 2017): the soft assignment ``softmax(BN(x W))`` (or
    ``softmax(x W + b)`` without BatchNorm) over ``cluster_size`` clusters, the pool (pooled
    size {pooled}), the projection ``@ hidden1_weights`` to ``output_dim`` and optional
    Context Gating, with LOUPE's parameter names and initialisers, so LOUPE's weights load
    (``load_loupe_checkpoint``). Input ``x`` ``(B, M, D)`` or LOUPE's ``(B * M, D)`` and an
    optional ``mask`` ``(B, M)`` of bools (True: a real sample; the others change nothing,
    BatchNorm statistics included); output ``(B, output_dim)``.

    Parameters
    ----------
    feature_size : int
        D, the features of each sample.
    max_samples : int
        M, the samples of each set (read when the input is LOUPE's ``(B * M, D)``).
    cluster_size : int
        K, the clusters.
    output_dim : int
        The output features.
    gating : bool, default True
        Add Context Gating after the projection.
    add_batch_norm : bool, default True
        BatchNorm on the assignment logits (and in the gating) instead of biases.
    is_training : bool, optional
        LOUPE's flag: None keeps PyTorch's mode (training), a bool sets
        ``train(is_training)``.
    bn_epsilon : float, default 1e-3
        The BatchNorms' eps (LOUPE's).
    bn_momentum : float, default 0.001
        The BatchNorms' momentum in PyTorch's meaning, ``1 - decay`` (LOUPE's decay 0.999).

    Raises
    ------
    ValueError
        A size that is not a positive int, or bad BatchNorm options.
    TypeError
        A flag that is not a bool.

    See Also
    --------
    {function} : The pool alone.
    load_loupe_checkpoint : LOUPE's trained weights.

    Examples
    --------
    >>> layer = nt.{name}(feature_size=16, max_samples=10, cluster_size=4, output_dim=8)
    >>> x = torch.randn(3, 10, 16)
    >>> mask = torch.arange(10) < torch.tensor([[10], [4], [1]])
    >>> layer(x, mask).shape
    torch.Size([3, 8])
    """.format(name=name, pooled=pooled, formula=formula, function=_FUNCTION_OF[name])


_FUNCTION_OF = {"NetVLAD": "netvlad_pool", "NetRVLAD": "netrvlad_pool", "NetFV": "netfv_pool",
                "SoftDBoW": "soft_dbow_pool"}


class _LoupePool(torch.nn.Module):
    """The assignment, projection and gating shared by LOUPE's pooling layers; subclasses give
    the pooled size and the pool."""

    def __init__(self, feature_size: int, max_samples: int, cluster_size: int,
                 output_dim: int, gating: bool = True, add_batch_norm: bool = True,
                 is_training: Optional[bool] = None, bn_epsilon: float = LOUPE_BN_EPSILON,
                 bn_momentum: float = LOUPE_BN_MOMENTUM) -> None:
        super().__init__()
        self.feature_size = _checks.positive_int(feature_size, "feature_size")
        self.max_samples = _checks.positive_int(max_samples, "max_samples")
        self.cluster_size = _checks.positive_int(cluster_size, "cluster_size")
        self.output_dim = _checks.positive_int(output_dim, "output_dim")
        self.gating = _checks.flag(gating, "gating")
        self.add_batch_norm = _checks.flag(add_batch_norm, "add_batch_norm")
        eps, momentum = _batch_norm_options(bn_epsilon, bn_momentum)
        self.bn_epsilon, self.bn_momentum = eps, momentum
        d, k = self.feature_size, self.cluster_size
        self.cluster_weights = _normal(d, k, std=1 / math.sqrt(d))
        if self.add_batch_norm:
            self.cluster_bn = MaskedBatchNorm1d(k, eps=eps, momentum=momentum)
        else:
            self.cluster_biases = _normal(k, std=1 / math.sqrt(d))
        self._init_pool_parameters(d, k)
        self.hidden1_weights = _normal(self._pooled_size(d, k), self.output_dim,
                                       std=1 / math.sqrt(k))
        if self.gating:
            self.context_gating = ContextGating(self.output_dim, self.add_batch_norm, eps,
                                                momentum)
        _set_mode(self, is_training)

    def _init_pool_parameters(self, d: int, k: int) -> None:
        """Create the pool's own parameters (centres, covariances), if it has any."""

    def _pooled_size(self, d: int, k: int) -> int:
        """The size of the pooled vector for D = d features and K = k clusters."""
        raise NotImplementedError

    def _pool(self, x: torch.Tensor, a: torch.Tensor,
              mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The pool of x (B, M, D) with assignment a (B, M, K): (B, pooled size)."""
        raise NotImplementedError

    def assignment(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The soft assignment ``softmax(BN(x W))`` (without BatchNorm ``softmax(x W + b)``).

        Parameters
        ----------
        x : torch.Tensor
            ``(B, M, feature_size)``.
        mask : torch.Tensor of bool, optional
            ``(B, M)``: True for the samples the BatchNorm statistics come from.

        Returns
        -------
        torch.Tensor
            ``(B, M, cluster_size)``.
        """
        logits = x @ self.cluster_weights.to(x.dtype)
        if self.add_batch_norm:  # also after convert_sync_batchnorm made it a SyncBatchNorm
            logits = masked_batch_norm(self.cluster_bn, logits, mask)
        else:
            logits = logits + self.cluster_biases.to(x.dtype)
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pool each set of x into one vector.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, M, feature_size)``, or LOUPE's ``(B * max_samples, feature_size)``.
        mask : torch.Tensor of bool, optional
            ``(B, M)``: True for real samples; None: every sample is real.

        Returns
        -------
        torch.Tensor
            ``(B, output_dim)``.
        """
        b, m, d = _checks.set_layer_input(tuple(x.shape), self.feature_size, self.max_samples)
        x = x.reshape(b, m, d)
        if mask is not None and tuple(mask.shape) != (b, m):
            raise ValueError(f"mask must have shape (B, M) = {(b, m)}, got {tuple(mask.shape)}")
        # under autocast the assignment's matmul may come out in another dtype than x
        pooled = self._pool(x, self.assignment(x, mask).to(x.dtype), mask)
        out = pooled @ self.hidden1_weights.to(x.dtype)
        return self.context_gating(out) if self.gating else out

    def extra_repr(self) -> str:
        return ((f"feature_size={self.feature_size}, max_samples={self.max_samples}, "
                f"cluster_size={self.cluster_size}, output_dim={self.output_dim}, "
                f"gating={self.gating}, add_batch_norm={self.add_batch_norm}")
                + (f", bn_epsilon={self.bn_epsilon}, bn_momentum={self.bn_momentum}"
                   if self.add_batch_norm else ""))


class NetVLAD(_LoupePool):
    __doc__ = _loupe_doc(
        "NetVLAD", "LOUPE's NetVLAD layer: soft assignment, VLAD pooling, projection, gating.",
        "D * K", "``V[d, k] = sum_m a[m, k] (x[m, d] - c[d, k])``, l2-normalised over d, "
        "flattened D-major and\n    l2-normalised; the centres ``cluster_weights2`` (D, K) "
        "~ N(0, 1/sqrt(D)).")

    def _init_pool_parameters(self, d, k):
        self.cluster_weights2 = _normal(d, k, std=1 / math.sqrt(d))

    def _pooled_size(self, d, k):
        return d * k

    def _pool(self, x, a, mask):
        return netvlad_pool(x, a, self.cluster_weights2.to(x.dtype), mask)


class NetRVLAD(_LoupePool):
    __doc__ = _loupe_doc("NetRVLAD", "LOUPE's NetRVLAD layer: NetVLAD without centres.",
                         "D * K", "``V[d, k] = sum_m a[m, k] x[m, d]``, normalised as "
                         "NetVLAD's.")

    def _pooled_size(self, d, k):
        return d * k

    def _pool(self, x, a, mask):
        return netrvlad_pool(x, a, mask)


class NetFV(_LoupePool):
    __doc__ = _loupe_doc(
        "NetFV", "LOUPE's NetFV layer: first- and second-order Fisher-vector statistics.",
        "2 * D * K", "With the means ``cluster_weights2`` ~ N(0, 1/sqrt(D)) and "
        "``covar_weights`` ~ N(1, 1/sqrt(D))\n    (``sigma = covar_weights^2 + 1e-6``): the "
        "first-order ``sum_m a (x - mu) / sigma`` and\n    second-order ``sum_m a ((x - mu)^2 "
        "/ sigma^2 - 1)`` statistics, each normalised, concatenated.")

    def _init_pool_parameters(self, d, k):
        self.cluster_weights2 = _normal(d, k, std=1 / math.sqrt(d))
        self.covar_weights = _normal(d, k, std=1 / math.sqrt(d), mean=1.0)

    def _pooled_size(self, d, k):
        return 2 * d * k

    def _pool(self, x, a, mask):
        return netfv_pool(x, a, self.cluster_weights2.to(x.dtype),
                          self.covar_weights.to(x.dtype), mask)


class SoftDBoW(_LoupePool):
    __doc__ = _loupe_doc("SoftDBoW", "LOUPE's Soft-DBoW layer: a soft bag of visual words.",
                         "K", "``l2n(sum_m a[m])``: the l2-normalised sum of the soft "
                         "assignments.")

    def _pooled_size(self, d, k):
        return k

    def _pool(self, x, a, mask):
        return soft_dbow_pool(a, mask)


_LAYERS = {"NetVLAD": NetVLAD, "NetRVLAD": NetRVLAD, "NetFV": NetFV, "SoftDBoW": SoftDBoW,
           "ContextGating": ContextGating}
_TORCH_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
             "moving_variance": "running_var"}


def load_loupe_checkpoint(checkpoint: Union[str, "os.PathLike[str]"],
                          layer: Optional[torch.nn.Module] = None, *,
                          scope: Optional[str] = None,
                          max_samples: Optional[int] = None) -> torch.nn.Module:
    """LOUPE's trained weights from a TensorFlow 1 checkpoint, as an npool.torch layer.

    The checkpoint is ``tf.train.Saver``'s files of a model that used ``loupe.py``, read with
    ``tf.train.load_checkpoint`` (TensorFlow is needed for this call only). BatchNorm
    ``gamma/beta/moving_mean/moving_variance`` become ``weight/bias/running_mean/running_var``;
    ``cluster_weights2`` (1, D, K) becomes (D, K). A new layer is in PyTorch's default training
    mode: call ``.eval()`` for inference, as LOUPE's ``is_training=False``.

    Parameters
    ----------
    checkpoint : str or os.PathLike
        The checkpoint's path prefix (``model.ckpt-1000``) or its directory.
    layer : torch.nn.Module, optional
        An npool.torch LOUPE layer or ``ContextGating`` (from ``gating_*``) to fill; its sizes
        must match the checkpoint's. None: a new ``NetVLAD``, ``NetRVLAD``, ``NetFV`` or
        ``SoftDBoW``, whichever the checkpoint holds, with its sizes, gating and BatchNorm.
    scope : str, optional
        Keyword only: the variable scope the block was built under (``"video_VLAD"``); None
        finds the only block in the checkpoint.
    max_samples : int, optional
        Keyword only: M for a new layer.

    Returns
    -------
    torch.nn.Module
        The layer, filled.

    Raises
    ------
    ValueError
        An unreadable checkpoint, no LOUPE block, several without a scope, or sizes that do
        not match ``layer``'s.
    TypeError
        A checkpoint that is not a path, or a scope that is not a str.
    ImportError
        TensorFlow is not installed.

    Examples
    --------
    >>> vlad = nt.load_loupe_checkpoint("model.ckpt", scope="video_VLAD",
    ...                                 max_samples=300)  # doctest: +SKIP
    >>> vlad.eval()(torch.randn(8 * 300, 1024)).shape  # doctest: +SKIP
    torch.Size([8, 1024])
    """
    with torch.no_grad():
        return load_loupe_weights(checkpoint, layer, scope, max_samples, _LAYERS, _TORCH_BN,
                                  lambda tensor, array: tensor.copy_(torch.from_numpy(array)))
