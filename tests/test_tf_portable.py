"""npool.tf where a graph must stand alone: the decomposition into standard TensorFlow ops
(npool/_decompositions.py) that SavedModel export, XLA, TFLite and ``npool.tf.portable()`` build, its
agreement with npool's kernels, and second-order gradients (kernels first, the decomposition's
derivative second)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import npool.tf as ntf  # noqa: E402

RNG = np.random.default_rng(0)
X4 = RNG.standard_normal((2, 9, 10, 3)).astype(np.float32)
SETS = (RNG.standard_normal((3, 6, 8)).astype(np.float32),
        np.abs(RNG.standard_normal((3, 6, 4))).astype(np.float32) + 0.1,
        RNG.standard_normal((8, 4)).astype(np.float32),
        RNG.uniform(0.5, 2, (8, 4)).astype(np.float32),
        np.arange(6) < np.array([6, 3, 1])[:, None])

# name -> (function of float tensors, its inputs)
OPS = {
    "soft_pool2d": (lambda x: ntf.soft_pool2d(x, 3, 2, 1, True), [X4]),
    "soft_pool2d channels_first": (
        lambda x: ntf.soft_pool2d(x, 2, data_format="channels_first"), [X4]),
    "soft_pool1d": (lambda x: ntf.soft_pool1d(x, 3, 2, 1, True), [X4[:, 0]]),
    "soft_pool3d": (lambda x: ntf.soft_pool3d(x, (2, 2, 3), padding=(1, 0, 1)),
                    [X4[:, :4, :, None, :]]),
    "soft_pool2d unbatched": (lambda x: ntf.soft_pool2d(x, 2), [X4[0]]),
    "maxent_pool2d scalar": (lambda x: ntf.maxent_pool2d(x, -0.5, 2), [X4]),
    "maxent_pool2d channel lam": (lambda x, lam: ntf.maxent_pool2d(x, lam, 3, 2, 1),
                                  [X4, RNG.uniform(0.2, 2, (2, 1, 1, 3)).astype(np.float32)]),
    "maxent_pool2d position lam": (lambda x, lam: ntf.maxent_pool2d(x, lam, 2),
                                   [X4, RNG.uniform(0.2, 2, (1, 4, 5, 1)).astype(np.float32)]),
    "global_max_pool": (ntf.global_max_pool, [X4]),
    "global_avg_pool keepdims": (lambda x: ntf.global_avg_pool(x, keepdims=True), [X4]),
    "global_lse_pool": (lambda x: ntf.global_lse_pool(x, 2.0, data_format="channels_first"),
                        [X4]),
    "global_kmax_pool": (lambda x: ntf.global_kmax_pool(x, 0.2), [X4]),
    "weldon_pool": (lambda x: ntf.weldon_pool(x, 3, 2, 0.7, keepdims=True), [X4]),
    "netvlad_pool": (lambda x, a, c: ntf.netvlad_pool(x, a, c, SETS[4]), list(SETS[:3])),
    "netrvlad_pool": (lambda x, a: ntf.netrvlad_pool(x, a), list(SETS[:2])),
    "netfv_pool": (lambda x, a, mu, w: ntf.netfv_pool(x, a, mu, w, SETS[4]), list(SETS[:4])),
    "soft_dbow_pool": (lambda a: ntf.soft_dbow_pool(a, SETS[4]), [SETS[1]]),
    "context_gating": (ntf.context_gating,
                       [SETS[0][:, 0], RNG.standard_normal((8, 8)).astype(np.float32) / 3,
                        RNG.standard_normal(8).astype(np.float32)]),
}


def _outputs_and_gradients(function, inputs):
    tensors = [tf.constant(a) for a in inputs]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        y = function(*tensors)
        loss = tf.reduce_sum(y * tf.cos(y))
    return [y.numpy()] + [g.numpy() for g in tape.gradient(loss, tensors)]


@pytest.mark.parametrize("name", list(OPS))
def test_decomposition_agrees_with_the_kernels(name):
    function, inputs = OPS[name]
    kernels = _outputs_and_gradients(function, inputs)
    with ntf.portable():
        portable = _outputs_and_gradients(function, inputs)
    for got, expected in zip(portable, kernels):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", list(OPS))
def test_xla_compiles_the_decomposition_with_gradients(name):
    function, inputs = OPS[name]
    kernels = _outputs_and_gradients(function, inputs)
    compiled = tf.function(lambda *ts: _graph_outputs(function, ts), jit_compile=True)
    for got, expected in zip(compiled(*[tf.constant(a) for a in inputs]), kernels):
        np.testing.assert_allclose(got.numpy(), expected, rtol=2e-5, atol=2e-5)


def _graph_outputs(function, tensors):
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        y = function(*tensors)
        loss = tf.reduce_sum(y * tf.cos(y))
    return [y] + tape.gradient(loss, list(tensors))


def test_the_decomposition_does_not_overflow_at_500():
    x = tf.constant(X4 * 500)
    expected = ntf.soft_pool2d(x, 3, 2, 1).numpy()
    with ntf.portable():
        got = ntf.soft_pool2d(x, 3, 2, 1).numpy()
        lse = ntf.global_lse_pool(x, 4.0).numpy()
    assert np.isfinite(got).all() and np.isfinite(lse).all()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(lse, ntf.global_lse_pool(x, 4.0).numpy(), rtol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    x = tf.cast(tf.constant(X4 * 20), dtype)
    with ntf.portable():
        got = ntf.soft_pool2d(x, 2)
    assert got.dtype == dtype
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(),
                               tf.cast(ntf.soft_pool2d(x, 2), tf.float32).numpy(),
                               rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------ second order
@pytest.mark.parametrize("name", list(OPS))
def test_second_derivatives_match_float64_differences(name):
    """Nested GradientTapes through npool's kernels (the second derivative from the
    decomposition) against central differences of the kernels' float64 gradient: the
    directional derivative of grad <grad_y, w> along a random direction v."""
    function, inputs = OPS[name]
    inputs = [a.astype(np.float64) for a in inputs]
    rng = np.random.default_rng(1)
    v = [rng.standard_normal(a.shape) for a in inputs]

    def gradient(arrays):
        tensors = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            y = function(*tensors)
            loss = tf.reduce_sum(tf.sin(y))
        return tape.gradient(loss, tensors)

    tensors = [tf.constant(a) for a in inputs]
    with tf.GradientTape() as outer:
        outer.watch(tensors)
        with tf.GradientTape() as inner:
            inner.watch(tensors)
            loss = tf.reduce_sum(tf.sin(function(*tensors)))
        grads = inner.gradient(loss, tensors)
        directional = tf.add_n([tf.reduce_sum(g * d) for g, d in zip(grads, v)])
    hessian_v = [h.numpy() for h in outer.gradient(directional, tensors)]
    h = 1e-5
    plus = gradient([a + h * d for a, d in zip(inputs, v)])
    minus = gradient([a - h * d for a, d in zip(inputs, v)])
    for got, p, m in zip(hessian_v, plus, minus):
        expected = (p.numpy() - m.numpy()) / (2 * h)
        np.testing.assert_allclose(got, expected, rtol=1e-5,
                                   atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_a_gradient_penalty_step_trains():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3),
                              ntf.SoftPooling2D(2), ntf.GlobalKMaxPool(2), keras.layers.Dense(1)])
    optimizer = keras.optimizers.Adam(1e-2)
    x = tf.random.normal((16, 8, 8, 2), seed=2)
    target = tf.cast(tf.reduce_mean(x, [1, 2, 3])[:, None] > 0, tf.float32)
    losses = []
    for _ in range(25):
        with tf.GradientTape() as tape:
            with tf.GradientTape() as penalty_tape:
                penalty_tape.watch(x)
                logits = model(x)
                summed = tf.reduce_sum(logits)
            input_grad = penalty_tape.gradient(summed, x)
            penalty = tf.reduce_mean(tf.square(tf.norm(tf.reshape(input_grad, (16, -1)),
                                                       axis=1) - 1))
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(target, logits,
                                                                   from_logits=True))
            total = loss + 0.1 * penalty
        grads = tape.gradient(total, model.trainable_variables)
        assert all(g is not None for g in grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        losses.append(float(total))
    assert losses[-1] < 0.7 * losses[0], losses


# ------------------------------------------------------------------ standing alone
def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(6, 3, padding="same")(inputs)
    h = ntf.SoftPooling2D(2)(h)
    h = ntf.MaxEntPooling2D(pool_size=2)(h)          # GFGP temperatures
    # the other window geometries: adaptive sizes (3 -> 2 overlapping windows), Keras' "same"
    a = ntf.SoftPooling2D(2, 1, padding="same")(ntf.AdaptiveSoftPooling2D((2, None))(h))
    pooled = [ntf.GlobalKMaxPool(0.25)(h), ntf.WeldonPool(2, 1, 0.5)(h),
              ntf.GlobalLSEPool(2.0)(h), ntf.GlobalMaxPool()(h), ntf.GlobalAvgPool()(h),
              ntf.GlobalAvgPool()(a)]
    sets = keras.layers.Reshape((9, 6))(h)
    vlad = ntf.NetVLAD(6, 9, 4, 5, gating=True)(sets)
    fv = ntf.NetFV(6, 9, 4, 5, gating=False)(sets)
    dbow = ntf.SoftDBoW(6, 9, 4, 5)(sets)
    rvlad = ntf.NetRVLAD(6, 9, 4, 5, add_batch_norm=False)(sets)
    outputs = keras.layers.Concatenate()(pooled + [vlad, fv, dbow, rvlad])
    return keras.Model(inputs, outputs)


_LOAD_WITHOUT_NPOOL = textwrap.dedent("""
    import sys
    sys.modules["npool"] = None           # any import of npool fails in this process
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], getattr(loaded, sys.argv[4])(tf.constant(x)).numpy())
""")


def _run_elsewhere(path, endpoint, x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITHOUT_NPOOL)
    result = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "x.npy"),
                             str(tmp_path / "y.npy"), endpoint],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(tmp_path / "y.npy")


def test_keras_export_loads_in_a_fresh_process_without_npool(tmp_path):
    model = _model()
    x = RNG.standard_normal((4, 12, 12, 3)).astype(np.float32)
    expected = model(x, training=False).numpy()
    model.export(str(tmp_path / "exported"), verbose=False)
    got = _run_elsewhere(tmp_path / "exported", "serve", x, tmp_path)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_saved_function_of_the_ops_loads_without_npool(tmp_path):
    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 9, 10, 3), tf.float32)])
        def pool(self, x):
            return tf.concat([tf.reshape(ntf.soft_pool2d(x, 3, 2, 1, True), (-1, 90)),
                              ntf.weldon_pool(x, 3), ntf.global_lse_pool(x),
                              tf.reshape(ntf.adaptive_maxent_pool2d(x, 0.5, (4, None)),
                                         (-1, 120)),
                              tf.reshape(ntf.soft_pool2d(x, 3, 1, "SAME", dilation=2),
                                         (-1, 270))], 1)

    module = Module()
    tf.saved_model.save(module, str(tmp_path / "saved"))  # traced while saving
    expected = module.pool(tf.constant(X4)).numpy()        # npool's kernels, eagerly traced
    got = _run_elsewhere(tmp_path / "saved", "pool", X4, tmp_path)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_keras_jit_compile_trains_through_the_decomposition():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same"),
                              ntf.SoftPooling2D(2), ntf.MaxEntPooling2D(pool_size=2),
                              ntf.GlobalKMaxPool(2), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    x = RNG.standard_normal((32, 8, 8, 1)).astype(np.float32)
    labels = (x.mean((1, 2, 3)) > 0).astype(np.int64)
    history = model.fit(x, labels, batch_size=32, epochs=30, verbose=0).history["loss"]
    assert history[-1] < 0.7 * history[0], history
    assert model.jit_compile is True


def test_tflite_converts_a_cnn_to_builtin_ops():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, padding="same"),
                              ntf.SoftPooling2D(2), keras.layers.Conv2D(8, 3, padding="same"),
                              ntf.SoftPooling2D(3, 2, padding=1, ceil_mode=True),
                              ntf.SoftPooling2D(3, 2, padding="same"),
                              ntf.AdaptiveSoftPooling2D((2, None)),
                              ntf.GlobalKMaxPool(0.25), keras.layers.Dense(3)])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    flatbuffer = converter.convert()
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    x = RNG.standard_normal((1, 16, 16, 3)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-5)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not any(name.startswith("Flex") for name in ops), ops  # no select TF ops needed
    assert {"GATHER", "EXP", "TOPK_V2"} <= ops, ops
