"""Keras 3 layers of npool's ops, named as Keras names its own pooling layers."""
import keras

from .. import _checks
from ._ops import soft_pool1d, soft_pool2d, soft_pool3d


class _SoftPoolingND(keras.layers.Layer):
    """SoftPool with the arguments of Keras' pooling layers.

    ``padding`` is ``"valid"`` (no padding) or explicit per-axis padding (an int or a tuple, at
    most half the pool size; padded cells are left out of the windows); ``"same"`` is refused,
    as its asymmetric padding has no SoftPool equivalent here. ``ceil_mode`` is PyTorch's
    output-size rule. ``data_format`` defaults to ``keras.config.image_data_format()``.
    """

    _nd = None
    _function = None

    def __init__(self, pool_size=2, strides=None, padding="valid", ceil_mode=False,
                 data_format=None, **kwargs):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"npool.tf layers need Keras' TensorFlow backend, but Keras "
                               f"runs on {keras.backend.backend()!r}: set KERAS_BACKEND="
                               "tensorflow (npool.torch has the PyTorch modules)")
        super().__init__(**kwargs)
        if isinstance(padding, str):
            if padding.lower() != "valid":
                raise ValueError(f"padding must be 'valid' or explicit ints, got {padding!r}: "
                                 "'same' pads asymmetrically, which SoftPool does not do")
            padding = 0
        self.pool_size = pool_size
        self.strides = strides
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.data_format = data_format or keras.config.image_data_format()
        _checks.WindowArgs(self._nd, pool_size, strides, padding, ceil_mode)  # fail early
        self.supports_jit = False  # a NumPy callback: XLA cannot compile it

    def call(self, inputs):
        return type(self)._function(inputs, self.pool_size, self.strides, self.padding,
                                    self.ceil_mode, self.data_format)

    def compute_output_shape(self, input_shape):
        window = _checks.WindowArgs(self._nd, self.pool_size, self.strides, self.padding,
                                    self.ceil_mode)
        shape = list(input_shape)
        axes = range(1, 1 + self._nd) if self.data_format == "channels_last" else \
            range(2, 2 + self._nd)
        spatial = [shape[a] for a in axes]
        out = window.output_size(spatial) if None not in spatial else [None] * self._nd
        for a, n in zip(axes, out):
            shape[a] = n
        return tuple(shape)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding, "ceil_mode": self.ceil_mode,
                "data_format": self.data_format}


@keras.saving.register_keras_serializable(package="npool")
class SoftPooling1D(_SoftPoolingND):
    """SoftPool over 1 spatial axis: ``y_o = sum_i softmax(x over window o)_i x_i``."""
    _nd = 1
    _function = staticmethod(soft_pool1d)


@keras.saving.register_keras_serializable(package="npool")
class SoftPooling2D(_SoftPoolingND):
    """SoftPool over 2 spatial axes: ``y_o = sum_i softmax(x over window o)_i x_i``."""
    _nd = 2
    _function = staticmethod(soft_pool2d)


@keras.saving.register_keras_serializable(package="npool")
class SoftPooling3D(_SoftPoolingND):
    """SoftPool over 3 spatial axes: ``y_o = sum_i softmax(x over window o)_i x_i``."""
    _nd = 3
    _function = staticmethod(soft_pool3d)
