"""Which adapter's ops the Keras layers call: the one of Keras' backend."""
import importlib

import keras

_ADAPTERS = {"tensorflow": "npool.tf._ops", "jax": "npool.jax._ops",
             "torch": "npool.keras._torch_ops"}


def require_supported_backend():
    """The Keras backend's name, or a RuntimeError naming the supported ones."""
    backend = keras.backend.backend()
    if backend not in _ADAPTERS:
        raise RuntimeError(f"npool.keras layers run on Keras' tensorflow, jax and torch "
                           f"backends, but Keras runs on {backend!r}: set KERAS_BACKEND to one "
                           f"of them before importing keras")
    return backend


def op(name):
    """npool's op ``name`` in the adapter of Keras' backend: the function takes the layer's
    arguments (``data_format`` included) in the order npool.tf's functions do."""
    return getattr(importlib.import_module(_ADAPTERS[require_supported_backend()]), name)
