"""LOUPE's learnable set-pooling layers (Miech et al. 2017) as ``nn.Module``s: NetVLAD,
NetRVLAD, NetFV, SoftDBoW and ContextGating, with LOUPE's constructor, parameter names and
initialisers, and masks for lists of different lengths.

Each pooling layer computes ``softmax(BN(x W))`` (or ``softmax(x W + b)`` without BatchNorm)
as the soft assignment, pools with npool's op, projects with ``hidden1_weights`` to
``output_dim`` and optionally gates. BatchNorm statistics come from the real samples only.
"""
import math

import torch

from .. import _checks
from ._ops import context_gating, netfv_pool, netrvlad_pool, netvlad_pool, soft_dbow_pool


def _normal(*shape, std, mean=0.0):
    return torch.nn.Parameter(torch.randn(*shape) * std + mean)


class MaskedBatchNorm1d(torch.nn.BatchNorm1d):
    """``BatchNorm1d`` over the last axis of ``(..., C)`` whose training statistics come from
    the rows ``mask`` marks True (all rows without a mask); the running statistics are updated
    from those rows too (unbiased variance, as ``BatchNorm1d``). Masked rows are normalised
    with the same statistics and get no gradient through them."""

    def forward(self, z, mask=None):
        flat = z.reshape(-1, self.num_features)
        if mask is None or not (self.training or self.running_mean is None):
            return super().forward(flat).reshape(z.shape)
        real = mask.reshape(-1, 1)
        count = real.sum()
        mean = torch.where(real, flat, 0).sum(0) / count
        centered = torch.where(real, flat - mean, 0)
        var = (centered * centered).sum(0) / count
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = (flat - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.reshape(z.shape)


class ContextGating(torch.nn.Module):
    """``y = x * sigmoid(x W + b)``, or ``x * sigmoid(BN(x W))`` with ``add_batch_norm``;
    ``W, b ~ N(0, 1/sqrt(input_size))`` (LOUPE)."""

    def __init__(self, input_size, add_batch_norm=True):
        super().__init__()
        self.input_size = _checks.positive_int(input_size, "input_size")
        self.add_batch_norm = bool(add_batch_norm)
        std = 1 / math.sqrt(self.input_size)
        self.gating_weights = _normal(self.input_size, self.input_size, std=std)
        if self.add_batch_norm:
            self.gating_bn = torch.nn.BatchNorm1d(self.input_size)
        else:
            self.gating_biases = _normal(self.input_size, std=std)

    def forward(self, x):
        if not self.add_batch_norm:
            return context_gating(x, self.gating_weights.to(x.dtype),
                                  self.gating_biases.to(x.dtype))
        gates = self.gating_bn(x.reshape(-1, self.input_size) @ self.gating_weights)
        return x * torch.sigmoid(gates).reshape(x.shape)

    def extra_repr(self):
        return f"input_size={self.input_size}, add_batch_norm={self.add_batch_norm}"


class _LoupePool(torch.nn.Module):
    """The assignment, projection and gating shared by LOUPE's pooling layers; subclasses give
    the pooled size and the pool."""

    def __init__(self, feature_size, max_samples, cluster_size, output_dim, gating=True,
                 add_batch_norm=True):
        super().__init__()
        self.feature_size = _checks.positive_int(feature_size, "feature_size")
        self.max_samples = _checks.positive_int(max_samples, "max_samples")
        self.cluster_size = _checks.positive_int(cluster_size, "cluster_size")
        self.output_dim = _checks.positive_int(output_dim, "output_dim")
        self.gating = bool(gating)
        self.add_batch_norm = bool(add_batch_norm)
        d, k = self.feature_size, self.cluster_size
        self.cluster_weights = _normal(d, k, std=1 / math.sqrt(d))
        if self.add_batch_norm:
            self.cluster_bn = MaskedBatchNorm1d(k)
        else:
            self.cluster_biases = _normal(k, std=1 / math.sqrt(d))
        self._init_pool_parameters(d, k)
        self.hidden1_weights = _normal(self._pooled_size(d, k), self.output_dim,
                                       std=1 / math.sqrt(k))
        if self.gating:
            self.context_gating = ContextGating(self.output_dim, self.add_batch_norm)

    def _init_pool_parameters(self, d, k):
        pass

    def assignment(self, x, mask=None):
        """The soft assignment ``softmax(BN(x W))`` (``softmax(x W + b)``): (B, M, K)."""
        logits = x @ self.cluster_weights.to(x.dtype)
        if self.add_batch_norm:
            logits = self.cluster_bn(logits, mask)
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
        pooled = self._pool(x, self.assignment(x, mask), mask)
        out = pooled @ self.hidden1_weights.to(x.dtype)
        return self.context_gating(out) if self.gating else out

    def extra_repr(self):
        return (f"feature_size={self.feature_size}, max_samples={self.max_samples}, "
                f"cluster_size={self.cluster_size}, output_dim={self.output_dim}, "
                f"gating={self.gating}, add_batch_norm={self.add_batch_norm}")


class NetVLAD(_LoupePool):
    """NetVLAD (``npool.netvlad_pool_forward``): centroids ``cluster_weights2`` (D, K) ~
    N(0, 1/sqrt(D)); pooled size D * K, flattened D-major as LOUPE."""

    def _init_pool_parameters(self, d, k):
        self.cluster_weights2 = _normal(d, k, std=1 / math.sqrt(d))

    def _pooled_size(self, d, k):
        return d * k

    def _pool(self, x, a, mask):
        return netvlad_pool(x, a, self.cluster_weights2.to(x.dtype), mask)


class NetRVLAD(_LoupePool):
    """NetRVLAD (``npool.netrvlad_pool_forward``): NetVLAD without centroids."""

    def _pooled_size(self, d, k):
        return d * k

    def _pool(self, x, a, mask):
        return netrvlad_pool(x, a, mask)


class NetFV(_LoupePool):
    """NetFV (``npool.netfv_pool_forward``): means ``cluster_weights2`` ~ N(0, 1/sqrt(D)) and
    ``covar_weights`` ~ N(1, 1/sqrt(D)) (sigma = covar_weights^2 + 1e-6); pooled size 2 D K."""

    def _init_pool_parameters(self, d, k):
        self.cluster_weights2 = _normal(d, k, std=1 / math.sqrt(d))
        self.covar_weights = _normal(d, k, std=1 / math.sqrt(d), mean=1.0)

    def _pooled_size(self, d, k):
        return 2 * d * k

    def _pool(self, x, a, mask):
        return netfv_pool(x, a, self.cluster_weights2.to(x.dtype),
                          self.covar_weights.to(x.dtype), mask)


class SoftDBoW(_LoupePool):
    """Soft-DBoW (``npool.soft_dbow_pool_forward``): the l2-normalised sum of the assignments;
    pooled size K."""

    def _pooled_size(self, d, k):
        return k

    def _pool(self, x, a, mask):
        return soft_dbow_pool(a, mask)
