"""PyTorch adapter: npool's ops as ``torch.library`` custom ops, functions and ``nn.Module`` classes.

Imported only on request (``import npool.torch``); PyTorch is an optional dependency. Each op is
a pair of custom ops (forward and backward) with fake kernels, so they work under
``torch.compile(fullgraph=True)`` without a graph break, and with autograd wired through
``torch.library.register_autograd``. CPU tensors reach the NumPy core as NumPy views of their
memory, CUDA tensors reach the GPU core through ``__cuda_array_interface__`` naming the current
stream; both without copies, and channels-last tensors stay channels-last. Under
``torch.autocast`` every op runs in the region's lower-precision dtype (CUDA: float16 unless
``dtype=torch.bfloat16``; CPU: bfloat16 unless ``dtype=torch.float16``); float64 tensors are
left alone.

This module holds no math: see ``npool.local_pools``, ``npool.global_pools`` and
``npool.set_pools`` for the formulas.

``npool.torch.compat`` (imported on its own) runs the original research code's PyTorch calls
(SoftPool, GFGP, WILDCAT, spatial-pooling.torch) on npool; see docs/migration.md.
"""
from ._layers import (AdaptiveSoftPool1d, AdaptiveSoftPool2d, AdaptiveSoftPool3d, GlobalAvgPool, GlobalAvgPool1d, GlobalAvgPool2d, GlobalAvgPool3d,
                      GlobalGeMPool, GlobalGeMPool1d, GlobalGeMPool2d, GlobalGeMPool3d,
                      GlobalKMaxPool, GlobalKMaxPool1d, GlobalKMaxPool2d, GlobalKMaxPool3d,
                      GlobalLSEPool, GlobalLSEPool1d, GlobalLSEPool2d, GlobalLSEPool3d,
                      GlobalMaxPool, GlobalMaxPool1d, GlobalMaxPool2d, GlobalMaxPool3d,
                      MaxEntPool2d, SoftPool1d, SoftPool2d, SoftPool3d, WeldonPool, WeldonPool1d,
                      WeldonPool2d, WeldonPool3d)
from ._ops import (adaptive_maxent_pool1d, adaptive_maxent_pool2d, adaptive_maxent_pool3d,
                   adaptive_soft_pool1d, adaptive_soft_pool2d, adaptive_soft_pool3d,
                   context_gating, global_avg_pool, global_gem_pool, global_kmax_pool,
                   global_lse_pool,
                   global_max_pool, maxent_pool1d, maxent_pool2d, maxent_pool3d, netfv_pool,
                   netrvlad_pool, netvlad_pool, soft_dbow_pool, soft_pool1d, soft_pool2d,
                   soft_pool3d, weldon_pool)
from ._set_layers import (ContextGating, MaskedBatchNorm1d, NetFV, NetRVLAD, NetVLAD,
                          SoftDBoW, load_loupe_checkpoint)

__all__ = ["soft_pool1d", "soft_pool2d", "soft_pool3d", "global_max_pool",
           "global_avg_pool", "global_lse_pool", "global_kmax_pool", "weldon_pool",
           "SoftPool1d", "SoftPool2d", "SoftPool3d", "GlobalMaxPool", "GlobalAvgPool",
           "GlobalLSEPool", "GlobalKMaxPool", "WeldonPool", "maxent_pool1d",
           "maxent_pool2d", "maxent_pool3d", "MaxEntPool2d", "netvlad_pool",
           "netrvlad_pool", "netfv_pool", "soft_dbow_pool", "context_gating", "NetVLAD",
           "NetRVLAD", "NetFV", "SoftDBoW", "ContextGating", "MaskedBatchNorm1d",
           "load_loupe_checkpoint", "GlobalMaxPool1d", "GlobalMaxPool2d",
           "GlobalMaxPool3d", "GlobalAvgPool1d", "GlobalAvgPool2d", "GlobalAvgPool3d",
           "GlobalLSEPool1d", "GlobalLSEPool2d", "GlobalLSEPool3d", "GlobalKMaxPool1d",
           "GlobalKMaxPool2d", "GlobalKMaxPool3d", "WeldonPool1d", "WeldonPool2d",
           "WeldonPool3d", "global_gem_pool", "GlobalGeMPool", "GlobalGeMPool1d",
           "GlobalGeMPool2d", "GlobalGeMPool3d", "adaptive_soft_pool1d", "adaptive_soft_pool2d",
           "adaptive_soft_pool3d", "adaptive_maxent_pool1d", "adaptive_maxent_pool2d",
           "adaptive_maxent_pool3d", "AdaptiveSoftPool1d", "AdaptiveSoftPool2d",
           "AdaptiveSoftPool3d"]
