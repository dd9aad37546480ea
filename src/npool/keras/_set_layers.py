"""LOUPE's learnable set-pooling layers (Miech et al. 2017) as Keras 3 layers on every Keras
backend: NetVLAD, NetRVLAD, NetFV, SoftDBoW and ContextGating, with LOUPE's constructor, weight
names and initialisers, and masks for lists of different lengths. Written with ``keras.ops``;
the pools are the ops of the adapter of Keras' backend (``_backends.op``).

Each pooling layer computes ``softmax(BN(x W))`` (or ``softmax(x W + b)`` without BatchNorm)
as the soft assignment, pools with npool's op, projects with ``hidden1_weights`` to
``output_dim`` and optionally gates. BatchNorm statistics come from the real samples only
(Keras' ``BatchNormalization`` with the mask). A Keras mask reaching the layer (from
``keras.layers.Masking``, say) is used when no ``mask`` is passed.

BatchNorm defaults are LOUPE's (``slim.batch_norm``: epsilon 1e-3, decay 0.999, which is Keras'
``momentum``), and the moving variance is updated with the unbiased batch variance as
``slim.batch_norm``'s fused kernel does, so LOUPE's trained weights (``load_loupe_checkpoint``)
give LOUPE's numbers in both modes. LOUPE's ``is_training`` is accepted: it is the mode used
when a call does not say (``training=None``), and LOUPE's ``layer.forward(reshaped_input)``
runs as it did.
"""
import math
import os
from typing import Any, Dict, Optional, Union

import keras
from keras import ops

from .. import _checks
from .._loupe import LOUPE_BN_DECAY, LOUPE_BN_EPSILON, load_loupe_weights
from ._backends import op, require_supported_backend
from ._layers import Shape, Tensor


def _normal(std, mean=0.0):
    return keras.initializers.RandomNormal(mean=mean, stddev=std)


def _batch_norm_options(bn_epsilon, bn_momentum):
    return _checks.batch_norm_options(bn_epsilon, bn_momentum,
                                      "Keras' meaning: TensorFlow's decay")


def _mode(is_training):
    return None if is_training is None else _checks.flag(is_training, "is_training")


