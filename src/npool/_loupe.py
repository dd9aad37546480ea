"""LOUPE's trained weights: reading a TensorFlow 1 checkpoint of a LOUPE model (Miech et al.,
``loupe.py``) for the PyTorch and TensorFlow adapters' ``load_loupe_checkpoint``.

A LOUPE block creates its variables with ``tf.get_variable`` under the caller's variable scope:

======================================  ===================  ==================================
checkpoint name (under the scope)       shape                npool layer attribute
======================================  ===================  ==================================
``cluster_weights``                     (D, K)               ``cluster_weights``
``cluster_biases`` (no BatchNorm)       (K,)                 ``cluster_biases``
``cluster_bn/{gamma,beta}``             (K,)                 ``cluster_bn`` weight/bias
``cluster_bn/moving_{mean,variance}``   (K,)                 ``cluster_bn`` running statistics
``cluster_weights2`` (NetVLAD, NetFV)   (1, D, K)            ``cluster_weights2`` (D, K)
``covar_weights`` (NetFV)               (D, K)               ``covar_weights``
``hidden1_weights``                     (pooled size, O)     ``hidden1_weights``
``gating_weights`` (gating)             (O, O)               ``context_gating.gating_weights``
``gating_biases`` (gating, no BN)       (O,)                 ``context_gating.gating_biases``
``gating_bn/...`` (gating, BatchNorm)   (O,)                 ``context_gating.gating_bn``
======================================  ===================  ==================================

The pooled size is D·K (NetVLAD, NetRVLAD), 2·D·K (NetFV) or K (Soft-DBoW); which block wrote
the checkpoint follows from the names and shapes. Optimizer slots (``.../Adam``) and other
variables are ignored. TensorFlow is needed to read the checkpoint (``tf.train.load_checkpoint``),
in either adapter.
"""
import os

import numpy as np

# slim.batch_norm's defaults, which LOUPE's BatchNorms use (LOUPE passes center and scale only).
LOUPE_BN_EPSILON = 1e-3
LOUPE_BN_DECAY = 0.999

_BN_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")


class LoupeWeights:
    """The variables of one LOUPE block: ``kind`` (``"NetVLAD"``, ``"NetRVLAD"``, ``"NetFV"``,
    ``"SoftDBoW"`` or ``"ContextGating"``), ``config`` (the layer's constructor arguments but
    ``max_samples``, which a checkpoint does not hold) and ``arrays`` (checkpoint name under the
    scope -> float32/float64 NumPy array, ``cluster_weights2`` reshaped to (D, K))."""

    def __init__(self, kind, config, arrays, scope):
        self.kind, self.config, self.arrays, self.scope = kind, config, arrays, scope

    def batch_norm(self, name):
        """``{gamma, beta, moving_mean, moving_variance}`` of BatchNorm scope ``name``."""
        return {key: self.arrays[f"{name}/{key}"] for key in _BN_NAMES}

    def check_config(self, config, layer):
        """ValueError naming every constructor argument of ``layer`` that differs from the
        checkpoint's."""
        wrong = [f"{key}={config[key]!r} (checkpoint: {value!r})"
                 for key, value in self.config.items() if config[key] != value]
        if wrong:
            raise ValueError(f"layer does not match the checkpoint's {self.kind} at scope "
                             f"{self.scope!r}: {type(layer).__name__} has {', '.join(wrong)}")


def _reader(checkpoint):
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("reading a LOUPE (TensorFlow 1) checkpoint needs TensorFlow: pip "
                          "install tensorflow-cpu") from None
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path (a checkpoint prefix or its directory), got "
                        f"{type(checkpoint).__name__}")
    try:
        return tf.train.load_checkpoint(os.fspath(checkpoint))
    except (ValueError, tf.errors.OpError) as error:
        raise ValueError(f"checkpoint {os.fspath(checkpoint)!r} is not a readable TensorFlow "
                         f"checkpoint: {error}") from None


