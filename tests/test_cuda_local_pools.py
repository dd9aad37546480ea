"""The GPU backend's local pools (SoftPool, Max-Ent) against the float64 reference and the
CPU kernels: dtypes, layouts and shapes, non-finite values, out=.

Every ``gpu`` test runs on two backends: ``emulated``, the CUDA kernels of src/cuda/ compiled
for the host by nvcc (see cuda_emulation.py) behind npool's real GPU code path, wherever nvcc
is; ``cuda``, a real GPU through PyCUDA (skipped without one). Outputs are allocated poisoned
with NaN on both, so an element the kernels forget shows.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npool
from npool._checks import bfloat16
from npool._cuda import windowed_softmax
from npool._cuda._arrays import describe
from npool.testing.strategies import channels_last, local_pool_inputs
from npool.testing.tolerances import float_info
from helpers import (HALF_DTYPES, call_backward, call_forward, lam_of, ref_backward, ref_forward,
                     scale_of)


def gpu_forward(gpu, x, nd, args):
    return gpu.to_host(call_forward(gpu.to_device(x), nd, args))


def gpu_backward(gpu, g, x, nd, args):
    return gpu.to_host(call_backward(gpu.to_device(g), gpu.to_device(x), nd, args))


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
    # grad_lam into out[1] (C-contiguous, lam's shape): a number's 0-d, an array's own shape
    out_lam = gpu.to_device(np.full((), 7, dtype))
    result = npool.maxent_pool2d_backward(gd, xd, lam, 2, out=(None, out_lam))
    assert result[1] is out_lam
    np.testing.assert_array_equal(gpu.read(out_lam), gpu.read(grad_lam))
    lam_array = gpu.to_device(np.full((3, 1, 1), 0.6, dtype))
    grad_x, grad_lam = npool.maxent_pool2d_backward(gd, xd, lam_array, 2)
    out, out_lam = gpu.to_device(np.zeros(x.shape, dtype)), gpu.to_device(np.full((3, 1, 1), 7,
                                                                                   dtype))
    result = npool.maxent_pool2d_backward(gd, xd, lam_array, 2, out=(out, out_lam))
    assert result[0] is out and result[1] is out_lam
    np.testing.assert_array_equal(gpu.read(out), gpu.read(grad_x))
    np.testing.assert_array_equal(gpu.read(out_lam), gpu.read(grad_lam))
    with pytest.raises(ValueError, match=r"out\[1\] must have strides"):
        npool.maxent_pool2d_backward(gd, xd, gpu.to_device(np.full((3, 1, 4), 0.6, dtype)), 2,
                                     out=(None, gpu.to_device(np.zeros((4, 1, 3), dtype).T)))
    with pytest.raises(ValueError, match=r"out\[1\] must not share memory with lam"):
        npool.maxent_pool2d_backward(gd, xd, lam_array, 2, out=(None, lam_array))
    with pytest.raises(ValueError, match="out must not share memory with x"):
        npool.soft_pool2d_backward(gd, xd, 2, out=xd)
    with pytest.raises(TypeError, match="out must have dtype"):
        npool.soft_pool2d_forward(xd, 2, out=gpu.to_device(np.zeros((2, 3, 3, 4), np.float64)))
