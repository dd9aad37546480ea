"""The GPU backend: SoftPool on GPU arrays against the float64 reference and the CPU kernels.

Every test runs on two backends (``gpu`` fixture):

- ``emulated``: the CUDA kernels of src/cuda/ compiled for the host by nvcc (see
  cuda_emulation.py) behind npool's real GPU code path; runs wherever nvcc is, GPU or not;
- ``cuda``: a real GPU through PyCUDA; skipped without PyCUDA and a GPU.

Outputs are allocated poisoned with NaN on both, so an element the kernels forget shows.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cuda_emulation
import npool
from npool._checks import bfloat16
from npool._cuda import windowed_softmax
from npool._cuda._arrays import describe
from npool.testing.strategies import channels_last, local_pool_inputs
from npool.testing.tolerances import float_info
from helpers import (call_backward, call_forward, global_problems, lam_of, ref_backward,
                     ref_forward, scale_of)

HALF_DTYPES = (np.dtype(np.float16), bfloat16())  # what the GPU stores in 16 bits


def gpu_forward(gpu, x, nd, args):
    return gpu.to_host(call_forward(gpu.to_device(x), nd, args))


def gpu_backward(gpu, g, x, nd, args):
    return gpu.to_host(call_backward(gpu.to_device(g), gpu.to_device(x), nd, args))


# ------------------------------------------------------------------ against the references
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-10), (np.float32, 1e-5)])
@given(data=st.data())
def test_forward_matches_reference_and_cpu(gpu, dtype, tolerance, data):
    x, nd, args = data.draw(local_pool_inputs(dtype=dtype))
    y = gpu_forward(gpu, x, nd, args)
    expected = ref_forward(x, nd, args)
    assert y.dtype == dtype and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=tolerance, atol=tolerance * scale_of(x))
    np.testing.assert_allclose(y, call_forward(x, nd, args), rtol=tolerance,
                               atol=tolerance * scale_of(x))


@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-9), (np.float32, 1e-4)])
@given(data=st.data())
def test_backward_matches_reference_and_cpu(gpu, dtype, tolerance, data):
    x, nd, args = data.draw(local_pool_inputs(dtype=dtype))
    y = call_forward(x, nd, args)
    seed = data.draw(st.integers(0, 2**32 - 1))
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    grad = gpu_backward(gpu, g, x, nd, args)
    expected = ref_backward(g, x, nd, args)
    assert grad.dtype == dtype and grad.shape == x.shape
    np.testing.assert_allclose(grad, expected, rtol=tolerance, atol=tolerance * scale_of(x))
    np.testing.assert_allclose(grad, call_backward(g, x, nd, args), rtol=tolerance,
                               atol=tolerance * scale_of(x))


@pytest.mark.parametrize("half", HALF_DTYPES, ids=str)
@given(local_pool_inputs(dtype=np.float16, elements=st.floats(-60, 60, width=16)), st.data())
def test_half_precision_is_computed_in_float32(gpu, half, problem, data):
    """float16 and bfloat16 (the __half and __nv_bfloat16 kernels): the float32 result rounded
    once, so within one rounding of the CPU's float32 result on the same inputs."""
    x, nd, args = problem
    x = x.astype(half)  # float16 draws are exact in float16; bfloat16 rounds them (in +-60)
    eps = float(float_info(half).eps)
    y = gpu_forward(gpu, x, nd, args)
    assert y.dtype == half
    expected = call_forward(x.astype(np.float32), nd, args)
    np.testing.assert_allclose(y.astype(np.float32), expected, rtol=eps, atol=1e-6)
    g = np.random.default_rng(5).standard_normal(y.shape).astype(half)
    grad = gpu_backward(gpu, g, x, nd, args)
    assert grad.dtype == half
    expected = call_backward(g.astype(np.float32), x.astype(np.float32), nd, args)
    np.testing.assert_allclose(grad.astype(np.float32), expected, rtol=eps,
                               atol=eps / 10 * scale_of(g.astype(np.float32)))


