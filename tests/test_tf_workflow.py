"""npool.tf in a TensorFlow user's training set-ups: Keras' mixed_float16 and mixed_bfloat16
policies and MirroredStrategy over two (logical CPU) replicas."""
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


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_model_trains(policy):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same"),
            ntf.SoftPooling2D(2), ntf.MaxEntPooling2D(2, lam="channel"),
            ntf.GlobalKMaxPooling2D(2), keras.layers.Dense(2)])
        x = np.random.default_rng(0).standard_normal((32, 8, 8, 1)).astype("float32")
        y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
        assert model(x[:2]).dtype == policy.split("_")[1]
        model.compile(keras.optimizers.Adam(3e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, epochs=30, batch_size=32, verbose=0).history["loss"]
        assert history[-1] < 0.8 * history[0], history
    finally:
        keras.mixed_precision.set_global_policy(previous)


_MIRRORED = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import npool.tf as ntf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same"),
            ntf.SoftPooling2D(2), ntf.GlobalLSEPooling2D(2.0), keras.layers.Dense(2)])
        model.compile(keras.optimizers.Adam(3e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).standard_normal((64, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
    history = model.fit(x, y, epochs=25, batch_size=32, verbose=0).history["loss"]
    assert history[-1] < 0.8 * history[0], history
    # the replicas' copies of every variable are equal
    for variable in model.trainable_variables:
        values = [v.numpy() for v in variable.value.values]  # the MirroredVariable
        assert len(values) == 2 and np.array_equal(values[0], values[1]), variable.name
    print("ok", history[0], history[-1])
""")


def test_mirrored_strategy_trains_on_two_replicas(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
