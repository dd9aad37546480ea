"""The GPU backend's global pools (max, avg, LSE, GeM, k-max, WELDON) against the CPU kernels:
dtypes, NaN and extreme values, sums near the float maximum, out=.

Every ``gpu`` test runs on two backends: ``emulated``, the CUDA kernels of src/cuda/ compiled
for the host by nvcc (see cuda_emulation.py) behind npool's real GPU code path, wherever nvcc
is; ``cuda``, a real GPU through PyCUDA (skipped without one). Outputs are allocated poisoned
with NaN on both, so an element the kernels forget shows.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npool
from npool.testing.strategies import channels_last
from npool.testing.tolerances import float_info
from helpers import HALF_DTYPES, global_problems


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


@pytest.mark.parametrize("values,p", [([1.0, 2.0, 3.0], 1e-9), ([5.0, 5.000001, 4.9999], 3.0),
                                      ([1e300, 1e-300, 1.7e308], 1e-4),
                                      ([0.0, -1.0, 2.0], 1000.0),
                                      ([500.0] * 15 + [0.0], 3.0)])
def test_gem_at_extreme_p_matches_the_cpu(gpu, values, p):
    """Near the geometric mean (p -> 0) and near the max (large p), y and both gradients as
    the CPU core computes them (dL/dp from the KL divergence's non-negative terms there)."""
    x = np.array([[values]])
    y = npool.global_gem_pool_forward(x, p, eps=1e-300)
    grad_x, grad_p = npool.global_gem_pool_backward(np.ones((1, 1)), x, p, eps=1e-300)
    y_gpu = gpu.to_host(npool.global_gem_pool_forward(gpu.to_device(x), p, eps=1e-300))
    grad_x_gpu, grad_p_gpu = npool.global_gem_pool_backward(
        gpu.to_device(np.ones((1, 1))), gpu.to_device(x), p, eps=1e-300)
    np.testing.assert_allclose(y_gpu, y, rtol=1e-13)
    np.testing.assert_allclose(gpu.to_host(grad_x_gpu), grad_x, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(gpu.read(grad_p_gpu), grad_p, rtol=1e-12)