@pytest.mark.parametrize("half", HALF_DTYPES, ids=str)
def test_half_precision_maxent_with_a_lam_array(gpu, half):
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((2, 3, 7, 6)) * 4).astype(half)
    x_cl = channels_last(x, True)
    lam = rng.uniform(0.1, 3, (2, 3, 1, 1)).astype(half)
    eps = float(float_info(half).eps)
    for xi in (x, x_cl):
        y = npool.maxent_pool2d_forward(gpu.to_device(xi), gpu.to_device(lam), 3, 2, 1, True)
        expected = npool.maxent_pool2d_forward(xi, lam, 3, 2, 1, True)
        got = gpu.to_host(y)
        assert got.dtype == half
        np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32),
                                   rtol=eps, atol=eps / 10)
        g = rng.standard_normal(expected.shape).astype(half)
        grads = npool.maxent_pool2d_backward(gpu.to_device(g), gpu.to_device(xi),
                                             gpu.to_device(lam), 3, 2, 1, True)
        for got, ex in zip(grads, npool.maxent_pool2d_backward(g, xi, lam, 3, 2, 1, True)):
            got = gpu.to_host(got)
            assert got.dtype == half
            scale = max(1.0, float(np.abs(ex.astype(np.float32)).max()))
            np.testing.assert_allclose(got.astype(np.float32), ex.astype(np.float32),
                                       rtol=2 * eps, atol=2 * eps * scale)


