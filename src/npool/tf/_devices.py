"""Where npool.tf's kernels run, and how tensors reach them without a hidden copy.

- Host tensors go to the NumPy core through ``tf.numpy_function`` (which hands over host
  memory).
- GPU tensors go to npool's CUDA kernels through DLPack, inside ``tf.py_function`` (which keeps
  them on the device): each input is read in place (``npool._cuda._dlpack``), the kernels run on
  it, and each result goes back to TensorFlow as a DLPack capsule over the kernels' output.
- GPU tensors when npool's CUDA backend is unavailable (no PyCUDA): the op's decomposition into
  standard TensorFlow ops runs on the GPU instead (``_standalone.py``). Never a silent copy to
  the host: ``tf.numpy_function`` on a GPU tensor would make one.

Eagerly the tensors' devices decide; while a ``tf.function`` is traced, whether TensorFlow sees
a GPU does (placement is TensorFlow's, at run time), and the callback checks each tensor's
device again when it runs.
"""
import numpy as np
import tensorflow as tf

import npool

HOST, GPU, PORTABLE = "host", "gpu", "portable"
# The DLPack device types read as GPU memory (tests add the CPU's to run the plumbing on the
# emulated device).
GPU_DEVICES = (2, 13)


def placement(tensors):
    """HOST, GPU (npool's CUDA kernels through DLPack) or PORTABLE (the decomposition) for an
    op on ``tensors``."""
    if tf.executing_eagerly():
        on_gpu = any("GPU" in (t.device or "") for t in tensors)
    else:
        on_gpu = bool(tf.config.list_logical_devices("GPU"))
    if not on_gpu:
        return HOST
    return GPU if npool.cuda_available() else PORTABLE


def call_core(function, inputs, dtypes, name, where):
    """``function`` (of core arrays: NumPy or GPU arrays, returning one or a list of them)
    over ``inputs`` as a TensorFlow op; ``dtypes`` one dtype or a list, as
    ``tf.numpy_function``'s ``Tout``."""
    if where == HOST:
        return tf.numpy_function(function, inputs, dtypes, stateful=False, name=name)
    single = not isinstance(dtypes, (list, tuple))
    result = tf.py_function(lambda *ts: _device_call(function, ts, single), inputs,
                            [dtypes] if single else list(dtypes), name=name)
    return result[0] if single else result


def _device_call(function, tensors, single):
    from npool._cuda import _dlpack
    from npool._cuda._arrays import View, any_dtype, describe
    devices = [_dlpack.device_of(t) for t in tensors]
    if not any(d is not None and d[0] in GPU_DEVICES for d in devices):
        results = function(*[t.numpy() for t in tensors])  # placed on the host after all
        return [results] if single else list(results)
    arrays = [View(_dlpack.read(t, f"input {i}", GPU_DEVICES)) for i, t in enumerate(tensors)]
    results = function(*arrays)
    results = [results] if single else list(results)
    device = next(d for d in devices if d is not None and d[0] in GPU_DEVICES)
    return [tf.experimental.dlpack.from_dlpack(
        _dlpack.capsule(describe(r, f"result {i}", any_dtype()), device))
        for i, r in enumerate(results)]


def moveaxis(a, source, destination):
    """``numpy.moveaxis`` for the core's host and GPU arrays (a view either way)."""
    if isinstance(a, np.ndarray):
        return np.moveaxis(a, source, destination)
    from npool._cuda import _arrays
    return _arrays.moveaxis(a, source, destination)


def with_leading_ones(a, ndim):
    """``a`` with size-1 axes in front up to ``ndim`` axes (a view)."""
    if isinstance(a, np.ndarray):
        return np.reshape(a, (1,) * (ndim - a.ndim) + a.shape)
    from npool._cuda import _arrays
    return _arrays.with_leading_ones(a, ndim)


def without_leading_ones(a, ndim):
    """``a`` with its leading size-1 axes dropped down to ``ndim`` axes (a view)."""
    if isinstance(a, np.ndarray):
        return np.reshape(a, a.shape[a.ndim - ndim:])
    from npool._cuda import _arrays
    array = _arrays.describe(a, "array", _arrays.any_dtype())
    return _arrays.View(array, range(array.ndim - ndim, array.ndim))
