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

import torch

from .. import _checks
from .._loupe import LOUPE_BN_EPSILON, load_loupe_weights
from ._ops import context_gating, netfv_pool, netrvlad_pool, netvlad_pool, soft_dbow_pool


LOUPE_BN_MOMENTUM = 0.001  # PyTorch's momentum: 1 - LOUPE's decay (0.999)


def _normal(*shape, std, mean=0.0):
    return torch.nn.Parameter(torch.randn(*shape) * std + mean)


def _batch_norm_options(bn_epsilon, bn_momentum):
    return _checks.batch_norm_options(bn_epsilon, bn_momentum,
                                      "PyTorch's meaning: 1 - TensorFlow's decay; or None")


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
    r"""``BatchNorm1d`` over the last axis of ``(..., C)`` whose training statistics come from
    the rows ``mask`` marks True (all rows without a mask); the running statistics are updated
    from those rows too (unbiased variance, as ``BatchNorm1d``). Masked rows are normalised
    with the same statistics and get no gradient through them. ``convert_sync_batchnorm``
    turns it into a ``SyncBatchNorm``, which the LOUPE layers still give the mask (see
    ``masked_batch_norm``).

    Args:
        num_features, eps, momentum, affine, track_running_stats: as ``nn.BatchNorm1d``'s.

    Shape:
        - Input: ``z`` ``(..., C)``; ``mask`` of ``z``'s leading shape (bools) or None.
        - Output: ``z``'s shape.

    Examples::

        >>> bn = nt.MaskedBatchNorm1d(4)
        >>> z, mask = torch.randn(2, 5, 4), torch.tensor([[True] * 5, [True, False] * 2 + [False]])
        >>> bn(z, mask).shape
        torch.Size([2, 5, 4])
    """

    def forward(self, z, mask=None):
        return masked_batch_norm(self, z, mask)


class ContextGating(torch.nn.Module):
    r"""Context Gating (Miech et al. 2017): ``y = x * sigmoid(x W + b)``, or
    ``x * sigmoid(BN(x W))`` with ``add_batch_norm``; ``W, b ~ N(0, 1/sqrt(input_size))``.

    Args:
        input_size: the features n of the last axis.
        add_batch_norm: BatchNorm instead of the bias. Default True.
        bn_epsilon, bn_momentum: the BatchNorm's eps and momentum (PyTorch's meaning), LOUPE's
            by default (1e-3, 0.001).
        is_training: None (default) keeps PyTorch's mode, a bool sets ``train(is_training)``.

    Shape:
        - Input: ``(..., input_size)``.
        - Output: the input's shape.

    Examples::

        >>> nt.ContextGating(8, add_batch_norm=False)(torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """

    def __init__(self, input_size, add_batch_norm=True, bn_epsilon=LOUPE_BN_EPSILON,
                 bn_momentum=LOUPE_BN_MOMENTUM, is_training=None):
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

    def forward(self, x):
        if not self.add_batch_norm:
            return context_gating(x, self.gating_weights.to(x.dtype),
                                  self.gating_biases.to(x.dtype))
        gates = masked_batch_norm(self.gating_bn,
                                  x.reshape(-1, self.input_size) @ self.gating_weights)
        return x * torch.sigmoid(gates).reshape(x.shape)

    def extra_repr(self):
        return f"input_size={self.input_size}, add_batch_norm={self.add_batch_norm}"


