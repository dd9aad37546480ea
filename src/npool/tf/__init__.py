"""TensorFlow adapter: npool's ops as ``tf.custom_gradient`` functions and Keras 3 layers.

Imported only on request (``import npool.tf``); TensorFlow is an optional dependency. The ops
run npool's NumPy core through ``tf.numpy_function``, eagerly and inside ``tf.function``, with
static output shapes set. ``data_format="channels_last"`` (TensorFlow's convention) is the
default and reaches the kernels as a channels-last view of the same memory, with no transpose
copy; ``"channels_first"`` is available.

Where a graph must stand alone - a SavedModel being written (``tf.saved_model.save``,
``model.export``, TFLite's converter), an XLA compilation (``jit_compile=True``) or inside
``npool.tf.portable()`` - the ops are built from npool's portable decomposition into standard
TensorFlow ops instead (``npool/_decompositions.py``), which also gives their second derivatives.
The layers are ``npool.keras``'s (the same classes, resolved on first use), which run on every
Keras backend; ``.keras`` files load after ``import npool.keras`` (or the first use of a layer
here), which registers them. This module holds no math:
see ``npool.local_pools``, ``npool.global_pools``, ``npool.set_pools`` and ``npool._decompositions``
for the formulas.
"""
from typing import TYPE_CHECKING

from ._standalone import portable
from ._ops import (adaptive_maxent_pool1d, adaptive_maxent_pool2d, adaptive_maxent_pool3d,
                   adaptive_soft_pool1d, adaptive_soft_pool2d, adaptive_soft_pool3d,
                   context_gating, global_avg_pool, global_gem_pool, global_kmax_pool,
                   global_lse_pool,
                   global_max_pool, maxent_pool1d, maxent_pool2d, maxent_pool3d, netfv_pool,
                   netrvlad_pool, netvlad_pool, soft_dbow_pool, soft_pool1d, soft_pool2d,
                   soft_pool3d, weldon_pool)

# The layers are npool.keras' classes (which call this package's functions: npool.keras sits
# above the adapters), resolved on first use; importing npool.keras registers them for .keras
# files.
_KERAS_LAYERS = ("SoftPooling1D", "SoftPooling2D", "SoftPooling3D", "AdaptiveSoftPooling1D",
                 "AdaptiveSoftPooling2D", "AdaptiveSoftPooling3D", "MaxEntPooling2D",
                 "GlobalMaxPool", "GlobalAvgPool", "GlobalLSEPool", "GlobalKMaxPool",
                 "WeldonPool", "GlobalGeMPool", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
                 "GlobalMaxPooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
                 "GlobalAveragePooling3D", "GlobalLSEPooling1D", "GlobalLSEPooling2D",
                 "GlobalLSEPooling3D", "GlobalKMaxPooling1D", "GlobalKMaxPooling2D",
                 "GlobalKMaxPooling3D", "WeldonPooling1D", "WeldonPooling2D", "WeldonPooling3D",
                 "GlobalGeMPooling1D", "GlobalGeMPooling2D", "GlobalGeMPooling3D", "NetVLAD",
                 "NetRVLAD", "NetFV", "SoftDBoW", "ContextGating", "LoupeBatchNormalization",
                 "load_loupe_checkpoint")


if TYPE_CHECKING:  # the same names, for type checkers (no import at run time)
    from ..keras import (AdaptiveSoftPooling1D, AdaptiveSoftPooling2D, AdaptiveSoftPooling3D,
                         ContextGating, GlobalAveragePooling1D, GlobalAveragePooling2D,
                         GlobalAveragePooling3D, GlobalAvgPool, GlobalGeMPool, GlobalGeMPooling1D,
                         GlobalGeMPooling2D, GlobalGeMPooling3D, GlobalKMaxPool,
                         GlobalKMaxPooling1D, GlobalKMaxPooling2D, GlobalKMaxPooling3D,
                         GlobalLSEPool, GlobalLSEPooling1D, GlobalLSEPooling2D,
                         GlobalLSEPooling3D, GlobalMaxPool, GlobalMaxPooling1D,
                         GlobalMaxPooling2D, GlobalMaxPooling3D, LoupeBatchNormalization,
                         MaxEntPooling2D, NetFV, NetRVLAD, NetVLAD, SoftDBoW, SoftPooling1D,
                         SoftPooling2D, SoftPooling3D, WeldonPool, WeldonPooling1D,
                         WeldonPooling2D, WeldonPooling3D, load_loupe_checkpoint)


def __getattr__(name):
    """npool.keras' layer ``name`` (PEP 562: resolved after both packages are imported)."""
    if name in _KERAS_LAYERS:
        import npool.keras
        return getattr(npool.keras, name)
    raise AttributeError(f"module 'npool.tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_KERAS_LAYERS))


__all__ = ["soft_pool1d", "soft_pool2d", "soft_pool3d", "global_max_pool",
           "global_avg_pool", "global_lse_pool", "global_kmax_pool", "weldon_pool",
           "SoftPooling1D", "SoftPooling2D", "SoftPooling3D", "GlobalMaxPool",
           "GlobalAvgPool", "GlobalLSEPool", "GlobalKMaxPool", "WeldonPool",
           "maxent_pool1d", "maxent_pool2d", "maxent_pool3d", "MaxEntPooling2D",
           "netvlad_pool", "netrvlad_pool", "netfv_pool", "soft_dbow_pool",
           "context_gating", "portable", "NetVLAD", "NetRVLAD", "NetFV", "SoftDBoW",
           "ContextGating", "LoupeBatchNormalization", "load_loupe_checkpoint",
           "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
           "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
           "GlobalLSEPooling1D", "GlobalLSEPooling2D", "GlobalLSEPooling3D",
           "GlobalKMaxPooling1D", "GlobalKMaxPooling2D", "GlobalKMaxPooling3D",
           "WeldonPooling1D", "WeldonPooling2D", "WeldonPooling3D", "global_gem_pool",
           "GlobalGeMPool", "GlobalGeMPooling1D", "GlobalGeMPooling2D", "GlobalGeMPooling3D",
           "adaptive_soft_pool1d", "adaptive_soft_pool2d", "adaptive_soft_pool3d",
           "adaptive_maxent_pool1d", "adaptive_maxent_pool2d", "adaptive_maxent_pool3d",
           "AdaptiveSoftPooling1D", "AdaptiveSoftPooling2D", "AdaptiveSoftPooling3D"]
