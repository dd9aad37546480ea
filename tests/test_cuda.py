"""The GPU backend's plumbing: kernel choice, sessions and streams, errors, inputs left alone,
framework tensors (torch, CuPy), ``__cuda_array_interface__`` readers, and what happens
without a GPU. The ops: test_cuda_local_pools.py, test_cuda_global_pools.py,
test_cuda_set_pools.py.

Every ``gpu`` test runs on two backends: ``emulated``, the CUDA kernels of src/cuda/ compiled
for the host by nvcc (see cuda_emulation.py) behind npool's real GPU code path, wherever nvcc
is; ``cuda``, a real GPU through PyCUDA (skipped without one). Outputs are allocated poisoned
with NaN on both, so an element the kernels forget shows.
"""
import numpy as np
import pytest

import cuda_emulation
import npool
from npool._checks import bfloat16
from npool._cuda import windowed_softmax
from npool._cuda._arrays import describe
from npool.testing.strategies import channels_last
from helpers import call_backward, call_forward


def test_kernel_choice(gpu):
    if gpu.name != "emulated":
        pytest.skip("the emulated device records its launches")
    launches = gpu.device.launches
    x = np.random.default_rng(8).standard_normal((2, 3, 8, 8)).astype(np.float32)
    del launches[:]
    call_backward(gpu.to_device(np.ones((2, 3, 4, 4), np.float32)), gpu.to_device(x), 2,
                  (2, None, 0, False))
    assert launches == ["npool_windowed_softmax_backward_disjoint_f32_i32"]
    del launches[:]
    call_backward(gpu.to_device(np.ones((2, 3, 7, 7), np.float64)),
                  gpu.to_device(x.astype(np.float64)), 2, (2, 1, 0, False))
    assert launches == ["npool_windowed_softmax_backward_stats_f64_i32",
                        "npool_windowed_softmax_backward_gather_f64_i32"]


def test_sessions_follow_the_callers_streams(gpu):
    if gpu.name != "emulated":
        pytest.skip("the emulated device records its sessions")
    x = np.ones((1, 1, 4, 4), np.float32)
    sessions = gpu.device.sessions
    npool.soft_pool2d_forward(cuda_emulation.HostArray(x, stream=7), 2)
    npool.soft_pool2d_forward(cuda_emulation.HostArray(x, version=2), 2)
    npool.soft_pool2d_backward(cuda_emulation.HostArray(np.ones((1, 1, 2, 2), np.float32),
                                                        stream=9),
                               cuda_emulation.HostArray(x, stream=7), 2)
    assert sessions[-3:] == [[7], [None], [9, 7]]


def test_gpu_errors_are_the_cpu_errors(gpu):
    x = gpu.to_device(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="padding must be at most half"):
        npool.soft_pool2d_forward(x, 2, padding=2)
    with pytest.raises(ValueError, match="grad_out must have the forward output's shape"):
        npool.soft_pool2d_backward(gpu.to_device(np.zeros((1, 1, 3, 3), np.float32)), x, 2)
    with pytest.raises(TypeError, match="grad_out must have the dtype of x"):
        npool.soft_pool2d_backward(gpu.to_device(np.zeros((1, 1, 2, 2))), x, 2)
    with pytest.raises(ValueError, match="x must be 3-D"):
        npool.soft_pool2d_forward(gpu.to_device(np.zeros((4, 4), np.float32)), 2)
    with pytest.raises(TypeError, match="same device"):
        npool.soft_pool2d_backward(np.zeros((1, 1, 2, 2), np.float32), x, 2)


def test_inputs_are_not_modified(gpu):
    x = np.random.default_rng(9).standard_normal((2, 3, 6, 6))
    g = np.random.default_rng(10).standard_normal((2, 3, 5, 5))
    x_cl = channels_last(x)
    xd, gd, x_cld = gpu.to_device(x.copy()), gpu.to_device(g.copy()), gpu.to_device(x_cl.copy())
    call_backward(gd, xd, 2, (2, 1, 0, False))
    call_forward(xd, 2, (3, 1, 1, False))
    call_backward(gpu.to_device(np.ones((2, 3, 3, 3))), x_cld, 2, (2, None, 0, False))
    np.testing.assert_array_equal(gpu.read(xd), x)
    np.testing.assert_array_equal(gpu.read(gd), g)
    np.testing.assert_array_equal(gpu.read(x_cld), x_cl)