def _scopes(names, anchor):
    """The variable scopes (prefixes ending in '/', or '') holding a variable ``anchor``."""
    return sorted(name[:-len(anchor)] for name in names
                  if name == anchor or name.endswith("/" + anchor))


def _pick_scope(names, scope, anchor):
    if scope is not None:
        if not isinstance(scope, str):
            raise TypeError(f"scope must be a str, got {type(scope).__name__}")
        prefix = scope.strip("/") + "/" if scope.strip("/") else ""
        if prefix + anchor not in names:
            found = _scopes(names, anchor)
            raise ValueError(f"scope {scope!r} holds no {anchor!r} in the checkpoint; scopes "
                             f"with one: {[s.rstrip('/') for s in found] or 'none'}")
        return prefix
    found = _scopes(names, anchor)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"the checkpoint has no variable {anchor!r}: it holds no LOUPE block "
                         f"(variables: {sorted(names)[:8]}{' ...' if len(names) > 8 else ''})")
    raise ValueError(f"the checkpoint holds {len(found)} LOUPE blocks, at scopes "
                     f"{[s.rstrip('/') for s in found]}: pass scope= to pick one")


def _kind(arrays, d, k, rows, expected):
    if "covar_weights" in arrays:
        kind = "NetFV"
    elif "cluster_weights2" in arrays:
        kind = "NetVLAD"
    elif rows == k and rows == d * k:  # D = 1: Soft-DBoW and NetRVLAD have the same variables
        if expected not in ("SoftDBoW", "NetRVLAD"):
            raise ValueError("with feature_size 1 a Soft-DBoW and a NetRVLAD checkpoint look "
                             "the same: pass the layer to fill (layer=)")
        kind = expected
    else:
        kind = "SoftDBoW" if rows == k else "NetRVLAD"
    pooled = {"NetVLAD": d * k, "NetRVLAD": d * k, "NetFV": 2 * d * k, "SoftDBoW": k}[kind]
    if rows != pooled:
        raise ValueError(f"hidden1_weights has {rows} rows; a {kind} with feature_size {d} and "
                         f"cluster_size {k} needs {pooled}")
    return kind


