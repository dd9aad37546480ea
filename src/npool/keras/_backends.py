"""Which adapter's ops the Keras layers call: the one of Keras' backend, through its public
package (npool.keras sits above the adapters: npool.tf and npool.jax import nothing of it)."""
import keras

_ADAPTERS = {"tensorflow": "npool.tf", "jax": "npool.jax", "torch": "npool.torch"}


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
    arguments (``data_format`` included) in the order npool.tf's functions do (npool.torch's
    through ``_torch_ops``, which adds ``data_format``)."""
    backend = require_supported_backend()
    if backend == "tensorflow":
        import npool.tf as adapter
    elif backend == "jax":
        import npool.jax as adapter
    else:
        from . import _torch_ops as adapter
    return getattr(adapter, name)