@settings(max_examples=10)
@given(local_pool_inputs(dtype=np.float64, elements=st.floats(-3, 3), max_kernel=3), st.data())
def test_backward_matches_finite_differences(gpu, problem, data):
    x, nd, args = problem
    y = call_forward(x, nd, args)
    g = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).standard_normal(y.shape)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric[index] = np.sum((gpu_forward(gpu, plus, nd, args) -
                                 gpu_forward(gpu, minus, nd, args)) * g) / (2 * eps)
    np.testing.assert_allclose(gpu_backward(gpu, g, x, nd, args), numeric, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ layouts and shapes
@given(local_pool_inputs(dtype=np.float32), st.data())
def test_channels_last_gives_the_same_bits_and_keeps_its_layout(gpu, problem, data):
    x, nd, args = problem
    batched = x.ndim == nd + 2
    x_cl = channels_last(x, batched)
    y = call_forward(gpu.to_device(x), nd, args)
    y_cl = call_forward(gpu.to_device(x_cl), nd, args)
    np.testing.assert_array_equal(gpu.to_host(y_cl), gpu.to_host(y))
    g = np.random.default_rng(2).standard_normal(gpu.to_host(y).shape).astype(np.float32)
    g_cl = channels_last(g, batched) if data.draw(st.booleans()) else g
    grad = gpu_backward(gpu, g, x, nd, args)
    grad_cl_obj = call_backward(gpu.to_device(g_cl), gpu.to_device(x_cl), nd, args)
    np.testing.assert_array_equal(gpu.to_host(grad_cl_obj), grad)
    c = 1 if batched else 0
    if not x_cl.flags.c_contiguous:  # truly channels-last: so are the outputs
        for obj in (y_cl, grad_cl_obj):
            a = describe(obj, "out")
            memory_order = [i for i in range(a.ndim) if i != c] + [c]
            assert np.all(np.diff([a.strides[i] for i in memory_order]) <= 0)
            assert a.strides[c] == 1


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_other_strides_are_read_in_place(gpu, nd):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((3, 4) + (9,) * nd)
    x = base[::-1, ::2, ..., ::2]  # negative and non-unit strides
    args = (2, 1, 1, True)
    np.testing.assert_allclose(gpu_forward(gpu, x, nd, args), ref_forward(x, nd, args),
                               rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(ref_forward(x, nd, args).shape)[..., ::-1]
    np.testing.assert_allclose(gpu_backward(gpu, g, x, nd, args), ref_backward(g, x, nd, args),
                               rtol=1e-10, atol=1e-12)


@given(local_pool_inputs(dtype=np.float32, batched=True))
def test_unbatched_equals_batched(gpu, problem):
    x, nd, args = problem
    y = gpu_forward(gpu, x, nd, args)
    np.testing.assert_array_equal(gpu_forward(gpu, x[0], nd, args), y[0])
    g = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(gpu_backward(gpu, g[0], x[0], nd, args),
                                  gpu_backward(gpu, g, x, nd, args)[0])


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_empty_batch_gives_empty_output(gpu, nd):
    x = np.zeros((0, 3) + (5,) * nd, np.float32)
    y = gpu_forward(gpu, x, nd, (2, None, 1, False))
    assert y.shape == (0, 3) + (3,) * nd and y.dtype == np.float32
    grad = gpu_backward(gpu, y, x, nd, (2, None, 1, False))
    assert grad.shape == x.shape


@given(local_pool_inputs(dtype=np.float32))
def test_two_runs_give_the_same_bits(gpu, problem):
    x, nd, args = problem
    g = np.random.default_rng(6).standard_normal(call_forward(x, nd, args).shape)
    g = g.astype(np.float32)
    np.testing.assert_array_equal(gpu_forward(gpu, x, nd, args), gpu_forward(gpu, x, nd, args))
    np.testing.assert_array_equal(gpu_backward(gpu, g, x, nd, args),
                                  gpu_backward(gpu, g, x, nd, args))


@given(local_pool_inputs(dtype=np.float32))
def test_64_bit_indexing_gives_the_same_bits(gpu, problem):
    """The i64 kernels (arrays of 2**31 elements or more) agree with the i32 ones, whose
    division by multiplication they thereby check."""
    x, nd, args = problem
    g = np.random.default_rng(7).standard_normal(call_forward(x, nd, args).shape)
    g = g.astype(np.float32)
    y32, grad32 = gpu_forward(gpu, x, nd, args), gpu_backward(gpu, g, x, nd, args)
    saved = windowed_softmax._INDEX_LIMIT
    windowed_softmax._INDEX_LIMIT = 0
    try:
        y64, grad64 = gpu_forward(gpu, x, nd, args), gpu_backward(gpu, g, x, nd, args)
    finally:
        windowed_softmax._INDEX_LIMIT = saved
    np.testing.assert_array_equal(y64, y32)
    np.testing.assert_array_equal(grad64, grad32)


# ------------------------------------------------------------------ non-finite values
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_non_finite_values_match_the_cpu(gpu, dtype, data):
    """NaN wins, +inf takes the whole weight, -inf weighs nothing - as on the CPU."""
    special = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 1.0, 2.0])
    x, nd, args = data.draw(local_pool_inputs(dtype=dtype, elements=special))
    y, expected = gpu_forward(gpu, x, nd, args), call_forward(x, nd, args)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=0)
    g = np.ones_like(y)
    np.testing.assert_allclose(gpu_backward(gpu, g, x, nd, args), call_backward(g, x, nd, args),
                               rtol=1e-6, atol=0)


def test_large_activations_stay_finite(gpu):
    x = np.array([[[[500.0, -500.0], [499.0, 1e4]]]], np.float32)
    y = gpu_forward(gpu, x, 2, (2, None, 0, False))
    np.testing.assert_allclose(y, ref_forward(x, 2, (2, None, 0, False)), rtol=1e-6)
    grad = gpu_backward(gpu, np.ones_like(y), x, 2, (2, None, 0, False))
    assert np.all(np.isfinite(grad))


# ------------------------------------------------------------------ plumbing
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


# ------------------------------------------------------------------ frameworks, on a GPU
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


# ------------------------------------------------------------------ without a GPU
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


# ------------------------------------------------------------------ global pools
GLOBAL_CASES = [
    ("max", npool.global_max_pool_forward, npool.global_max_pool_backward, {}, True),
    ("avg", npool.global_avg_pool_forward, npool.global_avg_pool_backward, {}, False),
    ("lse", npool.global_lse_pool_forward, npool.global_lse_pool_backward, {"beta": 0.7}, False),
    ("lse-", npool.global_lse_pool_forward, npool.global_lse_pool_backward, {"beta": -2.0},
     False),
    ("kmax", npool.global_kmax_pool_forward, npool.global_kmax_pool_backward, {"k": 0.3}, True),
    ("weldon", npool.weldon_pool_forward, npool.weldon_pool_backward,
     {"kmax": 3, "kmin": 5, "alpha": 0.6}, True),
    ("kmax-all", npool.global_kmax_pool_forward, npool.global_kmax_pool_backward, {"k": 1000},
     True),
]


