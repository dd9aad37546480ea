"""The set pools (LOUPE) on GPU arrays, on both GPU backends of test_cuda.py (the kernels
compiled for the host behind npool's real GPU code path, and a real GPU when there is one),
against the float64 loops of test_set_pools.py and the CPU core. Outputs and workspaces are
poisoned with NaN, so an element the kernels forget shows."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npool
from npool._checks import bfloat16
from npool.testing.tolerances import (assert_within, float_info, fv_scales, vlad_norm_scales,
                                      vlad_scales)
from helpers import ref_fv, ref_vlad


def on_gpu(gpu, *arrays):
    return [None if a is None else gpu.to_device(a) for a in arrays]


def to_host(gpu, result):
    if isinstance(result, tuple):
        return tuple(None if r is None else gpu.to_host(r) for r in result)
    return gpu.to_host(result)


def softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@st.composite
def gpu_set_problems(draw, dtype, fv=False):
    """(x, a, p, q, mask): B and M down to 0, D and K past one matmul tile and one emulated
    block (16, 32), values up to +-500 with ties (NetFV: up to +-5), no subnormals, x sometimes
    strided."""
    B, M = draw(st.integers(0, 3)), draw(st.integers(0, 6))
    D, K = draw(st.integers(1, 20)), draw(st.sampled_from([1, 2, 3, 5, 17, 33]))
    big = 5 if fv else 500
    # no subnormals (as npool.testing's problems): a flush to zero there is not what is judged
    values = st.one_of(st.floats(-big, big, width=32, allow_subnormal=False),
                       st.integers(-2, 2).map(float))
    if draw(st.booleans()):
        x = draw(hnp.arrays(dtype, (B, M, D), elements=values))
    else:  # (B, M, D) view of a (B, D, M) array
        x = draw(hnp.arrays(dtype, (B, D, M), elements=values)).transpose(0, 2, 1)
    logits = draw(hnp.arrays(np.float64, (B, M, K), elements=st.floats(-5, 5)))
    a = softmax(logits).astype(dtype)
    if fv:
        p = draw(hnp.arrays(dtype, (D, K), elements=st.floats(-3, 3, width=32,
                                                              allow_subnormal=False)))
        q = draw(hnp.arrays(dtype, (D, K), elements=st.floats(0.5, 2, width=32)))
    else:
        p = draw(hnp.arrays(dtype, (D, K), elements=values))
        q = None
    mask = draw(st.none() | hnp.arrays(np.bool_, (B, M)))
    return x, a, p, q, mask


def assert_close(got, expected, dtype, factor=1.0):
    tolerance = (1e-9 if dtype == np.float64 else 2e-4) * factor
    assert got.shape == expected.shape and got.dtype == expected.dtype
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance * scale)


def check_op(gpu, forward, backward, inputs, grad_shape, dtype, factor=1.0, reference=None,
             scales=None):
    """forward(*inputs) and backward(g, *inputs) on the GPU equal the CPU core; inputs
    unchanged; the forward also equals ``reference`` (float64) when given. ``scales(g)``, when
    given, returns the error scales of the forward and the gradients (see npool.testing.tolerances),
    which replace the fixed tolerances for ill-conditioned problems."""
    kept = [None if a is None else a.copy() for a in inputs]
    g = np.random.default_rng(7).uniform(-1, 1, grad_shape).astype(dtype)
    forward_scale, grad_scales = scales(g) if scales is not None else (None, None)
    y = forward(*inputs)
    y_gpu = to_host(gpu, forward(*on_gpu(gpu, *inputs)))
    if scales is not None:
        assert y_gpu.shape == y.shape and y_gpu.dtype == y.dtype
        assert_within(y_gpu, y, forward_scale, dtype)
        if reference is not None:
            assert_within(y_gpu, reference, forward_scale, dtype)
    else:
        assert_close(y_gpu, y, dtype, factor)
        if reference is not None:
            assert_close(y_gpu.astype(np.float64), reference, np.float64,
                         1e5 * factor if dtype == np.float32 else factor)
    expected = backward(g, *inputs)
    got = to_host(gpu, backward(*on_gpu(gpu, g, *inputs)))
    if not isinstance(expected, tuple):
        got, expected = (got,), (expected,)
    assert len(got) == len(expected)
    for i, (gr, ex) in enumerate(zip(got, expected)):
        if scales is not None:
            assert gr.shape == ex.shape and gr.dtype == ex.dtype
            assert_within(gr, ex, grad_scales[i], dtype)
        else:
            assert_close(gr, ex, dtype, factor)
    for a, k in zip(inputs, kept):
        if a is not None:
            np.testing.assert_array_equal(a, k)
    return y_gpu, got


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=25)
@given(data=st.data())
def test_vlad_matches_the_cpu_and_reference(gpu, dtype, data):
    x, a, c, _, mask = data.draw(gpu_set_problems(dtype))
    b, m, d = x.shape
    k = a.shape[2]
    a_ref = a.astype(np.float64) * (1 if mask is None else mask[..., None])
    small = b * m * d * k <= 2000
    check_op(gpu, lambda x, a, c, mask: npool.netvlad_pool_forward(x, a, c, mask),
             npool.netvlad_pool_backward, (x, a, c, mask), (b, d * k), dtype,
             reference=ref_vlad(x.astype(np.float64), a_ref, c.astype(np.float64))
             if small else None, scales=lambda g: vlad_scales(x, a, c, mask, g))
    check_op(gpu, lambda x, a, mask: npool.netrvlad_pool_forward(x, a, mask),
             npool.netrvlad_pool_backward, (x, a, mask), (b, d * k), dtype,
             scales=lambda g: (lambda f, gr: (f, gr[:2]))(*vlad_scales(x, a, None, mask, g)))
    # The backward from the forward's output and norms equals the recomputing one.
    xg, ag, cg, mg = on_gpu(gpu, x, a, c, mask)
    y, norms = npool.netvlad_pool_forward(xg, ag, cg, mg, return_norms=True)
    assert_within(gpu.to_host(norms), npool.netvlad_pool_forward(
        x, a, c, mask, return_norms=True)[1], vlad_norm_scales(x, a, c, mask), dtype)
    g = np.random.default_rng(1).uniform(-1, 1, (b, d * k)).astype(dtype)
    reused = to_host(gpu, npool.netvlad_pool_backward(gpu.to_device(g), xg, ag, cg, mg,
                                                      output=y, norms=norms))
    grad_scales = vlad_scales(x, a, c, mask, g)[1]
    for got, ex, scale in zip(reused, npool.netvlad_pool_backward(g, x, a, c, mask),
                              grad_scales):
        assert_within(got, ex, scale, dtype)
        if mask is not None and got.ndim == 3:
            assert np.all(got[~mask] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=20)
@given(data=st.data())
def test_fv_matches_the_cpu_and_reference(gpu, dtype, data):
    x, a, mu, covar, mask = data.draw(gpu_set_problems(dtype, fv=True))
    b, m, d = x.shape
    k = a.shape[2]
    a_ref = a.astype(np.float64) * (1 if mask is None else mask[..., None])
    small = b * m * d * k <= 2000
    check_op(gpu, lambda x, a, mu, cw, mask: npool.netfv_pool_forward(x, a, mu, cw, mask),
             npool.netfv_pool_backward, (x, a, mu, covar, mask), (b, 2 * d * k), dtype,
             reference=ref_fv(x.astype(np.float64), a_ref, mu.astype(np.float64),
                              covar.astype(np.float64))
             if small else None, scales=lambda g: fv_scales(x, a, mu, covar, mask, g))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=20)
@given(data=st.data())
def test_soft_dbow_and_gating_match_the_cpu(gpu, dtype, data):
    x, a, _, _, mask = data.draw(gpu_set_problems(dtype))
    b, m, k = a.shape
    check_op(gpu, lambda a, mask: npool.soft_dbow_pool_forward(a, mask),
             npool.soft_dbow_pool_backward, (a, mask), (b, k), dtype)
    n = x.shape[2]
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    weights = rng.standard_normal((n, n)).astype(dtype)
    biases = rng.standard_normal(n).astype(dtype)
    # Context Gating on (B, M, D) (strided x included) and on one vector.
    for features in (x / 100, x[0, 0] / 100 if x.size else np.ones(n, dtype)):
        features = features.astype(dtype)
        check_op(gpu, npool.context_gating_forward, npool.context_gating_backward,
                 (features, weights, biases), features.shape, dtype, factor=4)


@pytest.mark.parametrize("half", [np.dtype(np.float16), bfloat16()], ids=str)
def test_half_precision_is_computed_in_float32(gpu, half):
    """float16 and bfloat16 inputs are converted to float32 on the device and the results
    rounded once, as on the CPU."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 6)).astype(half)
    a = softmax(rng.standard_normal((2, 5, 4))).astype(half)
    c = rng.standard_normal((6, 4)).astype(half)
    cw = rng.uniform(0.5, 2, (6, 4)).astype(half)
    mask = np.array([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], bool)
    w, bias = rng.standard_normal((6, 6)).astype(half), np.zeros(6, half)
    eps = float(float_info(half).eps)
    cases = [(npool.netvlad_pool_forward, npool.netvlad_pool_backward, (x, a, c, mask)),
             (npool.netrvlad_pool_forward, npool.netrvlad_pool_backward, (x, a, mask)),
             (npool.netfv_pool_forward, npool.netfv_pool_backward, (x, a, c, cw, mask)),
             (npool.soft_dbow_pool_forward, npool.soft_dbow_pool_backward, (a, mask)),
             (npool.context_gating_forward, npool.context_gating_backward, (x, w, bias))]
    for forward, backward, inputs in cases:
        y = gpu.to_host(forward(*on_gpu(gpu, *inputs)))
        assert y.dtype == half
        # One rounding of the float32 result, as on the CPU.
        np.testing.assert_allclose(y.astype(np.float32), forward(*inputs).astype(np.float32),
                                   rtol=eps, atol=2 * eps)
        g = rng.uniform(-1, 1, y.shape).astype(half)
        grads = to_host(gpu, backward(*on_gpu(gpu, g, *inputs)))
        for got, ex in zip(grads, backward(g, *inputs)):
            assert got.dtype == half
            scale = max(1.0, float(np.abs(ex.astype(np.float32)).max()))
            np.testing.assert_allclose(got.astype(np.float32), ex.astype(np.float32),
                                       rtol=4 * eps, atol=4 * eps * scale)