def read_loupe_checkpoint(checkpoint, scope=None, expected=None):
    """The LOUPE block of ``checkpoint`` under variable scope ``scope`` (None: the only one);
    ``expected`` (a kind) says which block the caller wants. Returns a ``LoupeWeights``."""
    reader = _reader(checkpoint)
    shapes = reader.get_variable_to_shape_map()
    gating_only = expected == "ContextGating"
    prefix = _pick_scope(shapes, scope, "gating_weights" if gating_only else "cluster_weights")

    def read(name, shape=None):
        full = prefix + name
        if full not in shapes:
            return None
        array = reader.get_tensor(full)
        if not (isinstance(array, np.ndarray) and array.dtype.kind == "f"):
            raise ValueError(f"checkpoint variable {full!r} is not a float array")
        if shape is not None and array.shape != shape:
            raise ValueError(f"checkpoint variable {full!r} has shape {array.shape}, expected "
                             f"{shape}")
        return array

    arrays = {}

    def take(name, shape, required=True):
        array = read(name, shape)
        if array is None and required:
            raise ValueError(f"the checkpoint has no {prefix + name!r}")
        if array is not None:
            arrays[name] = array
        return array

    def take_batch_norm(name, size):
        present = [key for key in _BN_NAMES if prefix + f"{name}/{key}" in shapes]
        if present and len(present) < len(_BN_NAMES):
            missing = sorted(set(_BN_NAMES) - set(present))
            raise ValueError(f"BatchNorm {prefix + name!r} lacks {missing} (LOUPE's has center "
                             f"and scale)")
        for key in present:
            take(f"{name}/{key}", (size,))
        return bool(present)

    config = {}
    if not gating_only:
        weights = read("cluster_weights")
        if weights is None or weights.ndim != 2:
            raise ValueError(f"checkpoint variable {prefix + 'cluster_weights'!r} must be "
                             f"(feature_size, cluster_size)")
        arrays["cluster_weights"] = weights
        d, k = weights.shape
        hidden = read("hidden1_weights")
        if hidden is None or hidden.ndim != 2:
            raise ValueError(f"the checkpoint has no 2-D {prefix + 'hidden1_weights'!r}")
        arrays["hidden1_weights"] = hidden
        centers = read("cluster_weights2")
        if centers is not None:
            if centers.shape not in ((1, d, k), (d, k)):
                raise ValueError(f"checkpoint variable {prefix + 'cluster_weights2'!r} has shape "
                                 f"{centers.shape}, expected (1, {d}, {k})")
            arrays["cluster_weights2"] = centers.reshape(d, k)
        take("covar_weights", (d, k), required=False)
        kind = _kind(arrays, d, k, hidden.shape[0], expected)
        with_bn = take_batch_norm("cluster_bn", k)
        if not with_bn:
            take("cluster_biases", (k,))
        out = hidden.shape[1]
        gating = prefix + "gating_weights" in shapes
        config = {"feature_size": d, "cluster_size": k, "output_dim": out, "gating": gating,
                  "add_batch_norm": with_bn}
    else:
        kind, gating = "ContextGating", True
        out = read("gating_weights").shape[0]
        with_bn = None
    if gating:
        take("gating_weights", (out, out))
        gating_bn = take_batch_norm("gating_bn", out)
        if with_bn is not None and gating_bn != with_bn:
            raise ValueError(f"scope {prefix!r}: cluster_bn and gating_bn must both be present "
                             f"or both absent (LOUPE's add_batch_norm sets both)")
        if not gating_bn:
            take("gating_biases", (out,))
        if gating_only:
            config = {"input_size": out, "add_batch_norm": gating_bn}
    if expected is not None and expected != kind:
        raise ValueError(f"the checkpoint's block at scope {prefix.rstrip('/')!r} is a {kind}, "
                         f"not a {expected}")
    return LoupeWeights(kind, config, arrays, prefix.rstrip("/"))


def load_loupe_weights(checkpoint, layer, scope, max_samples, classes, bn_attributes, assign,
                       build=None):
    """The body of the adapters' ``load_loupe_checkpoint``: ``classes`` maps each kind to the
    adapter's layer class, ``bn_attributes`` maps ``gamma/beta/moving_mean/moving_variance``
    to the adapter's BatchNorm attributes, ``assign(variable, array)`` copies one array in and
    ``build(layer)`` (if given) creates a layer's variables before they are filled."""
    kind = None
    if layer is not None:
        kind = next((name for name, cls in classes.items() if isinstance(layer, cls)), None)
        if kind is None:
            raise TypeError(f"layer must be one of npool's {', '.join(classes)} layers, got "
                            f"{type(layer).__name__}")
        if max_samples is not None:
            raise TypeError("max_samples is for a new layer; the given layer has its own")
    weights = read_loupe_checkpoint(checkpoint, scope, kind)
    if layer is None:
        if max_samples is None:
            raise ValueError("max_samples is needed to build the layer (a checkpoint does not "
                             "hold it): load_loupe_checkpoint(path, max_samples=...)")
        layer = classes[weights.kind](max_samples=max_samples, **weights.config)
    else:
        weights.check_config({key: getattr(layer, key) for key in weights.config}, layer)
    if build is not None:
        build(layer)
    gating = layer if weights.kind == "ContextGating" else getattr(layer, "context_gating", None)
    for name, array in weights.arrays.items():
        scope_name, _, leaf = name.rpartition("/")
        if scope_name:  # a BatchNorm's variable
            owner = layer.cluster_bn if scope_name == "cluster_bn" else gating.gating_bn
            assign(getattr(owner, bn_attributes[leaf]), array)
        else:
            assign(getattr(gating if name.startswith("gating_") else layer, name), array)
    return layer
