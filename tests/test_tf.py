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
from strategies import pool_problems  # noqa: E402

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
@given(pool_problems(dtype=np.float32), st.sampled_from(["channels_last", "channels_first"]))
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


def test_xla_is_refused_by_tensorflow_naming_the_op():
    f = tf.function(lambda v: ntf.soft_pool2d(v, 2), jit_compile=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="npool_soft_pool"):
        f(tf.zeros((1, 4, 4, 1)))


def test_saved_model_export_is_refused_clearly(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 1)), ntf.SoftPooling2D(2)])
    with pytest.raises(RuntimeError, match="cannot be exported to a SavedModel"):
        model.export(str(tmp_path / "exported"), verbose=False)

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((1, 4, 4, 1), tf.float32)])
        def pool(self, x):
            return ntf.soft_pool2d(x, 2)

    with pytest.raises(RuntimeError, match="cannot be exported to a SavedModel"):
        tf.saved_model.save(Module(), str(tmp_path / "saved"))


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
    with pytest.raises(ValueError, match="'same' pads asymmetrically"):
        ntf.SoftPooling2D(2, padding="same")
    with pytest.raises(ValueError, match="padding must be at most half"):
        ntf.SoftPooling3D(2, padding=2)
    assert not layer.supports_jit


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
    assert model.jit_compile is False  # "auto" saw supports_jit = False
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
