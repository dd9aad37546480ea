"""npool.tf: tf.custom_gradient functions (eager, tf.function, gradients) and Keras layers."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import npool  # noqa: E402
import npool.tf as ntf  # noqa: E402
from npool.testing.strategies import local_pool_inputs  # noqa: E402

FUNCTIONS = {1: ntf.soft_pool1d, 2: ntf.soft_pool2d, 3: ntf.soft_pool3d}
LAYERS = {1: ntf.SoftPooling1D, 2: ntf.SoftPooling2D, 3: ntf.SoftPooling3D}
CORE = {1: (npool.soft_pool1d_forward, npool.soft_pool1d_backward),
        2: (npool.soft_pool2d_forward, npool.soft_pool2d_backward),
        3: (npool.soft_pool3d_forward, npool.soft_pool3d_backward)}
CASES = [(1, (3, 2, 1, True)), (2, ((2, 3), (1, 2), (1, 1), False)), (3, (2, None, 0, False))]


def nhwc(x, batched=True):
    """npool's (N, C, *spatial) values in TensorFlow's (N, *spatial, C) order."""
    return np.ascontiguousarray(np.moveaxis(x, 1 if batched else 0, -1))


# ------------------------------------------------------------------ functions
@given(local_pool_inputs(dtype=np.float32), st.sampled_from(["channels_last", "channels_first"]))
@settings(deadline=None)
def test_results_equal_the_numpy_core(problem, data_format):
    x, nd, (kernel, stride, padding, ceil_mode) = problem
    batched = x.ndim == nd + 2
    forward, backward = CORE[nd]
    expected = forward(x, kernel, stride, padding, ceil_mode)
    g = np.random.default_rng(0).standard_normal(expected.shape).astype(np.float32)
    expected_grad = backward(g, x, kernel, stride, padding, ceil_mode)
    if data_format == "channels_last":
        x, g = nhwc(x, batched), nhwc(g, batched)
        expected, expected_grad = nhwc(expected, batched), nhwc(expected_grad, batched)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = FUNCTIONS[nd](xt, kernel, stride, padding, ceil_mode, data_format=data_format)
    np.testing.assert_array_equal(y.numpy(), expected)
    np.testing.assert_array_equal(tape.gradient(y, xt, output_gradients=tf.constant(g)).numpy(),
                                  expected_grad)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("nd,args", CASES)
def test_gradient_matches_numerical(nd, args, data_format):
    shape = (2, 3) + tuple(range(5, 5 + nd))
    x = np.random.default_rng(nd).standard_normal(shape)
    if data_format == "channels_last":
        x = nhwc(x)
    theoretical, numerical = tf.test.compute_gradient(
        lambda v: FUNCTIONS[nd](v, *args, data_format=data_format), [tf.constant(x)])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("nd,args", CASES)
def test_eager_equals_tf_function_with_static_shapes(nd, args):
    x = np.random.default_rng(1).standard_normal((2,) + tuple(range(6, 6 + nd)) + (3,))
    x = x.astype(np.float32)
    eager = FUNCTIONS[nd](tf.constant(x), *args)
    spec = tf.TensorSpec((None,) + x.shape[1:], tf.float32)

    @tf.function(input_signature=[spec])
    def traced(v):
        y = FUNCTIONS[nd](v, *args)
        assert y.shape.as_list() == [None] + eager.shape.as_list()[1:]  # static shape set
        with tf.GradientTape() as tape:
            tape.watch(v)
            z = tf.reduce_sum(FUNCTIONS[nd](v, *args) ** 2)
        return y, tape.gradient(z, v)

    y, grad = traced(tf.constant(x))
    np.testing.assert_array_equal(y.numpy(), eager.numpy())
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        z = tf.reduce_sum(FUNCTIONS[nd](xt, *args) ** 2)
    np.testing.assert_array_equal(grad.numpy(), tape.gradient(z, xt).numpy())


def test_dtypes_and_unbatched():
    x = np.random.default_rng(2).standard_normal((8, 8, 3))
    for dtype in (np.float16, np.float32, np.float64):
        y = ntf.soft_pool2d(tf.constant(x.astype(dtype)), 2)
        assert y.dtype == dtype and y.shape == (4, 4, 3)
        expected = npool.soft_pool2d_forward(np.moveaxis(x.astype(dtype), -1, 0), 2)
        np.testing.assert_array_equal(y.numpy(), np.moveaxis(expected, 0, -1))


def test_errors():
    x = tf.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="data_format must be"):
        ntf.soft_pool2d(x, 2, data_format="NHWC")
    with pytest.raises(ValueError, match="x must be 3-D or 4-D"):
        ntf.soft_pool2d(tf.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match="padding must be at most half"):
        ntf.soft_pool2d(x, 2, padding=2)
    with pytest.raises(TypeError, match="x must have dtype"):
        ntf.soft_pool2d(tf.zeros((1, 4, 4, 1), tf.int32), 2)


# ------------------------------------------------------------------ Keras layers
def test_layers_serialise_and_check_arguments():
    layer = ntf.SoftPooling2D(pool_size=3, strides=2, padding=1, ceil_mode=True, name="sp")
    config = layer.get_config()
    assert {k: config[k] for k in ("pool_size", "strides", "padding", "ceil_mode",
                                   "data_format")} == {
        "pool_size": 3, "strides": 2, "padding": 1, "ceil_mode": True,
        "data_format": "channels_last"}
    clone = ntf.SoftPooling2D.from_config(config)
    x = tf.random.normal((2, 9, 9, 4), seed=1)
    np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())
    assert layer.compute_output_shape((None, 9, 9, 4)) == (None, 5, 5, 4)
    assert ntf.SoftPooling1D(2, data_format="channels_first").compute_output_shape(
        (None, 4, 9)) == (None, 4, 4)
    same = ntf.SoftPooling2D(3, 2, padding="same")  # Keras' "same": ceil(L / strides)
    assert same.compute_output_shape((None, 9, 8, 4)) == (None, 5, 4, 4)
    assert same(x).shape == (2, 5, 5, 4)
    with pytest.raises(ValueError, match="padding must be 'same', 'valid'"):
        ntf.SoftPooling2D(2, padding="full")
    with pytest.raises(ValueError, match="padding must be at most half"):
        ntf.SoftPooling3D(2, padding=2)
    assert layer.supports_jit  # through the decomposition (test_tf_portable.py)


def _blob_task(n=64):
    rng = np.random.default_rng(3)
    x = 0.1 * rng.standard_normal((n, 14, 14, 1)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    for i in range(n):
        r, c = rng.integers(2, 12), rng.integers(1, 6) + 7 * labels[i]
        x[i, r - 1:r + 1, c - 1:c + 1, 0] += 2.0
    return x, labels


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((14, 14, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        ntf.SoftPooling2D(2),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        ntf.SoftPooling2D(2, ceil_mode=True),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])


def test_keras_model_trains_and_saves(tmp_path):
    x, labels = _blob_task()
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, labels, batch_size=64, epochs=30, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0], history
    assert model.jit_compile is False  # Keras' "auto" on a CPU-only machine: npool's kernels
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ global pools
TF_GLOBAL = [
    ("max", ntf.global_max_pool, npool.global_max_pool_forward, {}),
    ("avg", ntf.global_avg_pool, npool.global_avg_pool_forward, {}),
    ("lse", ntf.global_lse_pool, npool.global_lse_pool_forward, {"beta": -0.7}),
    ("kmax", ntf.global_kmax_pool, npool.global_kmax_pool_forward, {"k": 0.3}),
    ("weldon", ntf.weldon_pool, npool.weldon_pool_forward, {"kmax": 3, "kmin": 2, "alpha": 0.5}),
]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name,function,core,kwargs", TF_GLOBAL, ids=[g[0] for g in TF_GLOBAL])
def test_global_pools(name, function, core, kwargs, data_format, keepdims):
    x = np.random.default_rng(5).standard_normal((2, 3, 5, 4))
    expected = core(x, keepdims=keepdims, **kwargs)
    tf_x = nhwc(x) if data_format == "channels_last" else x
    if data_format == "channels_last" and keepdims:
        expected = nhwc(expected)
    y = function(tf.constant(tf_x), keepdims=keepdims, data_format=data_format, **kwargs)
    # channels-last maps are summed in another order: equal up to rounding
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-15)
    theoretical, numerical = tf.test.compute_gradient(
        lambda v: function(v, keepdims=keepdims, data_format=data_format, **kwargs),
        [tf.constant(tf_x)])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-6)
    traced = tf.function(lambda v: function(v, keepdims=keepdims, data_format=data_format,
                                            **kwargs))
    np.testing.assert_array_equal(traced(tf.constant(tf_x)).numpy(), y.numpy())


def test_global_layers_serialise_and_train():
    layers = [ntf.GlobalMaxPool(), ntf.GlobalAvgPool(keepdims=True), ntf.GlobalLSEPool(2.0),
              ntf.GlobalKMaxPool(k=0.25), ntf.WeldonPool(kmax=2, kmin=1, alpha=0.5)]
    x = tf.random.normal((2, 6, 6, 3), seed=2)
    for layer in layers:
        clone = type(layer).from_config(layer.get_config())
        np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())
        assert layer.compute_output_shape((None, 6, 6, 3)) == tuple(layer(x).shape[:0]) + (
            (None, 1, 1, 3) if layer.keepdims else (None, 3))
    with pytest.raises(ValueError, match="k as a float is a fraction"):
        ntf.GlobalKMaxPool(k=2.0)
    x, labels = _blob_task()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((14, 14, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"), ntf.SoftPooling2D(2),
        keras.layers.Conv2D(2, 3, padding="same"), ntf.WeldonPool(kmax=0.2, kmin=0.2, alpha=0.7)])
    model.compile(optimizer=keras.optimizers.Adam(3e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, labels, batch_size=64, epochs=80, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0], history


# ------------------------------------------------------------------ Max-Entropy pooling
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("lam_shape", [(), (3,), (2, 1, 1, 3), (4, 4, 1), (2, 1, 1, 1)])
def test_maxent_gradients_and_core(data_format, lam_shape):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 7, 6))
    lam = rng.uniform(-1, 2, lam_shape)
    lam_npool = np.moveaxis(np.reshape(lam, (1,) * (4 - lam.ndim) + lam.shape), -1, 1)
    expected = npool.maxent_pool2d_forward(x, lam_npool, 3, 2, 1, True)
    if data_format == "channels_first":
        lam = np.moveaxis(np.reshape(lam, (1,) * (4 - lam.ndim) + lam.shape), -1, 1)
        tf_x = x
    else:
        tf_x, expected = nhwc(x), nhwc(expected)
    y = ntf.maxent_pool2d(tf.constant(tf_x), tf.constant(lam), 3, 2, 1, True,
                          data_format=data_format)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-14)
    theoretical, numerical = tf.test.compute_gradient(
        lambda v, l: ntf.maxent_pool2d(v, l, 3, 2, 1, True, data_format=data_format),
        [tf.constant(tf_x), tf.constant(lam)])
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-5, atol=1e-5)


def test_maxent_layer_trains_serialises_and_follows_the_mode():
    x, labels = _blob_task()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((14, 14, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        ntf.MaxEntPooling2D(2),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        ntf.MaxEntPooling2D(2, ceil_mode=True, lam="channel"),
        keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, labels, batch_size=64, epochs=30, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0], history
    layer = model.layers[1]
    batch = tf.constant(x[:8])
    features = model.layers[0](batch)
    train_out = layer(features, training=True)
    eval_out = layer(features, training=False)
    assert not np.allclose(train_out.numpy(), eval_out.numpy())  # BatchNorm: batch vs moving
    np.testing.assert_allclose(layer(features[:4], training=False).numpy(), eval_out.numpy()[:4],
                               rtol=1e-5, atol=1e-6)
    clone = ntf.MaxEntPooling2D.from_config(ntf.MaxEntPooling2D(3, 2, 1, True, lam=0.5)
                                            .get_config())
    assert clone.lam == 0.5 and clone.pool_size == 3 and clone.ceil_mode
    np.testing.assert_allclose(ntf.MaxEntPooling2D(2, lam=1.0)(batch).numpy(),
                               ntf.soft_pool2d(batch, 2).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="lam must be 'gfgp', 'channel' or a number"):
        ntf.MaxEntPooling2D(2, lam="learned")


# ------------------------------------------------------------------ set pools (LOUPE)
TF_SET_LAYERS = [ntf.NetVLAD, ntf.NetRVLAD, ntf.NetFV, ntf.SoftDBoW]


def set_problem(seed=0, B=3, M=5, D=4, K=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, M, D))
    logits = rng.standard_normal((B, M, K))
    a = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    mask = np.arange(M)[None, :] < np.array([M, 2, 1][:B])[:, None]
    return x, a, rng.standard_normal((D, K)), 1 + 0.3 * rng.standard_normal((D, K)), mask


@pytest.mark.parametrize("masked", [False, True])
def test_set_functions_gradients_and_core(masked):
    x, a, c, cw, mask = set_problem()
    mask = mask if masked else None
    cases = [("netvlad", lambda x, a, c: ntf.netvlad_pool(x, a, c, mask), [x, a, c]),
             ("netrvlad", lambda x, a: ntf.netrvlad_pool(x, a, mask), [x, a]),
             ("netfv", lambda x, a, mu, cw: ntf.netfv_pool(x, a, mu, cw, mask), [x, a, c, cw]),
             ("soft_dbow", lambda a: ntf.soft_dbow_pool(a, mask), [a])]
    for name, function, inputs in cases:
        theoretical, numerical = tf.test.compute_gradient(
            function, [tf.constant(v) for v in inputs], delta=1e-6)
        for t, n in zip(theoretical, numerical):
            np.testing.assert_allclose(t, n, rtol=1e-5, atol=1e-6, err_msg=name)
        core = getattr(npool, f"{name}_pool_forward")
        expected = core(*inputs, mask=mask)
        np.testing.assert_array_equal(function(*inputs).numpy(), expected)
        graph = tf.function(function, input_signature=[
            tf.TensorSpec([None, *v.shape[1:]] if v.ndim == 3 else v.shape, tf.float64)
            for v in inputs])
        assert graph.get_concrete_function().structured_outputs.shape.as_list() == \
            [None, expected.shape[1]]
        np.testing.assert_array_equal(graph(*inputs).numpy(), expected)
    w, b = np.random.default_rng(1).standard_normal((4, 4)), np.ones(4)
    theoretical, numerical = tf.test.compute_gradient(
        ntf.context_gating, [tf.constant(v) for v in (x, w, b)], delta=1e-6)
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-5, atol=1e-6)


def test_loupe_layer_layout_and_initialisers():
    keras.utils.set_random_seed(0)
    layer = ntf.NetVLAD(64, 5, 16, 8, gating=False, add_batch_norm=False)
    x = np.random.default_rng(0).standard_normal((3, 5, 64)).astype(np.float32)
    y = layer(x).numpy()
    w, b, c, h = (v.numpy() for v in (layer.cluster_weights, layer.cluster_biases,
                                      layer.cluster_weights2, layer.hidden1_weights))
    # LOUPE's graph: assignments, the contraction as (B, K, D) transposed, D-major flatten.
    a = tf.nn.softmax(x @ w + b).numpy()
    vlad = np.transpose(np.transpose(a, (0, 2, 1)) @ x, (0, 2, 1)) - a.sum(1)[:, None] * c
    vlad = tf.math.l2_normalize(vlad, 1).numpy().reshape(3, -1)
    np.testing.assert_allclose(y, tf.math.l2_normalize(vlad, 1).numpy() @ h, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(layer(x.reshape(15, 64)).numpy(), y, rtol=1e-6)
    assert abs(w.std() * 8 - 1) < 0.1 and abs(h.std() * 4 - 1) < 0.1
    fv = ntf.NetFV(64, 5, 16, 8)
    assert abs(fv.covar_weights.numpy().mean() - 1) < 0.05
    assert tuple(fv.hidden1_weights.shape) == (2 * 64 * 16, 8)


@pytest.mark.parametrize("layer_class", TF_SET_LAYERS)
def test_set_layers_masked_batch_equals_lists_one_by_one(layer_class):
    keras.utils.set_random_seed(1)
    layer = layer_class(4, 5, 3, 6)
    x, _, _, _, mask = set_problem(2)
    x = np.where(mask[..., None], x, 1e3).astype(np.float32)  # junk in the padding
    layer(x, mask=mask, training=True)  # BatchNorm statistics from the real samples
    batch = layer(x, mask=mask).numpy()
    for b, n in enumerate(mask.sum(1)):
        np.testing.assert_allclose(batch[b:b + 1], layer(x[b:b + 1, :n]).numpy(), rtol=1e-5,
                                   atol=1e-6)


def toy_sets(n_sets, seed, max_len=6, dim=8):
    """Sets of 2..max_len vectors; the class is which of two directions the vectors follow."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n_sets)
    x = rng.standard_normal((n_sets, max_len, dim)) + 2 * np.eye(dim)[labels][:, None]
    mask = np.arange(max_len)[None, :] < rng.integers(2, max_len + 1, n_sets)[:, None]
    return np.where(mask[..., None], x, 0).astype(np.float32), mask, labels