def _loupe_doc(name, summary, pooled):
    """The PyTorch-style docstring of LOUPE pooling layer ``name``."""
    return summary + """

    The LOUPE layer (Miech et al. 2017): the soft assignment ``softmax(BN(x W))`` (or
    ``softmax(x W + b)`` without BatchNorm) over ``cluster_size`` clusters, the pool (pooled
    size {pooled}), the projection ``@ hidden1_weights`` to ``output_dim`` and optional
    Context Gating; LOUPE's parameter names and initialisers, so LOUPE's weights load
    (``load_loupe_checkpoint``).

    Args:
        feature_size: D, the features of each sample.
        max_samples: M, the samples of each set (read when the input is LOUPE's (B * M, D)).
        cluster_size: K.
        output_dim: the output features.
        gating: add Context Gating. Default True.
        add_batch_norm: BatchNorm on the assignment logits (and in the gating) instead of
            biases. Default True.
        is_training: LOUPE's flag: None (default) keeps PyTorch's mode, a bool sets
            ``train(is_training)``.
        bn_epsilon, bn_momentum: the BatchNorms' eps and momentum (PyTorch's meaning),
            LOUPE's by default: 1e-3 and 0.001 (slim's decay 0.999).

    Shape:
        - Input: ``x`` ``(B, M, D)`` or LOUPE's ``(B * M, D)``; ``mask`` ``(B, M)`` bools (True:
          a real sample; the others change nothing) or None.
        - Output: ``(B, output_dim)``.

    Examples::

        >>> layer = nt.{name}(feature_size=16, max_samples=10, cluster_size=4, output_dim=8)
        >>> x = torch.randn(3, 10, 16)
        >>> mask = torch.arange(10) < torch.tensor([[10], [4], [1]])
        >>> layer(x, mask).shape
        torch.Size([3, 8])
    """.format(name=name, pooled=pooled)


class _LoupePool(torch.nn.Module):
    """The assignment, projection and gating shared by LOUPE's pooling layers; subclasses give
    the pooled size and the pool."""

    def __init__(self, feature_size, max_samples, cluster_size, output_dim, gating=True,
                 add_batch_norm=True, is_training=None, bn_epsilon=LOUPE_BN_EPSILON,
                 bn_momentum=LOUPE_BN_MOMENTUM):
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

    def _init_pool_parameters(self, d, k):
        pass

    def assignment(self, x, mask=None):
        """The soft assignment ``softmax(BN(x W))`` (``softmax(x W + b)``): (B, M, K)."""
        logits = x @ self.cluster_weights.to(x.dtype)
        if self.add_batch_norm:  # also after convert_sync_batchnorm made it a SyncBatchNorm
            logits = masked_batch_norm(self.cluster_bn, logits, mask)
        else:
            logits = logits + self.cluster_biases.to(x.dtype)
        return torch.softmax(logits, dim=-1)

    def forward(self, x, mask=None):
        """``x`` (B, M, feature_size), or LOUPE's (B * max_samples, feature_size); ``mask`` (B, M)
        bools, True for real samples, or None. Returns (B, output_dim)."""
        b, m, d = _checks.set_layer_input(tuple(x.shape), self.feature_size, self.max_samples)
        x = x.reshape(b, m, d)
        if mask is not None and tuple(mask.shape) != (b, m):
            raise ValueError(f"mask must have shape (B, M) = {(b, m)}, got {tuple(mask.shape)}")
        # under autocast the assignment's matmul may come out in another dtype than x
        pooled = self._pool(x, self.assignment(x, mask).to(x.dtype), mask)
        out = pooled @ self.hidden1_weights.to(x.dtype)
        return self.context_gating(out) if self.gating else out

    def extra_repr(self):
        return ((f"feature_size={self.feature_size}, max_samples={self.max_samples}, "
                f"cluster_size={self.cluster_size}, output_dim={self.output_dim}, "
                f"gating={self.gating}, add_batch_norm={self.add_batch_norm}")
                + (f", bn_epsilon={self.bn_epsilon}, bn_momentum={self.bn_momentum}"
                   if self.add_batch_norm else ""))


class NetVLAD(_LoupePool):
    __doc__ = _loupe_doc(
        "NetVLAD", "NetVLAD (``npool.netvlad_pool_forward``): ``V[d, k] = sum_m a[m, k] (x[m, d] "
        "- c[d, k])``,\n    intra-normalised over d, flattened D-major, l2-normalised; "
        "centroids\n    ``cluster_weights2`` (D, K) ~ N(0, 1/sqrt(D)).", "D * K")

    def _init_pool_parameters(self, d, k):
        self.cluster_weights2 = _normal(d, k, std=1 / math.sqrt(d))

    def _pooled_size(self, d, k):
        return d * k

    def _pool(self, x, a, mask):
        return netvlad_pool(x, a, self.cluster_weights2.to(x.dtype), mask)