@keras.saving.register_keras_serializable(package="npool")
class LoupeBatchNormalization(keras.layers.BatchNormalization):
    """Keras' ``BatchNormalization`` over the last axis with slim's moving-variance update and masks.

    The training step updates the moving variance with the unbiased batch variance
    ``var * n / (n - 1)``, as ``slim.batch_norm`` (LOUPE's, fused) and PyTorch do; the batch
    itself is normalised with the biased one. With a mask, the statistics come from the rows it
    marks True. Inference is Keras' own.

    Parameters
    ----------
    **kwargs
        ``keras.layers.BatchNormalization``'s arguments (``axis`` must stay -1).

    Raises
    ------
    ValueError
        An axis other than -1.

    Examples
    --------
    >>> bn = npool.keras.LoupeBatchNormalization(epsilon=1e-3, momentum=0.999)
    >>> x = np.arange(12, dtype="float32").reshape(6, 2)
    >>> y = bn(x, training=True, mask=np.array([1, 1, 1, 0, 0, 0], bool))
    >>> np.asarray(bn.moving_mean).astype("float64").round(4).tolist()  # rows 0-2: (2, 3)
    [0.002, 0.003]
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.axis not in (-1,):
            raise ValueError(f"LoupeBatchNormalization normalises the last axis (axis=-1), got "
                             f"axis={self.axis!r}")

    def call(self, inputs: Tensor, training: Optional[bool] = None,
             mask: Optional[Tensor] = None) -> Tensor:
        """Normalise the inputs over their last axis.

        Parameters
        ----------
        inputs : tensor
            ``(..., channels)``.
        training : bool, optional
            Keras' flag: batch statistics (and moving-statistics updates) when True.
        mask : tensor of bool, optional
            ``inputs.shape[:-1]``: the rows that give the statistics; None: every row.

        Returns
        -------
        tensor
            The inputs' shape, in the layer's compute dtype.
        """
        if not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, dtype)
        channels = x.shape[-1]
        rows = ops.reshape(x, (-1, channels))
        if mask is None:
            weights = ops.ones_like(rows[:, :1])
        else:
            weights = ops.reshape(ops.cast(mask, dtype), (-1, 1))
        count = ops.sum(weights)
        mean = ops.sum(weights * rows, axis=0) / count
        centered = weights * (rows - mean)
        variance = ops.sum(centered * centered, axis=0) / count
        unbiased = variance * count / ops.maximum(count - 1, 1)
        momentum = self.momentum
        self.moving_mean.assign(ops.cast(self.moving_mean, dtype) * momentum
                                + mean * (1 - momentum))
        self.moving_variance.assign(ops.cast(self.moving_variance, dtype) * momentum
                                    + unbiased * (1 - momentum))
        out = (x - mean) * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            out = out * ops.cast(self.gamma, dtype)
        if self.center:
            out = out + ops.cast(self.beta, dtype)
        return ops.cast(out, self.compute_dtype)


@keras.saving.register_keras_serializable(package="npool")
class ContextGating(keras.layers.Layer):
    """Context Gating (Miech et al.; LOUPE): ``y = x * sigmoid(x W + b)``, a Keras layer.

    With ``add_batch_norm``: ``y = x * sigmoid(BN(x W))``. LOUPE's initialisers:
    ``W, b ~ N(0, 1/sqrt(input_size))``. Input ``(..., input_size)``; output of the same shape.

    Parameters
    ----------
    input_size : int
        The features n of the last axis.
    add_batch_norm : bool, default True
        BatchNorm on ``x W`` instead of the bias.
    bn_epsilon : float, default 1e-3
        The BatchNorm's epsilon (LOUPE's).
    bn_momentum : float, default 0.999
        The BatchNorm's momentum in Keras' meaning (LOUPE's decay).
    is_training : bool, optional
        The mode of calls that pass no ``training`` (None: Keras').
    **kwargs
        Keras' base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises
    ------
    ValueError
        A size that is not a positive int, or bad BatchNorm options.
    TypeError
        A flag that is not a bool.

    See Also
    --------
    npool.tf.context_gating : The function (TensorFlow).

    Examples
    --------
    >>> layer = npool.keras.ContextGating(6, add_batch_norm=False)
    >>> tuple(layer(np.ones((4, 6), "float32")).shape)
    (4, 6)
    """

    def __init__(self, input_size: int, add_batch_norm: bool = True,
                 bn_epsilon: float = LOUPE_BN_EPSILON, bn_momentum: float = LOUPE_BN_DECAY,
                 is_training: Optional[bool] = None, **kwargs: Any) -> None:
        require_supported_backend()
        super().__init__(**kwargs)
        self.input_size = _checks.positive_int(input_size, "input_size")
        self.add_batch_norm = _checks.flag(add_batch_norm, "add_batch_norm")
        self.bn_epsilon, self.bn_momentum = _batch_norm_options(bn_epsilon, bn_momentum)
        self.is_training = _mode(is_training)
        std = 1 / math.sqrt(self.input_size)
        self.gating_weights = self.add_weight(shape=(self.input_size, self.input_size),
                                              initializer=_normal(std), name="gating_weights")
        if self.add_batch_norm:
            self.gating_bn = LoupeBatchNormalization(epsilon=self.bn_epsilon,
                                                     momentum=self.bn_momentum,
                                                     dtype=self.dtype_policy)
        else:
            self.gating_biases = self.add_weight(shape=(self.input_size,),
                                                 initializer=_normal(std), name="gating_biases")

    def build(self, input_shape: Optional[Shape] = None) -> None:
        if self.add_batch_norm:
            self.gating_bn.build((None, self.input_size))

    def call(self, inputs: Tensor, training: Optional[bool] = None) -> Tensor:
        """Gate the inputs.

        Parameters
        ----------
        inputs : tensor
            ``(..., input_size)``.
        training : bool, optional
            Keras' flag for the BatchNorm; None: ``is_training``'s mode.

        Returns
        -------
        tensor
            The inputs' shape.
        """
        training = self.is_training if training is None else training
        w = ops.cast(self.gating_weights, inputs.dtype)
        if not self.add_batch_norm:
            return op("context_gating")(inputs, w, ops.cast(self.gating_biases, inputs.dtype))
        gates = self.gating_bn(ops.matmul(inputs, w), training=training)
        return inputs * ops.sigmoid(ops.cast(gates, inputs.dtype))

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "input_size": self.input_size,
                "add_batch_norm": self.add_batch_norm, "bn_epsilon": self.bn_epsilon,
                "bn_momentum": self.bn_momentum, "is_training": self.is_training}


def _loupe_doc(name, summary, formula, pooled, function, weights=""):
    """The numpydoc docstring of LOUPE layer ``name``."""
    return f"""{summary}

    {formula}

    The LOUPE layer (Miech et al. 2017): the soft assignment ``softmax(BN(x W))`` (or
    ``softmax(x W + b)`` without BatchNorm) over ``cluster_size`` clusters, the pool (pooled
    size {pooled}), the projection ``@ hidden1_weights`` to ``output_dim`` and optional Context
    Gating; LOUPE's weight names and initialisers{weights}, so LOUPE's trained weights load
    (``npool.keras.load_loupe_checkpoint``, which needs TensorFlow to read them). Input
    ``(B, M, D)`` or LOUPE's ``(B * M, D)``, with an optional ``mask`` ``(B, M)`` of bools
    (True: a real sample; the others change nothing; a Keras mask from
    ``keras.layers.Masking`` is used when none is passed); output ``(B, output_dim)``.

    Parameters
    ----------
    feature_size : int
        D, the features of each sample.
    max_samples : int
        M, the samples of each set (read when the input is LOUPE's ``(B * M, D)``).
    cluster_size : int
        K, the clusters.
    output_dim : int
        The output features.
    gating : bool, default True
        Add Context Gating after the projection.
    add_batch_norm : bool, default True
        BatchNorm on the assignment logits (and in the gating) instead of biases.
    is_training : bool, optional
        LOUPE's flag: the mode of calls that pass no ``training`` (None: Keras').
    bn_epsilon : float, default 1e-3
        The BatchNorms' epsilon (LOUPE's).
    bn_momentum : float, default 0.999
        The BatchNorms' momentum in Keras' meaning (LOUPE's decay). Their moving variance is
        updated with the unbiased batch variance, as slim's (``LoupeBatchNormalization``).
    **kwargs
        Keras' base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises
    ------
    ValueError
        A size that is not a positive int, or bad BatchNorm options.
    TypeError
        A flag that is not a bool.

    See Also
    --------
    npool.tf.{function} : The pool alone (TensorFlow).
    load_loupe_checkpoint : LOUPE's trained weights.

    Examples
    --------
    >>> layer = npool.keras.{name}(feature_size=16, max_samples=10, cluster_size=4,
    ...                            output_dim=8)
    >>> x = np.random.default_rng(0).standard_normal((3, 10, 16)).astype("float32")
    >>> mask = np.arange(10) < np.array([[10], [4], [1]])
    >>> tuple(layer(x, mask).shape)
    (3, 8)
    """


class _LoupePool(keras.layers.Layer):
    """The assignment, projection and gating shared by LOUPE's pooling layers; subclasses give
    the pooled size and the pool."""

    def __init__(self, feature_size: int, max_samples: int, cluster_size: int,
                 output_dim: int, gating: bool = True, add_batch_norm: bool = True,
                 is_training: Optional[bool] = None, bn_epsilon: float = LOUPE_BN_EPSILON,
                 bn_momentum: float = LOUPE_BN_DECAY, **kwargs: Any) -> None:
        require_supported_backend()
        super().__init__(**kwargs)
        self.feature_size = _checks.positive_int(feature_size, "feature_size")
        self.max_samples = _checks.positive_int(max_samples, "max_samples")
        self.cluster_size = _checks.positive_int(cluster_size, "cluster_size")
        self.output_dim = _checks.positive_int(output_dim, "output_dim")
        self.gating = _checks.flag(gating, "gating")
        self.add_batch_norm = _checks.flag(add_batch_norm, "add_batch_norm")
        self.bn_epsilon, self.bn_momentum = _batch_norm_options(bn_epsilon, bn_momentum)
        self.is_training = _mode(is_training)
        self.supports_masking = True
        d, k = self.feature_size, self.cluster_size
        self.cluster_weights = self.add_weight(shape=(d, k), initializer=_normal(1 / math.sqrt(d)),
                                               name="cluster_weights")
        if self.add_batch_norm:
            self.cluster_bn = LoupeBatchNormalization(epsilon=self.bn_epsilon,
                                                      momentum=self.bn_momentum,
                                                      dtype=self.dtype_policy)
        else:
            self.cluster_biases = self.add_weight(shape=(k,), name="cluster_biases",
                                                  initializer=_normal(1 / math.sqrt(d)))
        self._add_pool_weights(d, k)
        self.hidden1_weights = self.add_weight(shape=(self._pooled_size(d, k), self.output_dim),
                                               initializer=_normal(1 / math.sqrt(k)),
                                               name="hidden1_weights")
        if self.gating:
            self.context_gating = ContextGating(self.output_dim, self.add_batch_norm,
                                                self.bn_epsilon, self.bn_momentum,
                                                dtype=self.dtype_policy)

    def _add_pool_weights(self, d: int, k: int) -> None:
        """Add the pool's own weights (centres, covariances), if it has any."""

    def _pooled_size(self, d: int, k: int) -> int:
        """The size of the pooled vector for D = d features and K = k clusters."""
        raise NotImplementedError

    def _pool(self, x: Tensor, a: Tensor, mask: Optional[Tensor]) -> Tensor:
        """The pool of x (B, M, D) with assignment a (B, M, K): (B, pooled size)."""
        raise NotImplementedError

    def build(self, input_shape: Optional[Shape] = None) -> None:
        if self.add_batch_norm:
            self.cluster_bn.build((None, None, self.cluster_size))
        if self.gating:
            self.context_gating.build((None, self.output_dim))

    def _weight(self, variable, dtype):
        return ops.cast(variable, dtype)

    def assignment(self, x: Tensor, mask: Optional[Tensor] = None,
                   training: Optional[bool] = None) -> Tensor:
        """The soft assignment ``softmax(BN(x W))`` (without BatchNorm ``softmax(x W + b)``).

        Parameters
        ----------
        x : tensor
            ``(B, M, feature_size)``.
        mask : tensor of bool, optional
            ``(B, M)``: the samples the BatchNorm statistics come from.
        training : bool, optional
            Keras' flag for the BatchNorm.

        Returns
        -------
        tensor
            ``(B, M, cluster_size)``.
        """
        logits = ops.matmul(x, self._weight(self.cluster_weights, x.dtype))
        if self.add_batch_norm:
            logits = ops.cast(self.cluster_bn(logits, training=training, mask=mask), x.dtype)
        else:
            logits = logits + self._weight(self.cluster_biases, x.dtype)
        return ops.softmax(logits, axis=-1)

    def call(self, inputs: Tensor, mask: Optional[Tensor] = None,
             training: Optional[bool] = None) -> Tensor:
        """Pool each set of the inputs into one vector.

        Parameters
        ----------
        inputs : tensor
            ``(B, M, feature_size)``, or LOUPE's ``(B * max_samples, feature_size)``.
        mask : tensor of bool, optional
            ``(B, M)``: True for real samples; None: every sample is real (or Keras' mask).
        training : bool, optional
            Keras' flag; None: ``is_training``'s mode.

        Returns
        -------
        tensor
            ``(B, output_dim)``.
        """
        training = self.is_training if training is None else training
        _checks.set_layer_input(tuple(inputs.shape), self.feature_size, self.max_samples)
        samples = inputs.shape[-2] if len(inputs.shape) == 3 else self.max_samples
        x = ops.reshape(inputs, (-1, samples, self.feature_size))
        if mask is not None:
            mask = ops.reshape(ops.cast(mask, "bool"), (-1, samples))
        pooled = self._pool(x, self.assignment(x, mask, training), mask)
        out = ops.matmul(pooled, self._weight(self.hidden1_weights, x.dtype))
        return self.context_gating(out, training=training) if self.gating else out

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """LOUPE's call: ``layer.forward(reshaped_input)``, the layer in the mode of
        ``is_training`` (Keras' inference mode if it is None). On Keras' PyTorch backend a
        layer is a ``torch.nn.Module`` and this is its ``forward``, which Keras routes to
        ``call``: kept as Keras' there."""
        if keras.backend.backend() == "torch":
            return super().forward(*args, **kwargs)
        return self(*args, **kwargs)

    def compute_mask(self, inputs: Tensor, mask: Optional[Tensor] = None) -> None:
        return None  # the samples axis is pooled away

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        b, _, _ = _checks.set_layer_input(tuple(input_shape), self.feature_size,
                                          self.max_samples)
        return (b, self.output_dim)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "feature_size": self.feature_size,
                "max_samples": self.max_samples, "cluster_size": self.cluster_size,
                "output_dim": self.output_dim, "gating": self.gating,
                "add_batch_norm": self.add_batch_norm, "is_training": self.is_training,
                "bn_epsilon": self.bn_epsilon, "bn_momentum": self.bn_momentum}


@keras.saving.register_keras_serializable(package="npool")
class NetVLAD(_LoupePool):
    __doc__ = _loupe_doc(
        "NetVLAD", "LOUPE's NetVLAD layer: soft assignment, VLAD pooling, projection, gating.",
        "``V_dk = sum_m a_mk (x_md - c_dk)``, intra-normalised over d, flattened D-major and\n"
        "    l2-normalised (the backend adapter's ``netvlad_pool``).", "D * K", "netvlad_pool",
        ", centroids ``cluster_weights2`` (D, K) ~ N(0, 1/sqrt(D))")

    def _add_pool_weights(self, d, k):
        self.cluster_weights2 = self.add_weight(shape=(d, k), name="cluster_weights2",
                                                initializer=_normal(1 / math.sqrt(d)))

    def _pooled_size(self, d, k):
        return d * k

    def _pool(self, x, a, mask):
        return op("netvlad_pool")(x, a, self._weight(self.cluster_weights2, x.dtype), mask)


@keras.saving.register_keras_serializable(package="npool")
class NetRVLAD(_LoupePool):
    __doc__ = _loupe_doc(
        "NetRVLAD", "LOUPE's NetRVLAD layer: NetVLAD without centres.",
        "``V_dk = sum_m a_mk x_md``, normalised as NetVLAD's.", "D * K", "netrvlad_pool")

    def _pooled_size(self, d, k):
        return d * k

    def _pool(self, x, a, mask):
        return op("netrvlad_pool")(x, a, mask)


@keras.saving.register_keras_serializable(package="npool")
class NetFV(_LoupePool):
    __doc__ = _loupe_doc(
        "NetFV", "LOUPE's NetFV layer: first- and second-order Fisher-vector statistics.",
        "The statistics of the features around the means, each normalised, concatenated.",
        "2 D K", "netfv_pool",
        ", means ``cluster_weights2`` ~ N(0, 1/sqrt(D)) and ``covar_weights`` ~\n    "
        "N(1, 1/sqrt(D)) (sigma = covar_weights^2 + 1e-6)")

    def _add_pool_weights(self, d, k):
        self.cluster_weights2 = self.add_weight(shape=(d, k), name="cluster_weights2",
                                                initializer=_normal(1 / math.sqrt(d)))
        self.covar_weights = self.add_weight(shape=(d, k), name="covar_weights",
                                             initializer=_normal(1 / math.sqrt(d), mean=1.0))

    def _pooled_size(self, d, k):
        return 2 * d * k

    def _pool(self, x, a, mask):
        return op("netfv_pool")(x, a, self._weight(self.cluster_weights2, x.dtype),
                                self._weight(self.covar_weights, x.dtype), mask)


@keras.saving.register_keras_serializable(package="npool")
class SoftDBoW(_LoupePool):
    __doc__ = _loupe_doc(
        "SoftDBoW", "LOUPE's Soft-DBoW layer: a soft bag of visual words.",
        "``l2n(sum_m a_m)``: the l2-normalised sum of each set's assignments.", "K",
        "soft_dbow_pool")

    def _pooled_size(self, d, k):
        return k

    def _pool(self, x, a, mask):
        return op("soft_dbow_pool")(a, mask)


LAYERS = {"NetVLAD": NetVLAD, "NetRVLAD": NetRVLAD, "NetFV": NetFV, "SoftDBoW": SoftDBoW,
          "ContextGating": ContextGating}  # by LOUPE's class names (npool.tf's checkpoint loader)
_KERAS_BN = {name: name for name in ("gamma", "beta", "moving_mean", "moving_variance")}


def _build(layer):
    if not layer.built:
        layer.build(None)


def load_loupe_checkpoint(checkpoint: Union[str, "os.PathLike[str]"],
                          layer: Optional[keras.layers.Layer] = None, *,
                          scope: Optional[str] = None,
                          max_samples: Optional[int] = None) -> keras.layers.Layer:
    """LOUPE's trained weights from a TensorFlow 1 checkpoint, as an npool.keras layer.

    The checkpoint is ``tf.train.Saver``'s files of a model that used ``loupe.py``, read with
    ``tf.train.load_checkpoint``. The layers run on every Keras backend; TensorFlow is needed
    only to read the checkpoint. ``cluster_weights2`` (1, D, K) becomes (D, K). Also
    ``npool.tf.load_loupe_checkpoint``.

    Parameters
    ----------
    checkpoint : str or os.PathLike
        The checkpoint's path prefix (``model.ckpt-1000``) or its directory.
    layer : keras.layers.Layer, optional
        A LOUPE layer or ``ContextGating`` (from ``gating_*``) to fill; its sizes must match
        the checkpoint's. None: a new, built ``NetVLAD``, ``NetRVLAD``, ``NetFV`` or
        ``SoftDBoW``, whichever the checkpoint holds, with its sizes, gating and BatchNorm and
        LOUPE's BatchNorm epsilon and momentum.
    scope : str, optional
        Keyword only: the variable scope the block was built under (``"video_VLAD"``); None
        finds the only block in the checkpoint.
    max_samples : int, optional
        Keyword only: M for a new layer.

    Returns
    -------
    keras.layers.Layer
        The layer, filled.

    Raises
    ------
    ValueError
        An unreadable checkpoint, no LOUPE block, several without a scope, or sizes that do
        not match ``layer``'s.
    TypeError
        A checkpoint that is not a path, or a scope that is not a str.
    ImportError
        TensorFlow is not installed.

    Examples
    --------
    >>> vlad = npool.keras.load_loupe_checkpoint("model.ckpt", scope="video_VLAD",
    ...                                          max_samples=300)  # doctest: +SKIP
    >>> tuple(vlad(np.zeros((8 * 300, 1024), "float32"), training=False).shape)  # doctest: +SKIP
    (8, 1024)
    """
    return load_loupe_weights(checkpoint, layer, scope, max_samples, LAYERS, _KERAS_BN,
                              lambda variable, array: variable.assign(array.astype(
                                  variable.dtype)), build=_build)