@pytest.fixture(scope="module")
def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not npool.cuda_available():
        pytest.skip("no GPU")
    return torch


def test_torch_cuda_tensors_without_copies(torch_cuda):
    torch = torch_cuda
    x = torch.randn(4, 8, 33, 31, device="cuda")
    y = npool.soft_pool2d_forward(x, 3, stride=2, padding=1)
    y_t = torch.as_tensor(y, device="cuda")
    assert y_t.data_ptr() == int(y.gpudata)  # wrapped, not copied
    expected = npool.soft_pool2d_forward(x.cpu().numpy(), 3, stride=2, padding=1)
    np.testing.assert_allclose(y_t.cpu().numpy(), expected, rtol=1e-5, atol=1e-6)
    g = torch.randn(y_t.shape, device="cuda")
    grad = torch.as_tensor(npool.soft_pool2d_backward(g, x, 3, stride=2, padding=1),
                           device="cuda")
    expected = npool.soft_pool2d_backward(g.cpu().numpy(), x.cpu().numpy(), 3, stride=2,
                                          padding=1)
    np.testing.assert_allclose(grad.cpu().numpy(), expected, rtol=1e-4, atol=1e-5)
    # channels-last stays channels-last; float16 works.
    x_cl = x.half().to(memory_format=torch.channels_last)
    y_cl = torch.as_tensor(npool.soft_pool2d_forward(x_cl, 2), device="cuda")
    assert y_cl.dtype == torch.float16
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    expected = npool.soft_pool2d_forward(x_cl.float().cpu().numpy(), 2)
    np.testing.assert_allclose(y_cl.float().cpu().numpy(), expected, rtol=2**-10, atol=1e-3)


def _slow_work_on(torch, stream, shape):
    """A tensor that is finished only after a long queue of kernels on ``stream``."""
    with torch.cuda.stream(stream):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time before anything else
        x = torch.randn(shape, device="cuda")
        for _ in range(5):
            x = torch.sin(x) * 2
    return x


def test_torch_tensor_produced_on_a_side_stream(torch_cuda):
    """torch's interface names no stream: npool waits for the device before reading."""
    torch = torch_cuda
    side = torch.cuda.Stream()
    x = _slow_work_on(torch, side, (8, 16, 64, 64))
    with torch.cuda.stream(side):
        y = npool.soft_pool2d_forward(x, 2)  # no synchronisation by the caller
    side.synchronize()
    np.testing.assert_allclose(torch.as_tensor(y, device="cuda").cpu().numpy(),
                               npool.soft_pool2d_forward(x.cpu().numpy(), 2), rtol=1e-5)


class OnStream:
    """A torch tensor seen through a version-3 interface that names ``stream``."""

    def __init__(self, tensor, stream):
        self.tensor = tensor
        self.__cuda_array_interface__ = dict(tensor.__cuda_array_interface__, version=3,
                                             stream=stream.cuda_stream)


def test_stream_named_by_the_interface_is_followed_without_blocking(torch_cuda):
    """npool runs after the named stream's work, and that stream waits for npool's kernels."""
    torch = torch_cuda
    side = torch.cuda.Stream()
    x = _slow_work_on(torch, side, (8, 16, 64, 64))
    with torch.cuda.stream(side):
        y = npool.soft_pool2d_forward(OnStream(x, side), 2)
        assert not side.query()  # the host did not wait for the sleeping stream
        z = torch.as_tensor(y, device="cuda") * 2  # consumed on the same stream, no sync
    side.synchronize()
    np.testing.assert_allclose(z.cpu().numpy() / 2,
                               npool.soft_pool2d_forward(x.cpu().numpy(), 2), rtol=1e-5)


def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    if not npool.cuda_available():
        pytest.skip("no GPU")
    x = cupy.random.standard_normal((2, 3, 17, 16), dtype=cupy.float32)
    y = npool.soft_pool2d_forward(x, 2, ceil_mode=True)
    y_c = cupy.asarray(y)
    assert y_c.data.ptr == int(y.gpudata)
    np.testing.assert_allclose(cupy.asnumpy(y_c),
                               npool.soft_pool2d_forward(cupy.asnumpy(x), 2, ceil_mode=True),
                               rtol=1e-5, atol=1e-6)


