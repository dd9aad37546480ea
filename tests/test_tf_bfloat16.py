"""bfloat16 in npool.tf: every op on bfloat16 tensors against the float64 reference at
bfloat16's tolerance (npool.testing.check_op, forward and GradientTape backward), and a Keras
model under the "mixed_bfloat16" policy that trains."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import npool.tf as ntf  # noqa: E402
from npool import testing  # noqa: E402

CHANNELS_FIRST = {op for op in testing.OPS
                  if op.startswith(("soft_pool", "maxent_pool", "global", "weldon"))}


def tf_op(op):
    """npool.tf's function for op with npool's core signature (channels-first), on NumPy
    inputs, and its backward through tf.GradientTape."""
    function = getattr(ntf, op)
    layout = {"data_format": "channels_first"} if op in CHANNELS_FIRST else {}

    def call(args, options):
        return function(*args, **{k: tf.constant(v) if isinstance(v, np.ndarray) else v
                                   for k, v in options.items()}, **layout)

    def forward(*args, **options):
        return call([tf.constant(a) for a in args], options).numpy()

    def backward(grad_out, *args, **options):
        inputs = [tf.constant(a) if isinstance(a, np.ndarray) else
                  tf.constant(a, dtype=tf.bfloat16) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = call(inputs, options)
        return tuple(g.numpy() for g in tape.gradient(y, inputs,
                                                      output_gradients=tf.constant(grad_out)))
    return forward, backward


@pytest.mark.parametrize("op", testing.OPS)
def test_every_op_in_bfloat16_matches_the_reference(op):
    testing.check_op(op, *tf_op(op), max_examples=20, dtypes=("bfloat16",),
                     layouts=("contiguous",))


def test_a_mixed_bfloat16_model_trains():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same"),
            ntf.SoftPooling2D(2), ntf.MaxEntPooling2D(2, lam="channel"),
            ntf.GlobalKMaxPooling2D(2), keras.layers.Dense(2)])
        x = np.random.default_rng(0).standard_normal((32, 8, 8, 1)).astype("float32")
        y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
        assert model(x[:2]).dtype == "bfloat16"
        model.compile(keras.optimizers.Adam(3e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, epochs=30, batch_size=32, verbose=0).history["loss"]
        assert history[-1] < 0.8 * history[0], history
    finally:
        keras.mixed_precision.set_global_policy(previous)