def test_masked_samples_change_nothing_and_all_zero_residual_is_safe(gpu):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 3))
    a = softmax(rng.standard_normal((2, 4, 5)))
    c = rng.standard_normal((3, 5))
    mask = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], bool)
    junk = np.where(mask[..., None], x, 1e30)
    y = gpu.to_host(npool.netvlad_pool_forward(*on_gpu(gpu, junk, a, c, mask)))
    np.testing.assert_allclose(y, npool.netvlad_pool_forward(x, a, c, mask), rtol=1e-12)
    # All samples at the centroid: V = 0, the 1e-12 floor keeps everything finite.
    x0 = np.zeros((1, 3, 2))
    a0 = np.full((1, 3, 2), 0.5)
    grads = to_host(gpu, npool.netvlad_pool_backward(*on_gpu(
        gpu, np.ones((1, 4)), x0, a0, np.zeros((2, 2)))))
    assert all(np.all(np.isfinite(t)) for t in grads)
    np.testing.assert_array_equal(gpu.to_host(npool.netvlad_pool_forward(
        *on_gpu(gpu, x0, a0, np.zeros((2, 2))))), np.zeros((1, 4)))


def test_gpu_errors(gpu):
    x, a, c = np.zeros((2, 3, 4)), np.full((2, 3, 5), 0.2), np.zeros((4, 5))
    xg, ag, cg = on_gpu(gpu, x, a, c)
    with pytest.raises(ValueError, match="matmul= applies to numpy arrays"):
        npool.netvlad_pool_forward(xg, ag, cg, matmul=np.matmul)
    with pytest.raises(TypeError, match="same device"):
        npool.netvlad_pool_forward(xg, ag, c)
    with pytest.raises(TypeError, match="mask must have dtype bool"):
        npool.netvlad_pool_forward(xg, ag, cg, gpu.to_device(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, M\)"):
        npool.netvlad_pool_forward(xg, ag, cg, gpu.to_device(np.ones((2, 4), bool)))
    with pytest.raises(ValueError, match=r"centers must have shape \(4, 5\)"):
        npool.netvlad_pool_forward(xg, ag, gpu.to_device(np.zeros((5, 4))))
    with pytest.raises(ValueError, match="x and assign must agree"):
        npool.netfv_pool_forward(xg, gpu.to_device(np.zeros((2, 2, 5))), cg, cg)
    with pytest.raises(ValueError, match="grad_out must have the forward output's shape"):
        npool.netvlad_pool_backward(gpu.to_device(np.zeros((2, 19))), xg, ag, cg)
    with pytest.raises(ValueError, match="output and norms must be given together"):
        npool.netvlad_pool_backward(gpu.to_device(np.zeros((2, 20))), xg, ag, cg,
                                    output=gpu.to_device(np.zeros((2, 20))))
    x4 = np.zeros((2, 3, 4, 6)).transpose(2, 1, 0, 3)  # leading axes not one run
    with pytest.raises(ValueError, match="leading axes of x must form one strided run"):
        npool.context_gating_forward(gpu.to_device(x4), *on_gpu(gpu, np.eye(6), np.zeros(6)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ill_conditioned_vlad_within_its_error_scale(gpu, dtype):
    """The draw that once failed the suite by luck: every intra-normalisation on its 1e-12
    floor, the output constant in x and the exact grad_x 0. The CPU and the GPU give rounding
    noise of that zero, which the conditioning-aware scales admit (fixed tolerances did not)."""
    x = np.array([[[2.87e-9]]], dtype)
    a = np.full((1, 1, 3), 1 / 3, dtype)
    c = np.zeros((1, 3), dtype)
    check_op(gpu, lambda x, a, c: npool.netvlad_pool_forward(x, a, c),
             npool.netvlad_pool_backward, (x, a, c), (1, 3), dtype,
             reference=ref_vlad(x.astype(np.float64), a.astype(np.float64),
                                c.astype(np.float64)),
             scales=lambda g: vlad_scales(x, a, c, None, g))


def test_norms_do_not_overflow_on_the_gpu(gpu):
    """NetFV's second-order part past 1e19 in float32 and VLAD columns past 1e154 in float64:
    the sums of squares in float64, scaled before squaring when that overflows too, as on the
    CPU."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 6, 3)) * 1e18).astype(np.float32)
    a = np.full((2, 6, 2), 0.5, np.float32)
    mu, cw = np.zeros((3, 2), np.float32), np.ones((3, 2), np.float32)
    expected = npool.netfv_pool_forward(x, a, mu, cw)
    got = to_host(gpu, npool.netfv_pool_forward(*on_gpu(gpu, x, a, mu, cw)))
    np.testing.assert_allclose(np.linalg.norm(got[:, 6:].astype(np.float64), axis=1), 1,
                               rtol=1e-5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    x64 = np.array([[[1e200], [2e200]]])
    a64 = np.ones((1, 2, 1))
    got = to_host(gpu, npool.netrvlad_pool_forward(*on_gpu(gpu, x64, a64)))
    assert got[0, 0] == 1.0


def test_out_is_refused_for_gpu_set_pools(gpu):
    a = gpu.to_device(np.full((2, 3, 4), 0.25, np.float32))
    with pytest.raises(ValueError, match="out= is not supported on GPU arrays for the set pools"):
        npool.soft_dbow_pool_forward(a, out=np.empty((2, 4), np.float32))
