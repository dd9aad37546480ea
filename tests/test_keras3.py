"""npool.keras on Keras' three backends, each in its own process (Keras picks its backend at
import): a small model with every pooling layer and one with every LOUPE layer train (their
losses fall), are saved as ``.keras``, and load on the other backends with the same
outputs."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("keras")
HERE = pathlib.Path(__file__).resolve().parent
BACKENDS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}


def _available(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _run(backend, workdir, *load_from):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, str(HERE / "keras_backend_script.py"),
                             str(workdir), *load_from], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_layers_train_and_move_between_backends(tmp_path):
    """torch trains and saves; jax loads torch's file, trains and saves; tensorflow loads
    both and trains: every backend saves a file another loads, and loads one it did not
    save."""
    order = [b for b in ("torch", "jax", "tensorflow") if _available(BACKENDS[b])]
    if len(order) < 2:
        pytest.skip("fewer than two Keras backends installed")
    saved = []
    for backend in order:
        report = _run(backend, tmp_path, *saved)
        assert report["backend"] == backend
        for kind, loss in report["loss"].items():
            assert loss[-1] < 0.5 * loss[0], (backend, kind, loss)
        for other, difference in report["loaded"].items():
            assert difference < 1e-4, (backend, other, difference)
        assert set(report["loaded"]) == {f"{b}-{kind}" for b in saved
                                         for kind in ("pools", "sets")}
        saved.append(backend)


def test_an_unsupported_backend_is_named():
    env = dict(os.environ, KERAS_BACKEND="numpy")
    code = ("import npool.keras as nk\n"
            "try:\n    nk.SoftPooling2D(2)\nexcept RuntimeError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tensorflow, jax and torch backends" in result.stdout


def _run_code(backend, code):
    """``code`` in a fresh process on Keras' ``backend`` (skipped where it is not installed):
    its standard output."""
    if not _available(BACKENDS[backend]):
        pytest.skip(f"no {backend}")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


JIT_COMPILE = """
import numpy as np, keras, npool.keras as nk
inputs = keras.Input((12, 12, 4))
h = nk.MaxEntPooling2D(2, lam="gfgp")(keras.layers.Conv2D(6, 3, padding="same")(inputs))
h = nk.SoftPooling2D(2)(h)
outputs = keras.layers.Dense(3)(nk.GlobalKMaxPool(k=2)(h))
model = keras.Model(inputs, outputs)
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              jit_compile=True)
rng = np.random.default_rng(0)
x = rng.standard_normal((20, 12, 12, 4)).astype("float32")
y = rng.integers(0, 3, 20)
history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)   # batches of 8, 8 and 4
print(model.predict(x[:5], batch_size=5, verbose=0).shape, history.history["loss"][-1])
"""


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_jit_compile_trains_with_a_batch_size_that_changes(backend):
    """model.compile(jit_compile=True) with MaxEnt pooling's GFGP branch, SoftPool and k-max,
    the last batch smaller than the others (torch: torch.compile recompiles with dynamic
    shapes; jax and tensorflow: XLA through the portable decomposition or the kernels)."""
    assert "(5, 3)" in _run_code(backend, JIT_COMPILE)


MIXED_PRECISION = """
import numpy as np, keras, npool.keras as nk
from npool._op_table import ops_of
rng = np.random.default_rng(0)
images = rng.standard_normal((4, 8, 8, 3)).astype("float32")
sets = rng.standard_normal((4, 6, 5)).astype("float32")
loupe = dict(feature_size=5, max_samples=6, cluster_size=3, output_dim=4)


def layers(**policy):
    image_layers = [nk.SoftPooling1D(2, **policy), nk.SoftPooling2D(2, **policy),
                    nk.MaxEntPooling2D(2, **policy), nk.MaxEntPooling2D(2, lam="channel", **policy),
                    nk.MaxEntPooling2D(2, lam=0.5, **policy)] + [
                    getattr(nk, op.layer)(**policy) for op in ops_of("global")]
    set_layers = [nk.NetVLAD(**loupe, **policy), nk.NetRVLAD(**loupe, **policy),
                  nk.NetFV(**loupe, **policy), nk.SoftDBoW(**loupe, **policy),
                  nk.NetVLAD(**loupe, gating=False, add_batch_norm=False, **policy)]
    return [(l, images[:, 0] if isinstance(l, nk.SoftPooling1D) else images)
            for l in image_layers] + [(l, sets) for l in set_layers] + [
        (nk.ContextGating(5, **policy), sets[:, 0]),
        (nk.ContextGating(5, add_batch_norm=False, **policy), sets)]


wrong = []
for policy_name, global_policy, layer_policy in (
        ("global mixed_float16", "mixed_float16", {}),
        ("global mixed_bfloat16", "mixed_bfloat16", {}),
        ("dtype='mixed_float16', global float32", "float32", {"dtype": "mixed_float16"})):
    keras.mixed_precision.set_global_policy(global_policy)
    for layer, data in layers(**layer_policy):
        symbolic = layer(keras.Input(data.shape[1:]))
        for mode, y in (("symbolic", symbolic), ("inference", layer(data, training=False)),
                        ("training", layer(data, training=True))):
            if keras.backend.standardize_dtype(y.dtype) != layer.compute_dtype:
                wrong.append((policy_name, type(layer).__name__, mode, str(y.dtype)))
print(wrong if wrong else "every layer returns its compute dtype")
"""


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_mixed_precision_layers_return_their_compute_dtype(backend):
    """Under a mixed policy (global, or a layer's own dtype= with a float32 global policy) every
    layer returns its compute dtype (float16/bfloat16), symbolic, in inference and in training:
    the sublayers (the set layers' BatchNorm and gating, GFGP's branch) follow the layer's
    policy."""
    output = _run_code(backend, MIXED_PRECISION)
    assert "every layer returns its compute dtype" in output, output[-3000:]


def test_the_docs_example_runs_on_the_torch_backend():
    """docs/frameworks/keras.md's example (the README shows the same block), on torch."""
    if not _available("torch"):
        pytest.skip("no torch")
    page = (HERE.parent / "docs" / "frameworks" / "keras.md").read_text()
    block = page.split("```python")[1].split("```")[0]
    assert block in (HERE.parent / "README.md").read_text()
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", block + "\nprint(model.output_shape)"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(None, 10)" in result.stdout


def test_npool_tf_refuses_other_frameworks_tensors():
    """npool.tf's functions used inside a torch- or jax-backend model raise instead of quietly
    returning a TensorFlow tensor."""
    tf = pytest.importorskip("tensorflow")  # noqa: F841
    import npool.tf
    for module in ("torch", "jax.numpy"):
        if not _available(module.split(".")[0]):
            continue
        lib = __import__(module, fromlist=["ones"])
        with pytest.raises(TypeError, match="npool.tf takes TensorFlow tensors"):
            npool.tf.soft_pool2d(lib.ones((1, 4, 4, 2)), 2)
        with pytest.raises(TypeError, match="use npool"):
            npool.tf.netrvlad_pool(lib.ones((1, 3, 2)), lib.ones((1, 3, 2)))
