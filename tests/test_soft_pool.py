"""SoftPool 1d/2d/3d on the CPU: forward and backward against the float64 reference, finite
differences, invariants, layouts, dtypes and non-finite values."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npool
from npool.testing import references, reference
from npool.testing.strategies import channels_last, local_pool_inputs
from helpers import (BACKWARD, FORWARD, call_backward, call_forward, central_differences,
                     ref_backward, ref_forward, scale_of)

# ------------------------------------------------------------------ forward vs reference
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-10), (np.float32, 1e-5)])
@given(data=st.data())
def test_forward_matches_reference(dtype, tolerance, data):
    x, nd, args = data.draw(local_pool_inputs(dtype=dtype))
    y = call_forward(x, nd, args)
    expected = ref_forward(x, nd, args)
    assert y.dtype == dtype and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=tolerance, atol=tolerance * scale_of(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_forward_lies_between_window_min_and_max(dtype, data):
    x, nd, args = data.draw(local_pool_inputs(dtype=dtype))
    kernel, stride, padding, ceil_mode = args
    y = call_forward(x, nd, args)
    for out_index, window in references.windows(x.shape[-nd:], kernel, stride, padding,
                                                 ceil_mode):
        cells = x[(Ellipsis,) + window].reshape(x.shape[:-nd] + (-1,))
        y_o = y[(Ellipsis,) + out_index]
        assert np.all(cells.min(axis=-1) <= y_o) and np.all(y_o <= cells.max(axis=-1))


# ------------------------------------------------------------------ backward
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-9), (np.float32, 1e-4)])
@given(data=st.data())
def test_backward_matches_reference(dtype, tolerance, data):
    x, nd, args = data.draw(local_pool_inputs(dtype=dtype))
    y = call_forward(x, nd, args)
    if data.draw(st.sampled_from(["ones", "random"])) == "ones":
        g = np.ones_like(y)
    else:
        g = np.random.default_rng(0).standard_normal(y.shape).astype(dtype)
    grad = call_backward(g, x, nd, args)
    expected = ref_backward(g, x, nd, args)
    assert grad.shape == x.shape and grad.dtype == dtype
    np.testing.assert_allclose(grad, expected, rtol=tolerance, atol=tolerance * scale_of(x))


@settings(max_examples=25)
@given(local_pool_inputs(dtype=np.float64, elements=st.floats(-3, 3), max_kernel=3), st.data())
def test_backward_matches_finite_differences(problem, data):
    x, nd, args = problem
    y = call_forward(x, nd, args)
    seed = data.draw(st.integers(0, 2**32 - 1))
    g = np.random.default_rng(seed).standard_normal(y.shape)
    numeric = central_differences(lambda v: float(np.sum(call_forward(v, nd, args) * g)), x)
    np.testing.assert_allclose(call_backward(g, x, nd, args), numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_backward_finite_differences_overlapping_windows_with_padding(nd):
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 2) + (5,) * nd)
    args = (3, 1, 1, False)
    y = call_forward(x, nd, args)
    g = rng.standard_normal(y.shape)
    numeric = central_differences(lambda v: float(np.sum(call_forward(v, nd, args) * g)), x)
    np.testing.assert_allclose(call_backward(g, x, nd, args), numeric, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ layouts
@given(local_pool_inputs(dtype=np.float32), st.data())
def test_channels_last_gives_the_same_bits_and_keeps_its_layout(problem, data):
    x, nd, args = problem
    batched = x.ndim == nd + 2
    x_cl = channels_last(x, batched)
    y, y_cl = call_forward(x, nd, args), call_forward(x_cl, nd, args)
    np.testing.assert_array_equal(y_cl, y)
    g = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    g_cl = channels_last(g, batched) if data.draw(st.booleans()) else g
    grad, grad_cl = call_backward(g, x, nd, args), call_backward(g_cl, x_cl, nd, args)
    np.testing.assert_array_equal(grad_cl, grad)
    c = 1 if batched else 0
    # Size-1 axes make some arrays both layouts at once: those count as C-contiguous, as in
    # PyTorch. A truly channels-last input gives channels-last outputs.
    for a in ((y_cl, grad_cl) if not x_cl.flags.c_contiguous else ()):
        assert np.transpose(a, [i for i in range(a.ndim) if i != c] + [c]).flags.c_contiguous
    assert y.flags.c_contiguous and grad.flags.c_contiguous


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_other_strides_are_handled(nd):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((3, 4) + (9,) * nd)
    x = base[::-1, ::2, ..., ::2]  # negative and non-unit strides
    args = (2, 1, 1, True)
    expected = call_forward(np.ascontiguousarray(x), nd, args)
    np.testing.assert_array_equal(call_forward(x, nd, args), expected)
    g = rng.standard_normal(expected.shape)[..., ::-1]
    np.testing.assert_array_equal(call_backward(g, x, nd, args),
                                  call_backward(np.ascontiguousarray(g), np.ascontiguousarray(x),
                                                nd, args))


def test_broadcast_and_read_only_inputs():
    x = np.broadcast_to(np.arange(6.0), (2, 3, 6))
    assert not x.flags.writeable
    y = npool.soft_pool1d_forward(x, 2)
    np.testing.assert_allclose(y, reference("soft_pool1d")[0](x, 2), rtol=1e-12)
    g = np.broadcast_to(np.ones(3), y.shape)
    np.testing.assert_allclose(npool.soft_pool1d_backward(g, x, 2),
                               reference("soft_pool1d")[1](g, x, 2), rtol=1e-12)


# ------------------------------------------------------------------ shapes and dtypes
@given(local_pool_inputs(dtype=np.float32, batched=True))
def test_unbatched_equals_batched(problem):
    x, nd, args = problem
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(call_forward(x[i], nd, args), call_forward(x, nd, args)[i])
    y = call_forward(x, nd, args)
    g = np.random.default_rng(4).standard_normal(y.shape).astype(np.float32)
    grad = call_backward(g, x, nd, args)
    np.testing.assert_array_equal(call_backward(g[0], x[0], nd, args), grad[0])


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch_gives_empty_output(nd, dtype):
    x = np.zeros((0, 3) + (5,) * nd, dtype)
    y = FORWARD[nd](x, 2, padding=1)
    assert y.shape == (0, 3) + (3,) * nd and y.dtype == dtype
    grad = BACKWARD[nd](y, x, 2, padding=1)
    assert grad.shape == x.shape and grad.dtype == dtype


@given(local_pool_inputs(dtype=np.float16, elements=st.floats(-60, 60, width=16)))
def test_float16_is_computed_in_float32(problem):
    x, nd, args = problem
    y = call_forward(x, nd, args)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, call_forward(x.astype(np.float32), nd, args).astype(np.float16))
    g = np.ones_like(y)
    grad = call_backward(g, x, nd, args)
    assert grad.dtype == np.float16
    expected = call_backward(g.astype(np.float32), x.astype(np.float32), nd, args)
    np.testing.assert_array_equal(grad, expected.astype(np.float16))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_kernel_equal_to_input_is_a_global_softpool(nd):
    x = np.random.default_rng(5).standard_normal((2, 3) + (4,) * nd)
    y = FORWARD[nd](x, 4)
    flat = x.reshape(2, 3, -1)
    w = np.exp(flat - flat.max(-1, keepdims=True))
    expected = (w * flat).sum(-1) / w.sum(-1)
    np.testing.assert_allclose(y.reshape(2, 3), expected, rtol=1e-12)


def test_large_windows_use_more_cells_than_a_thread_buffer_holds():
    # 80 x 80 = 6400 cells per window: more than the 4096 values of a thread's buffer.
    x = np.random.default_rng(6).standard_normal((1, 2, 80, 81))
    args = ((80, 80), (1, 1), 0, False)
    np.testing.assert_allclose(call_forward(x, 2, args), ref_forward(x, 2, args), rtol=1e-10)
    g = np.ones((1, 2, 1, 2))
    np.testing.assert_allclose(call_backward(g, x, 2, args), ref_backward(g, x, 2, args),
                               rtol=1e-9, atol=1e-12)


def test_long_rows_span_several_blocks():
    x = np.random.default_rng(7).standard_normal((1, 1, 3, 1000)).astype(np.float32)
    for args in [(2, 2, 1, True), (3, 1, 1, False), ((1, 5), (1, 3), (0, 2), True)]:
        np.testing.assert_allclose(call_forward(x, 2, args), ref_forward(x, 2, args),
                                   rtol=1e-5, atol=1e-5 * scale_of(x))
    x_cl = channels_last(np.random.default_rng(8).standard_normal((2, 300, 3, 3)))
    np.testing.assert_allclose(call_forward(x_cl, 2, (2, 1, 1, False)),
                               ref_forward(x_cl, 2, (2, 1, 1, False)), rtol=1e-10)


# ------------------------------------------------------------------ numerics
@pytest.mark.parametrize("dtype,magnitude", [(np.float32, 1e4), (np.float64, 1e300)])
def test_huge_finite_values_stay_finite_and_accurate(dtype, magnitude):
    rng = np.random.default_rng(9)
    x = (rng.uniform(-1, 1, (2, 3, 8, 8)) * magnitude).astype(dtype)
    y = npool.soft_pool2d_forward(x, 2)
    assert np.all(np.isfinite(y))
    # With gaps this large the softmax is a hard max.
    np.testing.assert_allclose(y, x.reshape(2, 3, 4, 2, 4, 2).max(axis=(3, 5)), rtol=1e-6)
    grad = npool.soft_pool2d_backward(np.ones_like(y), x, 2)
    assert np.all(np.isfinite(grad))


def test_ties_share_the_weight():
    x = np.full((1, 1, 4), 3.0)
    np.testing.assert_array_equal(npool.soft_pool1d_forward(x, 2), [[[3.0, 3.0]]])
    np.testing.assert_allclose(npool.soft_pool1d_backward(np.ones((1, 1, 2)), x, 2),
                               np.full((1, 1, 4), 0.5))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_non_finite_values_give_the_mathematical_limits(layout):
    inf, nan = np.inf, np.nan
    windows = np.array([
        [1.0, 2.0],     # finite
        [nan, 1.0],     # NaN wins
        [inf, 1.0],     # +inf takes the whole weight
        [inf, inf],
        [-inf, 2.0],    # -inf weighs nothing
        [-inf, -inf],   # only -inf: -inf
        [inf, -inf],
        [1.0, 1e30],    # the 1e30 cell has all the weight
    ])
    expected_y = [(np.exp(1) + 2 * np.exp(2)) / (np.exp(1) + np.exp(2)),
                  nan, inf, inf, 2.0, -inf, inf, 1e30]
    for dtype in (np.float32, np.float64):
        x = windows.astype(dtype).reshape(1, len(windows), 2)  # (N, C, W)
        if layout == "channels_last":
            x = channels_last(x)
        y = npool.soft_pool1d_forward(x, 2)
        np.testing.assert_allclose(y.ravel(), np.array(expected_y, dtype), rtol=1e-6)
        grad = npool.soft_pool1d_backward(np.ones_like(y), x, 2).reshape(-1, 2)
        assert np.all(np.isnan(grad[1]))
        np.testing.assert_array_equal(grad[2], [1, 0])
        np.testing.assert_array_equal(grad[3], [0.5, 0.5])
        np.testing.assert_array_equal(grad[4], [0, 1])
        np.testing.assert_array_equal(grad[5], [0.5, 0.5])
        np.testing.assert_array_equal(grad[6], [1, 0])
        np.testing.assert_allclose(grad[7], [0, 1], atol=1e-30)


def test_non_finite_cells_in_overlapping_windows():
    x = np.array([[[0.0, 1.0, -np.inf, 2.0, np.inf, 3.0]]])
    y = npool.soft_pool1d_forward(x, 3, stride=1, padding=1)
    np.testing.assert_allclose(
        y.ravel(), [reference("soft_pool1d")[0](x[..., :2], 2).item(),
                    reference("soft_pool1d")[0](x[..., :2], 2).item(),
                    reference("soft_pool1d")[0](x[..., [1, 3]], 2).item(),
                    np.inf, np.inf, np.inf])
    grad = npool.soft_pool1d_backward(np.ones_like(y), x, 3, stride=1, padding=1)
    assert grad[0, 0, 2] == 0 and grad[0, 0, 4] == 3 and grad[0, 0, 5] == 0
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_minus_inf_beside_equal_large_values(dtype):
    """A -inf cell weighs nothing and the others are equal: y is exactly their value and each
    gets a third of the gradient (y taken as a plain sum would be an ulp of 1e30 off, and the
    gradient 1 + x - y wildly wrong)."""
    x = np.array([[[-np.inf, 1e30, 1e30, 1e30]]], dtype)
    y = npool.soft_pool1d_forward(x, 4)
    assert y.item() == dtype(1e30)
    grad = npool.soft_pool1d_backward(np.ones_like(y), x, 4)
    np.testing.assert_allclose(grad.ravel(), [0, 1 / 3, 1 / 3, 1 / 3], rtol=1e-6)


# ------------------------------------------------------------------ purity
@given(local_pool_inputs(dtype=np.float32))
def test_inputs_are_not_modified(problem):
    x, nd, args = problem
    x_before = x.copy()
    y = call_forward(x, nd, args)
    g = np.ones_like(y)
    g_before = g.copy()
    call_backward(g, x, nd, args)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(g, g_before)


@settings(max_examples=40)
@given(local_pool_inputs(dtype=np.float32), st.booleans())
def test_backward_add_and_gather_paths_give_the_same_bits(problem, last):
    """Overlapping windows: adding plane by plane and gathering per cell agree bit for bit."""
    from npool import local_pools

    x, nd, args = problem
    if last:
        x = channels_last(x, x.ndim == nd + 2)
    g = np.cos(np.arange(call_forward(x, nd, args).size, dtype=np.float32))
    g = g.reshape(call_forward(x, nd, args).shape)
    saved = local_pools._GATHER_COST
    try:
        local_pools._GATHER_COST = 10**9  # always add plane by plane
        added = call_backward(g, x, nd, args)
        local_pools._GATHER_COST = 0  # always gather
        gathered = call_backward(g, x, nd, args)
    finally:
        local_pools._GATHER_COST = saved
    np.testing.assert_array_equal(added, gathered)
    np.testing.assert_allclose(added, ref_backward(g, x, nd, args), rtol=1e-4,
                               atol=1e-4 * scale_of(x))