def test_gpuarray_in_gpuarray_out():
    pytest.importorskip("pycuda")
    if not npool.cuda_available():
        pytest.skip("no GPU")
    import pycuda.autoprimaryctx  # noqa: F401  (the primary context, as npool uses)
    from pycuda import gpuarray
    x = np.random.default_rng(12).standard_normal((2, 3, 9)).astype(np.float32)
    y = npool.soft_pool1d_forward(gpuarray.to_gpu(x), 3, stride=2)
    assert isinstance(y, gpuarray.GPUArray)
    np.testing.assert_allclose(y.get(), npool.soft_pool1d_forward(x, 3, stride=2), rtol=1e-5)


def test_division_by_multiplication():
    """The magic numbers of the i32 kernels give n // d for every n < 2**31."""
    rng = np.random.default_rng(11)
    n = np.concatenate([np.arange(5000), 2**31 - 1 - np.arange(5000),
                        rng.integers(0, 2**31, 100_000)]).astype(np.uint64)
    for d in list(range(1, 300)) + [2**k for k in range(31)] + list(rng.integers(1, 2**31, 200)):
        value, magic, shift = windowed_softmax.divisor(int(d), wide=False)
        assert 0 <= magic < 2**32
        quotient = (((n * np.uint64(magic)) >> np.uint64(32)) + n) >> np.uint64(shift)
        np.testing.assert_array_equal(quotient, n // np.uint64(d), err_msg=f"d={d}")


class Interface:
    def __init__(self, **cai):
        self.__cuda_array_interface__ = cai


def test_interface_is_read_with_strides_and_stream():
    base = dict(shape=(2, 3, 4), typestr="<f4", data=(0x1000, False))
    a = describe(Interface(**base, version=2), "x")
    assert (a.ptr, a.shape, a.strides, a.dtype, a.stream) == (0x1000, (2, 3, 4), (12, 4, 1),
                                                               np.float32, None)
    a = describe(Interface(**base, strides=(4, 32, -8), version=3, stream=5), "x")
    assert a.strides == (1, 8, -2) and a.stream == 5
    assert describe(Interface(**base, version=3, stream=None), "x").stream is None
    assert describe(Interface(**dict(base, typestr="<f2")), "x").dtype == np.float16
    # bfloat16: the interface has no code for it; torch and ml_dtypes both write "<V2".
    assert describe(Interface(**dict(base, typestr="<V2")), "x").dtype == bfloat16()


@pytest.mark.parametrize("change,error,message", [
    (dict(typestr="<i4"), TypeError, "x must have dtype float16, bfloat16, float32 or float64"),
    (dict(typestr="<V4"), TypeError, "x must have dtype"),
    (dict(typestr=">f4"), TypeError, "x must have dtype"),
    (dict(typestr="<c8"), TypeError, "x must have dtype"),
    (dict(strides=(12, 6, 1)), ValueError, "not whole multiples"),
    (dict(strides=(12, 4)), TypeError, "2 strides for 3 axes"),
    (dict(mask=(0x2000, False)), TypeError, "masked"),
    (dict(stream=0), ValueError, "0 is disallowed"),
    (dict(version=4), TypeError, "version 4 is not supported"),
    (dict(data=(0, False)), ValueError, "null data pointer"),
    (dict(shape=None), TypeError, "lacks a valid shape"),
])
def test_bad_interfaces_are_refused(change, error, message):
    cai = dict(shape=(2, 3, 4), typestr="<f4", data=(0x1000, False), version=3)
    cai.update(change)
    with pytest.raises(error, match=message):
        describe(Interface(**cai), "x")


def test_unreadable_interface_names_the_argument():
    class RequiresGrad:  # as a CUDA torch tensor that requires grad
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")

    with pytest.raises(TypeError, match=r"x: its __cuda_array_interface__ cannot be read.*detach"):
        npool.soft_pool2d_forward(RequiresGrad(), 2)


def test_without_pycuda_gpu_arrays_get_a_clear_error():
    try:
        import pycuda.driver  # noqa: F401
        pytest.skip("PyCUDA is installed")
    except ImportError:
        pass
    assert npool.cuda_available() is False
    x = Interface(shape=(1, 1, 4, 4), typestr="<f4", data=(0x1000, False), version=2)
    with pytest.raises(RuntimeError, match=r"need PyCUDA.*pip install 'npool\[cuda\]'"):
        npool.soft_pool2d_forward(x, 2)


def test_cuda_available_never_raises():
    assert npool.cuda_available() in (True, False)
