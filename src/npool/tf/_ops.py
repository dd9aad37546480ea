"""npool's ops as ``tf.custom_gradient`` functions over the NumPy core."""
import numpy as np
import tensorflow as tf

import npool

from .. import _checks

_SOFT_POOL = {1: (npool.soft_pool1d_forward, npool.soft_pool1d_backward),
              2: (npool.soft_pool2d_forward, npool.soft_pool2d_backward),
              3: (npool.soft_pool3d_forward, npool.soft_pool3d_backward)}
DATA_FORMATS = ("channels_last", "channels_first")


class _Layout:
    """Between TensorFlow's axis order and npool's (N, C, *spatial), as views (no copies)."""

    def __init__(self, data_format, nd, ndim):
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', "
                             f"got {data_format!r}")
        if ndim not in (nd + 1, nd + 2):
            raise ValueError(f"x must be {nd + 1}-D or {nd + 2}-D for a {nd}-d pool, "
                             f"got {ndim}-D")
        self.last = data_format == "channels_last"
        self.channel_axis = 0 if ndim == nd + 1 else 1  # in npool's order
        self.nd = nd

    def to_npool(self, a):
        return np.moveaxis(a, -1, self.channel_axis) if self.last else a

    def from_npool(self, a):
        return np.moveaxis(a, self.channel_axis, -1) if self.last else a

    def spatial_axes(self, ndim):
        start = self.channel_axis + (0 if self.last else 1)
        return range(start, start + self.nd)


def _refuse_saved_model_export():
    """A SavedModel would hold a Python callback that no other process can run: say so while
    it is being written (tf.saved_model.save, Keras' model.export), not when it fails to load."""
    try:
        from tensorflow.python.saved_model.save_context import in_save_context
    except ImportError:  # a TensorFlow without it: the limitation stays documented only
        return
    if in_save_context():
        raise RuntimeError(
            "npool.tf ops cannot be exported to a SavedModel: they run npool's NumPy core "
            "through tf.numpy_function, a Python callback that the SavedModel cannot carry. "
            "Save Keras models in the .keras format (model.save('m.keras')) instead")


def _soft_pool(x, nd, kernel_size, stride, padding, ceil_mode, data_format):
    _refuse_saved_model_export()
    x = tf.convert_to_tensor(x)
    if x.dtype not in (tf.float16, tf.float32, tf.float64):
        raise TypeError(f"x must have dtype float16, float32 or float64, got {x.dtype.name}")
    layout = _Layout(data_format, nd, x.shape.rank)
    window = _checks.WindowArgs(nd, kernel_size, stride, padding, ceil_mode)
    args = (window.kernel, window.stride, window.padding, window.ceil_mode)
    forward, backward = _SOFT_POOL[nd]
    out_shape = list(x.shape)
    spatial = [out_shape[a] for a in layout.spatial_axes(x.shape.rank)]
    if all(n is not None for n in spatial):
        for a, n in zip(layout.spatial_axes(x.shape.rank), window.output_size(spatial)):
            out_shape[a] = n
    else:
        for a in layout.spatial_axes(x.shape.rank):
            out_shape[a] = None

    def forward_numpy(xa):
        return layout.from_npool(forward(layout.to_npool(xa), *args))

    def backward_numpy(ga, xa):
        return layout.from_npool(backward(layout.to_npool(ga), layout.to_npool(xa), *args))

    @tf.custom_gradient
    def soft_pool(x):
        y = tf.numpy_function(forward_numpy, [x], x.dtype, stateful=False,
                              name="npool_soft_pool")
        y.set_shape(out_shape)

        def grad(dy):
            gx = tf.numpy_function(backward_numpy, [tf.cast(dy, x.dtype), x], x.dtype,
                                   stateful=False, name="npool_soft_pool_backward")
            gx.set_shape(x.shape)
            return gx

        return y, grad

    return soft_pool(x)


def _make_soft_pool(nd):
    def soft_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                  data_format="channels_last"):
        return _soft_pool(x, nd, kernel_size, stride, padding, ceil_mode, data_format)

    soft_pool.__name__ = soft_pool.__qualname__ = f"soft_pool{nd}d"
    soft_pool.__doc__ = f"""SoftPool over {nd} spatial axes, differentiable (npool.soft_pool{nd}d_forward).

    ``x``: ``(N, *spatial, C)`` (``data_format="channels_last"``, the default) or
    ``(N, C, *spatial)`` (``"channels_first"``), or either without N; float16/32/64.
    ``kernel_size``, ``stride`` (default: the kernel), ``padding`` (explicit, at most half the
    kernel; padded cells are left out of the windows) and ``ceil_mode`` follow PyTorch's pooling
    rules. Works eagerly and in ``tf.function``, not under XLA.
    """
    return soft_pool


soft_pool1d = _make_soft_pool(1)
soft_pool2d = _make_soft_pool(2)
soft_pool3d = _make_soft_pool(3)
