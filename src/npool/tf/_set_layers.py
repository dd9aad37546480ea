"""LOUPE's learnable set-pooling layers (Miech et al. 2017) as Keras 3 layers: NetVLAD,
NetRVLAD, NetFV, SoftDBoW and ContextGating, with LOUPE's constructor, weight names and
initialisers, and masks for lists of different lengths.

Each pooling layer computes ``softmax(BN(x W))`` (or ``softmax(x W + b)`` without BatchNorm)
as the soft assignment, pools with npool's op, projects with ``hidden1_weights`` to
``output_dim`` and optionally gates. BatchNorm statistics come from the real samples only
(Keras' ``BatchNormalization`` with the mask). A Keras mask reaching the layer (from
``keras.layers.Masking``, say) is used when no ``mask`` is passed.
"""
import math

import keras
import tensorflow as tf

from .. import _checks
from ._layers import require_tensorflow_backend
from ._ops import context_gating, netfv_pool, netrvlad_pool, netvlad_pool, soft_dbow_pool


def _normal(std, mean=0.0):
    return keras.initializers.RandomNormal(mean=mean, stddev=std)


@keras.saving.register_keras_serializable(package="npool")
class ContextGating(keras.layers.Layer):
    """``y = x * sigmoid(x W + b)``, or ``x * sigmoid(BN(x W))`` with ``add_batch_norm``;
    ``W, b ~ N(0, 1/sqrt(input_size))`` (LOUPE)."""

    def __init__(self, input_size, add_batch_norm=True, **kwargs):
        require_tensorflow_backend()
        super().__init__(**kwargs)
        self.input_size = _checks.positive_int(input_size, "input_size")
        self.add_batch_norm = bool(add_batch_norm)
        self.supports_jit = False
        std = 1 / math.sqrt(self.input_size)
        self.gating_weights = self.add_weight(shape=(self.input_size, self.input_size),
                                              initializer=_normal(std), name="gating_weights")
        if self.add_batch_norm:
            self.gating_bn = keras.layers.BatchNormalization()
        else:
            self.gating_biases = self.add_weight(shape=(self.input_size,),
                                                 initializer=_normal(std), name="gating_biases")

    def build(self, input_shape=None):
        if self.add_batch_norm:
            self.gating_bn.build((None, self.input_size))

    def call(self, inputs, training=None):
        w = tf.cast(self.gating_weights, inputs.dtype)
        if not self.add_batch_norm:
            return context_gating(inputs, w, tf.cast(self.gating_biases, inputs.dtype))
        gates = self.gating_bn(tf.matmul(inputs, w), training=training)
        return inputs * tf.sigmoid(tf.cast(gates, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "input_size": self.input_size,
                "add_batch_norm": self.add_batch_norm}


class _LoupePool(keras.layers.Layer):
    """The assignment, projection and gating shared by LOUPE's pooling layers; subclasses give
    the pooled size and the pool."""

    def __init__(self, feature_size, max_samples, cluster_size, output_dim, gating=True,
                 add_batch_norm=True, **kwargs):
        require_tensorflow_backend()
        super().__init__(**kwargs)
        self.feature_size = _checks.positive_int(feature_size, "feature_size")
        self.max_samples = _checks.positive_int(max_samples, "max_samples")
        self.cluster_size = _checks.positive_int(cluster_size, "cluster_size")
        self.output_dim = _checks.positive_int(output_dim, "output_dim")
        self.gating = bool(gating)
        self.add_batch_norm = bool(add_batch_norm)
        self.supports_masking = True
        self.supports_jit = False
        d, k = self.feature_size, self.cluster_size
        self.cluster_weights = self.add_weight(shape=(d, k), initializer=_normal(1 / math.sqrt(d)),
                                               name="cluster_weights")
        if self.add_batch_norm:
            self.cluster_bn = keras.layers.BatchNormalization()
        else:
            self.cluster_biases = self.add_weight(shape=(k,), name="cluster_biases",
                                                  initializer=_normal(1 / math.sqrt(d)))
        self._add_pool_weights(d, k)
        self.hidden1_weights = self.add_weight(shape=(self._pooled_size(d, k), self.output_dim),
                                               initializer=_normal(1 / math.sqrt(k)),
                                               name="hidden1_weights")
        if self.gating:
            self.context_gating = ContextGating(self.output_dim, self.add_batch_norm)

    def _add_pool_weights(self, d, k):
        pass

    def build(self, input_shape=None):
        if self.add_batch_norm:
            self.cluster_bn.build((None, None, self.cluster_size))
        if self.gating:
            self.context_gating.build((None, self.output_dim))

    def _weight(self, variable, dtype):
        return tf.cast(variable, dtype)

    def assignment(self, x, mask=None, training=None):
        """The soft assignment ``softmax(BN(x W))`` (``softmax(x W + b)``): (B, M, K)."""
        logits = tf.matmul(x, self._weight(self.cluster_weights, x.dtype))
        if self.add_batch_norm:
            logits = tf.cast(self.cluster_bn(logits, training=training, mask=mask), x.dtype)
        else:
            logits = logits + self._weight(self.cluster_biases, x.dtype)
        return tf.nn.softmax(logits, axis=-1)

    def call(self, inputs, mask=None, training=None):
        """``inputs`` (B, M, feature_size), or LOUPE's (B * max_samples, feature_size); ``mask``
        (B, M) bools, True for real samples, or None. Returns (B, output_dim)."""
        _checks.set_layer_input(tuple(inputs.shape), self.feature_size, self.max_samples)
        x = tf.reshape(inputs, [-1, inputs.shape[-2] if inputs.shape.rank == 3
                                else self.max_samples, self.feature_size])
        if mask is not None:
            mask = tf.reshape(tf.cast(mask, tf.bool), tf.shape(x)[:2])
        pooled = self._pool(x, self.assignment(x, mask, training), mask)
        out = tf.matmul(pooled, self._weight(self.hidden1_weights, x.dtype))
        return self.context_gating(out, training=training) if self.gating else out

    def compute_mask(self, inputs, mask=None):
        return None  # the samples axis is pooled away

    def compute_output_shape(self, input_shape):
        b, _, _ = _checks.set_layer_input(tuple(input_shape), self.feature_size,
                                          self.max_samples)
        return (b, self.output_dim)

    def get_config(self):
        return {**super().get_config(), "feature_size": self.feature_size,
                "max_samples": self.max_samples, "cluster_size": self.cluster_size,
                "output_dim": self.output_dim, "gating": self.gating,
                "add_batch_norm": self.add_batch_norm}


@keras.saving.register_keras_serializable(package="npool")
class NetVLAD(_LoupePool):
    """NetVLAD (``npool.netvlad_pool_forward``): centroids ``cluster_weights2`` (D, K) ~
    N(0, 1/sqrt(D)); pooled size D * K, flattened D-major as LOUPE."""

    def _add_pool_weights(self, d, k):
        self.cluster_weights2 = self.add_weight(shape=(d, k), name="cluster_weights2",
                                                initializer=_normal(1 / math.sqrt(d)))

    def _pooled_size(self, d, k):
        return d * k

    def _pool(self, x, a, mask):
        return netvlad_pool(x, a, self._weight(self.cluster_weights2, x.dtype), mask)


@keras.saving.register_keras_serializable(package="npool")
class NetRVLAD(_LoupePool):
    """NetRVLAD (``npool.netrvlad_pool_forward``): NetVLAD without centroids."""

    def _pooled_size(self, d, k):
        return d * k

    def _pool(self, x, a, mask):
        return netrvlad_pool(x, a, mask)


@keras.saving.register_keras_serializable(package="npool")
class NetFV(_LoupePool):
    """NetFV (``npool.netfv_pool_forward``): means ``cluster_weights2`` ~ N(0, 1/sqrt(D)) and
    ``covar_weights`` ~ N(1, 1/sqrt(D)) (sigma = covar_weights^2 + 1e-6); pooled size 2 D K."""

    def _add_pool_weights(self, d, k):
        self.cluster_weights2 = self.add_weight(shape=(d, k), name="cluster_weights2",
                                                initializer=_normal(1 / math.sqrt(d)))
        self.covar_weights = self.add_weight(shape=(d, k), name="covar_weights",
                                             initializer=_normal(1 / math.sqrt(d), mean=1.0))

    def _pooled_size(self, d, k):
        return 2 * d * k

    def _pool(self, x, a, mask):
        return netfv_pool(x, a, self._weight(self.cluster_weights2, x.dtype),
                          self._weight(self.covar_weights, x.dtype), mask)


@keras.saving.register_keras_serializable(package="npool")
class SoftDBoW(_LoupePool):
    """Soft-DBoW (``npool.soft_dbow_pool_forward``): the l2-normalised sum of the assignments;
    pooled size K."""

    def _pooled_size(self, d, k):
        return k

    def _pool(self, x, a, mask):
        return soft_dbow_pool(a, mask)
