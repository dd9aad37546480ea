"""Keras 3 layers of npool's pooling ops, on every Keras backend (``import npool.keras``).

The layers - ``SoftPooling1D/2D/3D``, ``AdaptiveSoftPooling1D/2D/3D``, ``MaxEntPooling2D`` (with the Global-Feature-Guided
temperature), the global pools (``GlobalMaxPool``, ``GlobalAvgPool``, ``GlobalLSEPool``,
``GlobalKMaxPool``, ``WeldonPool``, ``GlobalGeMPool`` and their ``…1D/2D/3D`` forms) - are written once against
Keras 3 and call the op of the adapter that matches ``keras.backend.backend()``: npool.tf on
TensorFlow, npool.jax on JAX, npool.torch on PyTorch. They register themselves for ``.keras``
files (package ``npool``), so a model saved on one backend loads on another after
``import npool.keras``. ``npool.tf``'s layer names are these same classes.

So are LOUPE's set layers - ``NetVLAD``, ``NetRVLAD``, ``NetFV``, ``SoftDBoW``, ``ContextGating``
and their ``LoupeBatchNormalization`` - written with ``keras.ops`` around the backend's set
pools; ``load_loupe_checkpoint`` fills them from LOUPE's TensorFlow 1 checkpoints (TensorFlow
is needed only to read the checkpoint).
"""
from ._layers import (AdaptiveSoftPooling1D, AdaptiveSoftPooling2D, AdaptiveSoftPooling3D,
                      GlobalAveragePooling1D, GlobalAveragePooling2D, GlobalAveragePooling3D,
                      GlobalGeMPool, GlobalGeMPooling1D, GlobalGeMPooling2D, GlobalGeMPooling3D,
                      GlobalAvgPool, GlobalKMaxPool, GlobalKMaxPooling1D, GlobalKMaxPooling2D,
                      GlobalKMaxPooling3D, GlobalLSEPool, GlobalLSEPooling1D, GlobalLSEPooling2D,
                      GlobalLSEPooling3D, GlobalMaxPool, GlobalMaxPooling1D, GlobalMaxPooling2D,
                      GlobalMaxPooling3D, MaxEntPooling2D, SoftPooling1D, SoftPooling2D,
                      SoftPooling3D, WeldonPool, WeldonPooling1D, WeldonPooling2D,
                      WeldonPooling3D)
from ._set_layers import (ContextGating, LoupeBatchNormalization, NetFV, NetRVLAD, NetVLAD,
                          SoftDBoW, load_loupe_checkpoint)
from ._signatures import show_constructor_signatures

__all__ = ["SoftPooling1D", "SoftPooling2D", "SoftPooling3D", "MaxEntPooling2D",
           "GlobalMaxPool", "GlobalAvgPool", "GlobalLSEPool", "GlobalKMaxPool", "WeldonPool",
           "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
           "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
           "GlobalLSEPooling1D", "GlobalLSEPooling2D", "GlobalLSEPooling3D",
           "GlobalKMaxPooling1D", "GlobalKMaxPooling2D", "GlobalKMaxPooling3D",
           "WeldonPooling1D", "WeldonPooling2D", "WeldonPooling3D", "NetVLAD", "NetRVLAD",
           "NetFV", "SoftDBoW", "ContextGating", "LoupeBatchNormalization",
           "load_loupe_checkpoint", "GlobalGeMPool", "GlobalGeMPooling1D", "GlobalGeMPooling2D",
           "GlobalGeMPooling3D", "AdaptiveSoftPooling1D", "AdaptiveSoftPooling2D",
           "AdaptiveSoftPooling3D"]

show_constructor_signatures([layer for layer in map(globals().get, __all__)
                             if isinstance(layer, type)])
