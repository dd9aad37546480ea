"""npool.tf's GPU path without a GPU: TensorFlow tensors handed to npool's CUDA kernels through
DLPack (npool._cuda._dlpack) and the results handed back, run here on CPU tensors (DLPack
exists there too) with the kernels compiled for the host (the emulated device of
test_cuda.py). On a GPU machine the same code reads CUDA tensors in place."""
import ctypes
import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

import npool.tf as ntf  # noqa: E402
from npool._checks import bfloat16  # noqa: E402
from npool._cuda import _dlpack  # noqa: E402
from npool._device_array import DeviceArray  # noqa: E402
from npool.tf import _devices, _ops  # noqa: E402
from gpu_backends import Emulated  # noqa: E402


def _memory(array):
    """The values at a DeviceArray's address, read through ctypes (no DLPack involved)."""
    size = int(np.prod(array.shape))
    raw = (ctypes.c_char * (size * array.dtype.itemsize)).from_address(array.ptr)
    return np.frombuffer(raw, array.dtype).reshape(array.shape)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16, tf.bfloat16, tf.float64, tf.int64,
                                   tf.bool])
def test_dlpack_reads_tensorflow_tensors_in_place(dtype):
    t = tf.cast(tf.reshape(tf.range(24), (2, 3, 4)) % 5, dtype)
    array = _dlpack.read(t, "t", devices=(_dlpack.CPU,))
    expected = np.dtype(bfloat16()) if dtype == tf.bfloat16 else np.dtype(dtype.as_numpy_dtype)
    assert array.shape == (2, 3, 4) and array.strides == (12, 4, 1) and array.dtype == expected
    np.testing.assert_array_equal(_memory(array), t.numpy())


def test_dlpack_refuses_what_it_cannot_read():
    with pytest.raises(TypeError, match="does not export DLPack from a GPU"):
        _dlpack.read(tf.zeros(3), "x")  # a CPU tensor where GPU memory is needed
    with pytest.raises(TypeError, match="does not export DLPack"):
        _dlpack.read(object(), "x")
    with pytest.raises(TypeError, match="npool does not take"):
        _dlpack.read(tf.zeros(3, tf.int8), "x", devices=(_dlpack.CPU,))


def test_capsules_hand_memory_to_tensorflow_without_a_copy_and_are_freed():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    source = _dlpack.read(tf.constant(x), "x", devices=(_dlpack.CPU,))
    references = sys.getrefcount(source)
    t = tf.experimental.dlpack.from_dlpack(_dlpack.capsule(source, (_dlpack.CPU, 0)))
    np.testing.assert_array_equal(t.numpy(), x)
    assert _dlpack.read(t, "t", devices=(_dlpack.CPU,)).ptr == source.ptr  # the same memory
    assert sys.getrefcount(source) == references + 1  # held for TensorFlow's tensor
    del t
    gc.collect()
    assert sys.getrefcount(source) == references  # TensorFlow called the deleter
    _dlpack.capsule(source, (_dlpack.CPU, 0))  # never consumed: released with the capsule
    gc.collect()
    assert sys.getrefcount(source) == references


def test_tensors_over_npool_memory_may_outlive_the_interpreter(tmp_path):
    """A TensorFlow tensor over a capsule of npool's lives until TensorFlow shuts down, after
    Python's finalisation: the deleter must not call into a finished interpreter."""
    script = tmp_path / "late.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        import tensorflow as tf
        from npool._cuda import _dlpack
        source = _dlpack.read(tf.constant(np.ones((2, 3), np.float32)), "x", devices=(1,))
        KEPT = tf.experimental.dlpack.from_dlpack(_dlpack.capsule(source, (1, 0)))
        print(float(tf.reduce_sum(KEPT)))
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0 and "6.0" in result.stdout, (result.returncode,
                                                              result.stderr[-2000:])


@pytest.fixture
def emulated_gpu_path(emulation_library, monkeypatch):
    """npool.tf's GPU path with CPU tensors standing for GPU ones and the host-compiled
    kernels standing for the GPU."""
    monkeypatch.setattr(_devices, "GPU_DEVICES", (_dlpack.CPU,) + _devices.GPU_DEVICES)
    monkeypatch.setattr(_ops, "placement", lambda tensors: _devices.GPU)
    with Emulated(emulation_library):
        yield


RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 7, 6, 3)).astype(np.float32)
CASES = {
    "soft_pool2d": (lambda x: ntf.soft_pool2d(x, 3, 2, 1, True), [X]),
    "maxent_pool2d channel lam": (lambda x, lam: ntf.maxent_pool2d(x, lam, 2),
                                  [X, RNG.uniform(0.2, 2, (3,)).astype(np.float32)]),
    "global_kmax_pool": (lambda x: ntf.global_kmax_pool(x, 3, keepdims=True), [X]),
    "weldon_pool channels_first": (
        lambda x: ntf.weldon_pool(x, 2, 1, 0.5, data_format="channels_first"), [X]),
    "global_lse_pool": (lambda x: ntf.global_lse_pool(x, 2.0), [X]),
    "netvlad_pool masked": (
        lambda x, a, c: ntf.netvlad_pool(x, a, c, np.arange(6) < np.array([[6], [2]])),
        [X[:, 0, :, :].transpose(0, 2, 1).reshape(2, 3, 6).transpose(0, 2, 1).copy(),
         np.full((2, 6, 4), 0.25, np.float32), RNG.standard_normal((3, 4)).astype(np.float32)]),
}


def _run(function, arrays):
    tensors = [tf.constant(a) for a in arrays]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        y = function(*tensors)
        loss = tf.reduce_sum(y * tf.cos(y))
    return [y.numpy()] + [g.numpy() for g in tape.gradient(loss, tensors)]


@pytest.mark.parametrize("name", list(CASES))
def test_the_gpu_path_runs_the_kernels_on_dlpack_tensors(name, emulated_gpu_path):
    function, arrays = CASES[name]
    got = _run(function, arrays)
    with pytest.MonkeyPatch.context() as host:
        host.setattr(_ops, "placement", lambda tensors: _devices.HOST)
        expected = _run(function, arrays)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_the_gpu_path_inside_tf_function(emulated_gpu_path):
    f = tf.function(lambda x: ntf.soft_pool2d(x, 2) * 2)
    np.testing.assert_allclose(f(tf.constant(X)).numpy(),
                               2 * ntf.soft_pool2d(tf.constant(X), 2).numpy(), rtol=1e-6)


def test_gpu_tensors_without_npool_cuda_use_the_decomposition(monkeypatch):
    """No PyCUDA: a GPU tensor gets the decomposition (TensorFlow ops on the GPU), never a
    host copy through tf.numpy_function."""
    monkeypatch.setattr(_ops, "placement", lambda tensors: _devices.PORTABLE)
    calls = []
    monkeypatch.setattr(tf, "numpy_function", lambda *a, **k: calls.append(a))
    y = ntf.soft_pool2d(tf.constant(X), 2)
    assert not calls
    with ntf.portable():
        np.testing.assert_array_equal(y.numpy(), ntf.soft_pool2d(tf.constant(X), 2).numpy())


def test_host_tensors_stay_on_the_host():
    assert _devices.placement([tf.constant(X)]) == _devices.HOST


class _DLPackOnly:
    """A "GPU" tensor that exports DLPack only (as TensorFlow's and JAX's do): host memory
    declared as CUDA memory, for the emulated device."""

    def __init__(self, array):
        self.array = np.ascontiguousarray(array)

    def __dlpack_device__(self):
        return (_dlpack.CUDA, 0)

    def __dlpack__(self, stream=None):
        a = self.array
        return _dlpack.capsule(DeviceArray(a.ctypes.data, a.shape,
                                           tuple(s // a.itemsize for s in a.strides), a.dtype,
                                           None, a))


def test_the_core_takes_dlpack_gpu_tensors(emulation_library):
    from npool import soft_pool2d_forward, global_max_pool_forward
    from npool._dispatch import is_gpu_array
    nchw = np.ascontiguousarray(np.moveaxis(X, -1, 1))
    tensor = _DLPackOnly(nchw)
    assert is_gpu_array(tensor) and not is_gpu_array(nchw)
    with Emulated(emulation_library) as gpu:
        np.testing.assert_allclose(gpu.to_host(soft_pool2d_forward(tensor, 2)),
                                   soft_pool2d_forward(nchw, 2), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(gpu.to_host(global_max_pool_forward(tensor)),
                                      global_max_pool_forward(nchw))
        with pytest.raises(TypeError, match="x must have dtype"):
            soft_pool2d_forward(_DLPackOnly(nchw.astype(np.int64)), 2)
