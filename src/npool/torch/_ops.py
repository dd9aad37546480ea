"""npool.torch's functional forms, from the three families of ops (``_local_ops``,
``_global_ops``, ``_set_ops``: each registers its custom ops, fakes, autograd, second order,
autocast and vmap rules with ``torch.library``; ``_registration`` holds what they share)."""
from ._global_ops import (TensorOrPair, global_avg_pool, global_gem_pool, global_kmax_pool,
                          global_lse_pool, global_max_pool, weldon_pool)
from ._local_ops import (adaptive_maxent_pool1d, adaptive_maxent_pool2d, adaptive_maxent_pool3d,
                         adaptive_soft_pool1d, adaptive_soft_pool2d, adaptive_soft_pool3d,
                         maxent_pool1d, maxent_pool2d, maxent_pool3d, soft_pool1d, soft_pool2d,
                         soft_pool3d)
from ._set_ops import context_gating, netfv_pool, netrvlad_pool, netvlad_pool, soft_dbow_pool

__all__ = ["TensorOrPair", "global_avg_pool", "global_gem_pool", "global_kmax_pool",
           "global_lse_pool", "global_max_pool", "weldon_pool", "maxent_pool1d",
           "maxent_pool2d", "maxent_pool3d", "soft_pool1d", "soft_pool2d", "soft_pool3d",
           "context_gating", "adaptive_maxent_pool1d", "adaptive_maxent_pool2d",
           "adaptive_maxent_pool3d", "adaptive_soft_pool1d", "adaptive_soft_pool2d",
           "adaptive_soft_pool3d", "netfv_pool", "netrvlad_pool", "netvlad_pool", "soft_dbow_pool"]