@pytest.mark.parametrize("layer_class", TF_SET_LAYERS)
def test_set_layers_train_serialise_and_take_keras_masks(layer_class, tmp_path):
    keras.utils.set_random_seed(2)
    x, mask, labels = toy_sets(64, 3)
    inputs = keras.Input((6, 8))
    masked = keras.layers.Masking(0.0)(inputs)  # Keras' mask reaches the layer
    outputs = keras.layers.Dense(2)(layer_class(8, 6, 4, 16)(masked))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(2e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, labels, batch_size=64, epochs=30, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0], history
    pool = model.layers[2]
    np.testing.assert_allclose(pool(x, mask=mask).numpy(), pool(x, mask=x.any(-1)).numpy())
    path = tmp_path / "sets.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_context_gating_layer_and_errors():
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(4).standard_normal((5, 6)).astype(np.float32)
    for bn in (True, False):
        layer = ntf.ContextGating(6, add_batch_norm=bn)
        assert layer(x).shape == (5, 6)
        assert ntf.ContextGating.from_config(layer.get_config()).add_batch_norm == bn
    layer = ntf.ContextGating(6, add_batch_norm=False)
    np.testing.assert_allclose(
        layer(x).numpy(), x / (1 + np.exp(-(x @ layer.gating_weights.numpy()
                                            + layer.gating_biases.numpy()))), rtol=1e-5)
    with pytest.raises(ValueError, match="output_dim must be >= 1"):
        ntf.NetVLAD(8, 6, 4, 0)
    with pytest.raises(ValueError, match="divisible by max_samples=6"):
        ntf.SoftDBoW(8, 6, 4, 5)(np.zeros((10, 8), np.float32))
