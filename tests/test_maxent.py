"""Max-Entropy pooling on the CPU: every lam mode against the float64 reference and finite
differences, its limits (lam = 0, large lam, lam = 1), layouts, threads and errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npool
from npool.testing import reference
from npool.testing.strategies import channels_last, local_pool_inputs
from helpers import central_differences, lam_of

FORWARD = {1: npool.maxent_pool1d_forward, 2: npool.maxent_pool2d_forward,
           3: npool.maxent_pool3d_forward}
BACKWARD = {1: npool.maxent_pool1d_backward, 2: npool.maxent_pool2d_backward,
            3: npool.maxent_pool3d_backward}
SOFT = {1: npool.soft_pool1d_forward, 2: npool.soft_pool2d_forward,
        3: npool.soft_pool3d_forward}
MODES = ["scalar", "channel", "sample_channel", "position", "sample", "other"]


def call(fn, *args, nd_args):
    kernel, stride, padding, ceil_mode = nd_args
    return fn(*args, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-9), (np.float32, 1e-4)])
@given(data=st.data())
def test_forward_and_backward_match_reference(mode, dtype, tolerance, data):
    x, nd, args = data.draw(local_pool_inputs(dtype=dtype, elements=st.floats(-20, 20, width=32)))
    if data.draw(st.booleans()):
        x = channels_last(x, x.ndim == nd + 2)
    rng = np.random.default_rng(data.draw(st.integers(0, 999)))
    out_shape = SOFT[nd](x, args[0], stride=args[1], padding=args[2], ceil_mode=args[3]).shape
    lam = lam_of(mode, out_shape, x.ndim == nd + 2, rng)
    if isinstance(lam, np.ndarray):
        lam = lam.astype(dtype)
    kernel, stride, padding, ceil_mode = args
    y = call(FORWARD[nd], x, lam, nd_args=args)
    ref_forward, ref_backward = reference(f"maxent_pool{nd}d")
    expected = ref_forward(x, lam, kernel, stride, padding, ceil_mode)
    scale = max(1.0, float(np.abs(x).max()))
    np.testing.assert_allclose(y, expected, rtol=tolerance, atol=tolerance * scale)
    g = rng.standard_normal(out_shape).astype(dtype)
    grad_x, grad_lam = call(BACKWARD[nd], g, x, lam, nd_args=args)
    ref_x, ref_lam = ref_backward(g, x, lam, kernel, stride, padding, ceil_mode)
    np.testing.assert_allclose(grad_x, ref_x, rtol=tolerance,
                               atol=tolerance * scale * (1 + np.max(np.abs(lam))))
    assert grad_lam.shape == np.shape(lam) and grad_lam.dtype == dtype
    np.testing.assert_allclose(grad_lam, ref_lam, rtol=tolerance * 10,
                               atol=tolerance * 10 * scale ** 2)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=15)
@given(problem=local_pool_inputs(dtype=np.float64, elements=st.floats(-3, 3), max_kernel=3),
       seed=st.integers(0, 999))
def test_finite_differences(mode, problem, seed):
    x, nd, args = problem
    rng = np.random.default_rng(seed)
    out_shape = SOFT[nd](x, args[0], stride=args[1], padding=args[2], ceil_mode=args[3]).shape
    lam = lam_of(mode, out_shape, x.ndim == nd + 2, rng)
    g = rng.standard_normal(out_shape)
    grad_x, grad_lam = call(BACKWARD[nd], g, x, lam, nd_args=args)
    numeric_x = central_differences(
        lambda v: float(np.sum(call(FORWARD[nd], v, lam, nd_args=args) * g)), x)
    np.testing.assert_allclose(grad_x, numeric_x, rtol=1e-5, atol=1e-6)
    numeric_lam = central_differences(
        lambda v: float(np.sum(call(FORWARD[nd], x, v, nd_args=args) * g)),
        np.asarray(lam, dtype=np.float64))
    np.testing.assert_allclose(grad_lam, numeric_lam, rtol=1e-5, atol=1e-6)


def test_limits():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    # lam = 0: the average over the real cells (padding excluded)
    y0 = npool.maxent_pool2d_forward(x, 0.0, 3, 2, 1)
    np.testing.assert_allclose(y0, reference("maxent_pool2d")[0](x, 0.0, 3, 2, 1), rtol=1e-6,
                               atol=1e-6)
    assert np.isclose(y0[0, 0, 0, 0], x[0, 0, :2, :2].mean())
    # large lam: max pooling
    window_max = np.max(np.stack([x[:, :, i:6:2, j:6:2] for i in range(2) for j in range(2)]),
                        axis=0)
    np.testing.assert_allclose(npool.maxent_pool2d_forward(x, 1e4, 2), window_max, rtol=1e-6)
    # lam = 1: SoftPool, bit for bit (the same kernel)
    for nd in (1, 2, 3):
        v = rng.standard_normal((2, 3) + (6,) * nd)
        np.testing.assert_array_equal(FORWARD[nd](v, 1.0, 3, 2, 1), SOFT[nd](v, 3, 2, 1))
        np.testing.assert_array_equal(FORWARD[nd](v, np.ones((3,) + (1,) * nd), 2),
                                      SOFT[nd](v, 2))
        g = rng.standard_normal(SOFT[nd](v, 2).shape)
        soft_backward = getattr(npool, f"soft_pool{nd}d_backward")
        np.testing.assert_array_equal(BACKWARD[nd](g, v, 1.0, 2)[0], soft_backward(g, v, 2))


def test_threads_do_not_change_a_bit():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 9, 9))
    lam = rng.uniform(0, 2, (2, 5, 1, 1))
    g = rng.standard_normal((2, 5, 7, 7))
    results = []
    for threads in (1, 2, 3):
        npool.set_num_threads(threads)
        results.append(npool.maxent_pool2d_backward(g, x, lam, 3, 1))
    for grad_x, grad_lam in results[1:]:
        np.testing.assert_array_equal(grad_x, results[0][0])
        np.testing.assert_array_equal(grad_lam, results[0][1])


def test_errors():
    x = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"lam of shape \(3, 1\) does not broadcast"):
        npool.maxent_pool2d_forward(x, np.ones((3, 1)), 2)
    with pytest.raises(ValueError, match="does not broadcast"):
        npool.maxent_pool2d_backward(np.zeros((2, 3, 2, 2)), x, np.ones((4, 1, 1)), 2)
    with pytest.raises(TypeError, match="lam must be a real number"):
        npool.maxent_pool2d_forward(x, "1", 2)
    with pytest.raises(TypeError, match="lam must be a real number"):
        npool.maxent_pool2d_forward(x, np.ones(3, complex), 2)
    with pytest.raises(TypeError, match="lam must be a real number"):
        npool.maxent_pool2d_forward(x, True, 2)