@pytest.mark.parametrize("name,forward,backward,kwargs,selects", GLOBAL_CASES,
                         ids=[c[0] for c in GLOBAL_CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=30)
@given(data=st.data())
def test_global_pools_match_the_cpu(gpu, name, forward, backward, kwargs, selects, dtype, data):
    x, _ = data.draw(global_problems(dtype, max_side=12))
    keepdims = data.draw(st.booleans())
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    scale = max(1.0, float(np.abs(x).max()))
    y = forward(x, keepdims=keepdims, **kwargs)
    y_gpu = gpu.to_host(forward(gpu.to_device(x), keepdims=keepdims, **kwargs))
    assert y_gpu.shape == y.shape and y_gpu.dtype == dtype
    np.testing.assert_allclose(y_gpu, y, rtol=tolerance, atol=tolerance * scale)
    g = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    grad = backward(g, x, keepdims=keepdims, **kwargs)
    grad_gpu = gpu.to_host(backward(gpu.to_device(g), gpu.to_device(x), keepdims=keepdims,
                                    **kwargs))
    np.testing.assert_allclose(grad_gpu, grad, rtol=tolerance, atol=tolerance * scale)
    if selects:  # the same cells as the CPU, and the indices round trip
        y_i, index = forward(x, keepdims=keepdims, return_indices=True, **kwargs)
        y_gpu_i, index_gpu = forward(gpu.to_device(x), keepdims=keepdims, return_indices=True,
                                     **kwargs)
        np.testing.assert_array_equal(gpu.read(index_gpu), index)
        grad_gpu = gpu.to_host(backward(gpu.to_device(g), gpu.to_device(x), keepdims=keepdims,
                                        indices=index_gpu, **kwargs))
        np.testing.assert_allclose(grad_gpu, grad, rtol=tolerance, atol=tolerance * scale)
    if name.startswith("lse"):  # the forward's statistics: the same gradient, bit for bit
        y_s, stats = forward(gpu.to_device(x), keepdims=keepdims, return_stats=True, **kwargs)
        np.testing.assert_array_equal(gpu.to_host(y_s), y_gpu)
        assert gpu.read(stats).shape == x.shape[:2] + (2,)
        grad_s = gpu.to_host(backward(gpu.to_device(g), gpu.to_device(x), keepdims=keepdims,
                                      stats=stats, **kwargs))
        np.testing.assert_array_equal(grad_s, grad_gpu)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p_kind", ["number", "shared", "channel", "map"])
@settings(max_examples=25)
@given(data=st.data())
def test_gem_matches_the_cpu(gpu, dtype, p_kind, data):
    """GeM on the GPU (float64 math) against the CPU core, p a number or a GPU array (float32
    or float64) broadcast to (N, C); grad_p summed to p's shape, in p's dtype."""
    x, _ = data.draw(global_problems(dtype, max_side=12))
    keepdims = data.draw(st.booleans())
    exponents = st.floats(0.2, 40.0)
    N, C = x.shape[:2]
    shape = {"number": None, "shared": (1,), "channel": (C,), "map": (N, C)}[p_kind]
    p_dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    p = data.draw(exponents) if shape is None else \
        np.asarray(data.draw(hnp.arrays(np.float64, shape, elements=exponents)), p_dtype)
    p_gpu = p if shape is None else gpu.to_device(p)
    eps = data.draw(st.sampled_from([1e-6, 0.5]))
    tolerance = 1e-10 if dtype == np.float64 else 2e-5
    y = npool.global_gem_pool_forward(x, p, eps, keepdims)
    y_gpu = gpu.to_host(npool.global_gem_pool_forward(gpu.to_device(x), p_gpu, eps, keepdims))
    assert y_gpu.shape == y.shape and y_gpu.dtype == dtype
    np.testing.assert_allclose(y_gpu, y, rtol=tolerance, atol=1e-300)
    g = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    grad_x, grad_p = npool.global_gem_pool_backward(g, x, p, eps, keepdims)
    grad_x_gpu, grad_p_gpu = npool.global_gem_pool_backward(gpu.to_device(g), gpu.to_device(x),
                                                            p_gpu, eps, keepdims)
    scale = np.abs(grad_x).max(initial=0) + 1e-30
    np.testing.assert_allclose(gpu.to_host(grad_x_gpu), grad_x, rtol=tolerance,
                               atol=tolerance * scale)
    grad_p_host = gpu.read(grad_p_gpu)
    assert grad_p_host.shape == np.shape(p)
    assert grad_p_host.dtype == (np.float64 if shape is None else p_dtype)
    np.testing.assert_allclose(grad_p_host, grad_p, rtol=1e-4 if p_dtype == np.float32 else
                               tolerance, atol=1e-4 * (np.abs(grad_p).max(initial=0) + 1e-30))


def test_gem_limits_on_the_gpu(gpu):
    """NaN and +inf maps as on the CPU; a p array that is not positive gives NaN there (the
    CPU refuses it: checking it on the GPU would cost a synchronisation)."""
    x = np.array([[[1.0, np.nan, 3.0], [1.0, np.inf, 2.0], [-np.inf, 0.5, 2.0]]])
    expected = npool.global_gem_pool_forward(x, 3.0)
    np.testing.assert_array_equal(gpu.to_host(npool.global_gem_pool_forward(
        gpu.to_device(x), 3.0)), expected)
    bad = gpu.to_device(np.array([2.0, -1.0, 0.0]))
    y = gpu.to_host(npool.global_gem_pool_forward(gpu.to_device(x), bad))
    assert np.isnan(y[0, 1:]).all() and np.isnan(y[0, 0])
    with pytest.raises(ValueError, match="p must be positive"):
        npool.global_gem_pool_forward(gpu.to_device(x), -1.0)
    with pytest.raises(TypeError, match="p is a numpy array"):
        npool.global_gem_pool_forward(gpu.to_device(x), np.ones(3))


def test_global_pools_nan_and_float16(gpu):
    x = np.array([[[1.0, np.nan, 3.0, np.nan], [2.0, 2.0, -1.0, 5.0]]], np.float32)
    y, index = npool.global_max_pool_forward(gpu.to_device(x), return_indices=True)
    np.testing.assert_array_equal(gpu.to_host(y), [[np.nan, 5.0]])
    np.testing.assert_array_equal(gpu.read(index), [[1, 3]])
    _, index = npool.weldon_pool_forward(gpu.to_device(x), kmax=2, kmin=2, return_indices=True)
    np.testing.assert_array_equal(gpu.read(index), [[[1, 3, 0, 2], [0, 3, 0, 2]]])
    for half in HALF_DTYPES:  # the __half and __nv_bfloat16 kernels: one rounding of float32
        eps = float(float_info(half).eps)
        h = np.random.default_rng(4).standard_normal((2, 3, 5, 5)).astype(half)
        g = np.random.default_rng(5).standard_normal((2, 3)).astype(half)
        for forward, backward in ((npool.global_lse_pool_forward, npool.global_lse_pool_backward),
                                  (npool.global_avg_pool_forward, npool.global_avg_pool_backward),
                                  (npool.global_max_pool_forward, npool.global_max_pool_backward)):
            y = gpu.to_host(forward(gpu.to_device(h)))
            assert y.dtype == half
            np.testing.assert_allclose(y.astype(np.float32), forward(h).astype(np.float32),
                                       rtol=2 * eps, atol=2 * eps)
            grad = gpu.to_host(backward(gpu.to_device(g), gpu.to_device(h)))
            assert grad.dtype == half
            np.testing.assert_allclose(grad.astype(np.float32),
                                       backward(g, h).astype(np.float32), rtol=2 * eps,
                                       atol=2 * eps)
        for forward, backward, k in ((npool.global_kmax_pool_forward,
                                      npool.global_kmax_pool_backward, dict(k=3)),
                                     (npool.weldon_pool_forward, npool.weldon_pool_backward,
                                      dict(kmax=3, kmin=2))):
            y, index = forward(gpu.to_device(h), return_indices=True, **k)
            y_cpu, index_cpu = forward(h, return_indices=True, **k)
            np.testing.assert_array_equal(gpu.read(index), index_cpu)
            np.testing.assert_allclose(gpu.to_host(y).astype(np.float32),
                                       y_cpu.astype(np.float32), rtol=2 * eps, atol=2 * eps)
            grad = gpu.to_host(backward(gpu.to_device(g), gpu.to_device(h), indices=index, **k))
            np.testing.assert_allclose(grad.astype(np.float32),
                                       backward(g, h, indices=index_cpu, **k).astype(np.float32),
                                       rtol=2 * eps, atol=2 * eps)


# ------------------------------------------------------------------ Max-Entropy pooling
@pytest.mark.parametrize("mode", ["scalar", "channel", "sample_channel", "position", "sample",
                                  "other"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=25)
@given(data=st.data())
def test_maxent_matches_the_cpu(gpu, mode, dtype, data):
    x, nd, args = data.draw(local_pool_inputs(dtype=dtype, elements=st.floats(-20, 20, width=32)))
    if data.draw(st.booleans()):
        x = channels_last(x, x.ndim == nd + 2)
    kernel, stride, padding, ceil_mode = args
    forward = getattr(npool, f"maxent_pool{nd}d_forward")
    backward = getattr(npool, f"maxent_pool{nd}d_backward")
    rng = np.random.default_rng(data.draw(st.integers(0, 999)))
    y = forward(x, 1.0, kernel, stride, padding, ceil_mode)
    lam = lam_of(mode, y.shape, x.ndim == nd + 2, rng)
    lam_gpu = lam if np.ndim(lam) == 0 else gpu.to_device(np.asarray(lam, dtype))
    lam_cpu = lam if np.ndim(lam) == 0 else np.asarray(lam, dtype)
    tolerance = 1e-10 if dtype == np.float64 else 1e-4
    scale = max(1.0, float(np.abs(x).max()))
    expected = forward(x, lam_cpu, kernel, stride, padding, ceil_mode)
    result = gpu.to_host(forward(gpu.to_device(x), lam_gpu, kernel, stride, padding, ceil_mode))
    np.testing.assert_allclose(result, expected, rtol=tolerance, atol=tolerance * scale)
    g = rng.standard_normal(y.shape).astype(dtype)
    grad_x, grad_lam = backward(g, x, lam_cpu, kernel, stride, padding, ceil_mode)
    gx_gpu, glam_gpu = backward(gpu.to_device(g), gpu.to_device(x), lam_gpu, kernel, stride,
                                padding, ceil_mode)
    np.testing.assert_allclose(gpu.to_host(gx_gpu), grad_x, rtol=tolerance,
                               atol=tolerance * scale * 4)
    glam = gpu.to_host(glam_gpu)
    assert glam.shape == np.shape(lam)
    np.testing.assert_allclose(glam, grad_lam, rtol=tolerance * 10,
                               atol=tolerance * 10 * scale ** 2 * max(1, g.size))


@pytest.mark.parametrize("window,lam,dtype", [
    ([3e38, 2e38, 1e38], 2.0, np.float32), ([8e37, -1.4e38, -2.75e38, -2.9e38], 0.0, np.float32),
    ([3.3e38, -3.3e38, 1e38, 0.0], 1e-30, np.float32), ([3e38, -3e38, 2e38], -2.0, np.float32),
    ([1.7e308, 1.0e308, -1.7e308], 2.0, np.float64), ([1.7e308, -1.7e308, -1.7e308], 0.0,
                                                      np.float64),
    ([np.inf, 1.0, 2.0], 0.0, np.float64), ([np.inf, -np.inf, 1.0], 1.0, np.float64),
    ([-np.inf, -np.inf, -np.inf], 1.0, np.float32), ([np.nan, 1.0, 2.0], 1.0, np.float32),
])
@pytest.mark.parametrize("stride", [1, 3])  # overlapping (stats and gather) and disjoint
def test_maxent_extreme_windows_match_the_cpu(gpu, window, lam, dtype, stride):
    """The careful path (lam x overflowing, sums overflowing near the float maximum,
    infinities, NaN) gives the CPU kernel's results on the GPU, forward and backward."""
    x = np.array([[[window * 2]]], dtype)
    kernel = (1, len(window))
    args = (lam, kernel, (1, stride))
    with np.errstate(all="ignore"):
        expected = npool.maxent_pool2d_forward(x, *args)
        g = np.ones_like(expected)
        grad_x, grad_lam = npool.maxent_pool2d_backward(g, x, *args)
    got = gpu.to_host(npool.maxent_pool2d_forward(gpu.to_device(x), *args))
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)
    gx, glam = npool.maxent_pool2d_backward(gpu.to_device(g), gpu.to_device(x), *args)
    np.testing.assert_allclose(gpu.to_host(gx), grad_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gpu.to_host(glam), grad_lam, rtol=1e-5)


@pytest.mark.parametrize("values,beta,dtype", [
    ([3e38, 3e38], 2.0, np.float32), ([3.4e32, 1.0], 1e6, np.float32),
    ([0.0, 1.0], 1e300, np.float32), ([0.0, 1.0], 1e-300, np.float32),
    ([0.0, 1.0], 1e-6, np.float32), ([0.0, 1.0], -1e-30, np.float32),
    ([0.3, -0.2, 0.1], 1e-3, np.float32), ([1.7e308, -1.7e308], 1.0, np.float64),
    ([1.0, 2.0, 3.0], 5e-324, np.float64), ([0.01, 0.02], 1.0, np.float64),
    ([np.inf, 1.0], 1.0, np.float64), ([-np.inf, 1.0], 1.0, np.float32),
    ([np.nan, 1.0], -1.0, np.float32),
])
def test_global_pools_extreme_values_match_the_cpu(gpu, values, beta, dtype):
    """LSE for every finite beta (overflow, cancellation, tiny and huge beta), and the sums
    of avg and k-max near the float maximum, as the CPU core computes them."""
    x = np.array([[values * 3]], dtype)
    with np.errstate(all="ignore"):
        expected = npool.global_lse_pool_forward(x, beta)
        grad = npool.global_lse_pool_backward(np.ones((1, 1), dtype), x, beta)
    rtol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(gpu.to_host(npool.global_lse_pool_forward(gpu.to_device(x), beta)),
                               expected, rtol=rtol)
    grad_gpu = gpu.to_host(npool.global_lse_pool_backward(
        gpu.to_device(np.ones((1, 1), dtype)), gpu.to_device(x), beta))
    np.testing.assert_allclose(grad_gpu, grad, rtol=1e-5, atol=1e-7)
    _, stats = npool.global_lse_pool_forward(gpu.to_device(x), beta, return_stats=True)
    np.testing.assert_array_equal(gpu.to_host(npool.global_lse_pool_backward(
        gpu.to_device(np.ones((1, 1), dtype)), gpu.to_device(x), beta, stats=stats)), grad_gpu)
    for forward in (npool.global_avg_pool_forward,
                    lambda a: npool.global_kmax_pool_forward(a, 4),
                    lambda a: npool.weldon_pool_forward(a, 2, 2, 0.5)):
        with np.errstate(all="ignore"):
            expected = forward(x)
        np.testing.assert_allclose(gpu.to_host(forward(gpu.to_device(x))), expected, rtol=rtol)


@pytest.mark.parametrize("dtype,top", [(np.float32, 3e38), (np.float64, 1.7e308)])
def test_global_sums_near_the_maximum_on_the_gpu(gpu, dtype, top):
    x = np.full((1, 2, 40), top, dtype)
    x[0, 1, ::2] = -top
    assert gpu.to_host(npool.global_avg_pool_forward(gpu.to_device(x)))[0, 0] == dtype(top)
    assert gpu.to_host(npool.global_kmax_pool_forward(gpu.to_device(x), 40))[0, 0] == dtype(top)
    np.testing.assert_allclose(gpu.to_host(npool.weldon_pool_forward(gpu.to_device(x), 20, 20,
                                                                      0.5)),
                               npool.weldon_pool_forward(x, 20, 20, 0.5), rtol=1e-6)


# ------------------------------------------------------------------ out=
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float32, bfloat16()], ids=str)
def test_out_receives_local_pools_in_place(gpu, layout, dtype):
    """out= on GPU arrays: the kernels write into the caller's memory (any strides) and the
    out object comes back; the bits equal a fresh result's."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 7, 9)).astype(dtype)
    if layout == "channels_last":
        x = channels_last(x)
    g = rng.standard_normal((2, 3, 3, 4)).astype(dtype)
    xd, gd = gpu.to_device(x), gpu.to_device(g)
    for args in [(2, 2, 0, True), (3, 1, 1, False)]:
        y = gpu.read(npool.soft_pool2d_forward(xd, *args))
        out = gpu.to_device(np.full(y.shape, 7, dtype))
        assert npool.soft_pool2d_forward(xd, *args, out=out) is out
        np.testing.assert_array_equal(gpu.read(out), y)
        g_args = gpu.to_device(rng.standard_normal(y.shape).astype(dtype))
        grad = gpu.read(npool.soft_pool2d_backward(g_args, xd, *args))
        for memory in (np.full(x.shape, 7, dtype), np.asfortranarray(np.full(x.shape, 7, dtype))):
            out = gpu.to_device(memory)
            assert npool.soft_pool2d_backward(g_args, xd, *args, out=out) is out
            np.testing.assert_array_equal(gpu.read(out), grad)
    lam = 0.6
    grad_x, grad_lam = npool.maxent_pool2d_backward(gd, xd, lam, 2)
    out = gpu.to_device(np.zeros(x.shape, dtype))
    result = npool.maxent_pool2d_backward(gd, xd, lam, 2, out=(out, None))
    assert result[0] is out
    np.testing.assert_array_equal(gpu.read(out), gpu.read(grad_x))
    with pytest.raises(ValueError, match="not supported on GPU arrays for grad_lam"):
        npool.maxent_pool2d_backward(gd, xd, lam, 2, out=(None, gpu.to_device(np.zeros((),
                                                                                        dtype))))
    with pytest.raises(ValueError, match="out must not share memory with x"):
        npool.soft_pool2d_backward(gd, xd, 2, out=xd)
    with pytest.raises(TypeError, match="out must have dtype"):
        npool.soft_pool2d_forward(xd, 2, out=gpu.to_device(np.zeros((2, 3, 3, 4), np.float64)))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_out_receives_global_pools_in_place(gpu, layout):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    if layout == "channels_last":
        x = channels_last(x)
    xd = gpu.to_device(x)
    for name, forward, backward, kwargs, _ in GLOBAL_CASES:
        y = gpu.read(forward(xd, **kwargs))
        out = gpu.to_device(np.full(y.shape, 7, np.float32))
        assert forward(xd, out=out, **kwargs) is out
        np.testing.assert_array_equal(gpu.read(out), y)
        g = gpu.to_device(rng.standard_normal(y.shape).astype(np.float32))
        grad = gpu.read(backward(g, xd, **kwargs))
        out = gpu.to_device(np.full_like(x, 7))  # x's layout
        assert backward(g, xd, out=out, **kwargs) is out
        np.testing.assert_array_equal(gpu.read(out), grad)
        other = np.asfortranarray(np.full(x.shape, 7, np.float32))
        with pytest.raises(ValueError, match="out must have strides"):
            backward(g, xd, out=gpu.to_device(other), **kwargs)


def test_out_is_refused_for_gpu_set_pools(gpu):
    a = gpu.to_device(np.full((2, 3, 4), 0.25, np.float32))
    with pytest.raises(ValueError, match="out= is not supported on GPU arrays for the set pools"):
        npool.soft_dbow_pool_forward(a, out=np.empty((2, 4), np.float32))