class NetRVLAD(_LoupePool):
    __doc__ = _loupe_doc("NetRVLAD", "NetRVLAD (``npool.netrvlad_pool_forward``): NetVLAD "
                         "without centroids.", "D * K")

    def _pooled_size(self, d, k):
        return d * k

    def _pool(self, x, a, mask):
        return netrvlad_pool(x, a, mask)


class NetFV(_LoupePool):
    __doc__ = _loupe_doc(
        "NetFV", "NetFV (``npool.netfv_pool_forward``): first- and second-order Fisher-vector "
        "statistics with\n    means ``cluster_weights2`` ~ N(0, 1/sqrt(D)) and "
        "``covar_weights`` ~ N(1, 1/sqrt(D))\n    (sigma = covar_weights^2 + 1e-6).", "2 * D * K")

    def _init_pool_parameters(self, d, k):
        self.cluster_weights2 = _normal(d, k, std=1 / math.sqrt(d))
        self.covar_weights = _normal(d, k, std=1 / math.sqrt(d), mean=1.0)

    def _pooled_size(self, d, k):
        return 2 * d * k

    def _pool(self, x, a, mask):
        return netfv_pool(x, a, self.cluster_weights2.to(x.dtype),
                          self.covar_weights.to(x.dtype), mask)


class SoftDBoW(_LoupePool):
    __doc__ = _loupe_doc("SoftDBoW", "Soft-DBoW (``npool.soft_dbow_pool_forward``): the "
                         "l2-normalised sum of the soft assignments.", "K")

    def _pooled_size(self, d, k):
        return k

    def _pool(self, x, a, mask):
        return soft_dbow_pool(a, mask)


_LAYERS = {"NetVLAD": NetVLAD, "NetRVLAD": NetRVLAD, "NetFV": NetFV, "SoftDBoW": SoftDBoW,
           "ContextGating": ContextGating}
_TORCH_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
             "moving_variance": "running_var"}


def load_loupe_checkpoint(checkpoint, layer=None, *, scope=None, max_samples=None):
    """LOUPE's trained weights from a TensorFlow 1 checkpoint (``tf.train.Saver`` files of a
    model that used ``loupe.py``), read with ``tf.train.load_checkpoint`` (TensorFlow needed).

    - ``load_loupe_checkpoint(path, max_samples=100)`` returns a new ``NetVLAD``, ``NetRVLAD``,
      ``NetFV`` or ``SoftDBoW`` (whichever the checkpoint holds) with the checkpoint's sizes,
      gating and BatchNorm, LOUPE's BatchNorm eps/momentum, in PyTorch's default training mode
      (call ``.eval()`` for inference, as LOUPE's ``is_training=False``);
    - ``load_loupe_checkpoint(path, layer)`` fills an existing layer (also a ``ContextGating``,
      from ``gating_*``) and returns it; its sizes must match the checkpoint's.

    ``scope``: the variable scope the block was built under (``"video_VLAD"``); None finds the
    only block in the checkpoint. BatchNorm ``gamma/beta/moving_mean/moving_variance`` become
    ``weight/bias/running_mean/running_var``; ``cluster_weights2`` (1, D, K) becomes (D, K).

    Args:
        checkpoint: the checkpoint's path prefix (``model.ckpt-1000``) or its directory.
        layer: an npool.torch LOUPE layer or ContextGating to fill, or None for a new one.
        scope: the block's variable scope, or None for the only one.
        max_samples: M for a new layer.

    Returns:
        The layer, filled.

    Examples::

        >>> vlad = nt.load_loupe_checkpoint("model.ckpt", scope="video_VLAD",
        ...                                 max_samples=300)  # doctest: +SKIP
        >>> vlad.eval()(torch.randn(8 * 300, 1024)).shape  # doctest: +SKIP
        torch.Size([8, 1024])
    """
    with torch.no_grad():
        return load_loupe_weights(checkpoint, layer, scope, max_samples, _LAYERS, _TORCH_BN,
                                  lambda tensor, array: tensor.copy_(torch.from_numpy(array)))
