"""The local pools' window geometry: padding as an int, per-axis ints, per-axis (before, after)
pairs, or TensorFlow's "same"/"valid" - its rules, its errors, and agreement with another
framework's pooling over the same windows: Max-Ent pooling is the average over a window's
real cells at lam = 0 and its maximum as lam grows, so every geometry is checked against
``jax.lax.reduce_window`` (sum / count, and max), forward and gradient. SoftPool's values and
gradients against the float64 references for every form are tests/test_soft_pool.py's and
tests/test_maxent.py's (``local_pool_inputs`` draws every form)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npool
from npool import _checks
from npool.testing import references
from npool.testing.strategies import padding_args


@pytest.mark.parametrize("length,kernel,stride", [(7, 3, 2), (8, 3, 2), (5, 1, 3), (4, 4, 1),
                                                  (1, 3, 1), (10, 2, 3), (6, 5, 4)])
def test_same_gives_ceil_of_length_over_stride_outputs(length, kernel, stride):
    """TensorFlow's rule: ceil(L / s) outputs, max((ceil(L/s) - 1) s + k - L, 0) padding cells,
    the smaller half before."""
    total = max((math.ceil(length / stride) - 1) * stride + kernel - length, 0)
    assert _checks.same_padding(length, kernel, stride) == (total // 2, total - total // 2)
    window = _checks.WindowArgs(1, kernel, stride, "same", False, spatial=(length,))
    assert window.output_size((length,)) == (math.ceil(length / stride),)
    assert (window.padding, window.padding_after) == ((total // 2,), (total - total // 2,))
    y = npool.soft_pool1d_forward(np.ones((1, 1, length)), kernel, stride, "SAME")
    assert y.shape == (1, 1, math.ceil(length / stride))


def test_valid_and_pairs_and_ints_mean_what_they_say():
    x = np.arange(2 * 3 * 9 * 7, dtype=np.float64).reshape(2, 3, 9, 7)
    base = npool.soft_pool2d_forward(x, 3, 2, 1)
    np.testing.assert_array_equal(npool.soft_pool2d_forward(x, 3, 2, ((1, 1), (1, 1))), base)
    np.testing.assert_array_equal(npool.soft_pool2d_forward(x, 3, 2, "valid"),
                                  npool.soft_pool2d_forward(x, 3, 2, 0))
    # (before, after) = (2, 0): the windows start two cells earlier than without padding
    y = npool.soft_pool2d_forward(x, 3, 2, ((2, 0), (0, 2)))
    assert y.shape == (2, 3, 5, 4)
    np.testing.assert_allclose(y[..., 1:, :3], npool.soft_pool2d_forward(x, 3, 2, 0)[..., :, :],
                               rtol=1e-15)


@pytest.mark.parametrize("padding,error,match", [
    (((3, 0), (0, 0)), ValueError, "padding must be less than kernel_size on each side"),
    (((0, 0),), ValueError, "padding as pairs must be 2"),
    (((0, 0), (0, 1, 2)), ValueError, "padding as pairs must be 2"),
    ("full", ValueError, "padding must be 'same', 'valid'"),
    (2, ValueError, "padding must be at most half of kernel_size"),
    (((0, -1), (0, 0)), ValueError, "padding must be >= 0"),
    (((0, 1.5), (0, 0)), TypeError, "padding must be an int"),
])
def test_bad_padding_is_refused_naming_it(padding, error, match):
    with pytest.raises(error, match=match):
        npool.soft_pool2d_forward(np.ones((1, 1, 5, 5)), 3, 1, padding)


def test_adapters_of_symmetric_padding_refuse_the_other_forms_clearly():
    window = _checks.WindowArgs(2, 3, 1, ((1, 0), (0, 0)), False)
    with pytest.raises(ValueError, match="npool.tf takes padding as an int"):
        window.require_symmetric("npool.tf")
    assert _checks.WindowArgs(2, 3, 1, "VALID", False).require_symmetric("npool.tf")
    with pytest.raises(ValueError, match="npool.keras takes padding"):
        _checks.WindowArgs(2, 3, 1, "same", False).require_symmetric("npool.keras")


@st.composite
def geometries(draw):
    """(x, kernel, stride, padding, jax's (before, after) pairs or "SAME") with distinct cells
    (no ties: max pooling's gradient is then one cell per window)."""
    nd = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    padding, pairs = draw(padding_args(kernel))
    low = [1 if pairs is None else max(1, k - b - a)
           for k, (b, a) in zip(kernel, pairs or [(0, 0)] * nd)]
    spatial = tuple(draw(st.integers(lo, k + 4)) for lo, k in zip(low, kernel))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) + spatial
    values = np.random.default_rng(draw(st.integers(0, 2 ** 16))).permutation(
        math.prod(shape)).reshape(shape).astype(np.float64)
    jax_padding = ((0, 0), (0, 0)) + tuple(references.padding_pairs(spatial, kernel, stride,
                                                                    padding))
    return values, kernel, stride, padding, jax_padding


def _maxent(x, lam, kernel, stride, padding):
    nd = len(kernel)
    forward, backward = npool._op_table.core_functions(f"maxent_pool{nd}d")
    y = forward(x, lam, kernel, stride, padding)
    g = np.cos(np.arange(y.size, dtype=np.float64)).reshape(y.shape)
    return y, g, backward(g, x, lam, kernel, stride, padding)[0]


@settings(max_examples=150, deadline=None)
@given(geometries())
def test_every_padding_form_agrees_with_jax_reduce_window(problem):
    """lam = 0: the mean over each window's real cells (reduce_window's sum over count of real
    cells); lam = 1e4 over distinct integers: the maximum, gradient on the window's largest
    cell (reduce_window max's); over the same (before, after) padding."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    x, kernel, stride, padding, pads = problem
    window, strides = (1, 1) + kernel, (1, 1) + stride
    with jax.enable_x64(True) if hasattr(jax, "enable_x64") else \
            __import__("jax.experimental", fromlist=["enable_x64"]).enable_x64():
        def average(v):
            total = jax.lax.reduce_window(v, 0.0, jax.lax.add, window, strides, pads)
            count = jax.lax.reduce_window(jnp.ones_like(v), 0.0, jax.lax.add, window, strides,
                                          pads)
            return total / count

        def maximum(v):
            return jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, window, strides, pads)

        for lam, pool in ((0.0, average), (1e4, maximum)):
            y, g, grad = _maxent(x, lam, kernel, stride, padding)
            want, pullback = jax.vjp(pool, jnp.asarray(x))
            assert y.shape == want.shape
            np.testing.assert_allclose(y, np.asarray(want), rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(grad, np.asarray(pullback(jnp.asarray(g))[0]),
                                       rtol=1e-12, atol=1e-13)


def test_same_agrees_with_jax_reduce_window_same():
    """jax.lax.reduce_window's own "SAME" (TensorFlow's rule) gives the same windows."""
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(4)
    for spatial, kernel, stride in (((7, 8), (3, 2), (2, 3)), ((5, 5), (4, 4), (1, 1)),
                                    ((9, 4), (2, 3), (3, 1))):
        x = rng.permutation(2 * 3 * math.prod(spatial)).reshape((2, 3) + spatial).astype(
            np.float32)
        want = jax.lax.reduce_window(x, -np.inf, jax.lax.max, (1, 1) + kernel,
                                     (1, 1) + stride, "SAME")
        y = npool.maxent_pool2d_forward(x, 1e3, kernel, stride, "same")
        np.testing.assert_array_equal(y, np.asarray(want))


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 2)), 1])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_npool_jax_takes_every_padding_form(padding, data_format):
    """npool.jax spells padding as flax.linen.max_pool does ("SAME", "VALID", pairs): the
    kernels and the portable decomposition give the core's values and gradients."""
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp

    import npool.jax as nj

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, 7, 3)).astype(np.float32)
    lam = np.asarray([0.5, 1.0, 2.0], np.float32)
    last = data_format == "channels_last"
    xj = x if last else np.ascontiguousarray(np.moveaxis(x, -1, 1))
    lam_j = lam if last else lam[:, None, None]
    xn = np.moveaxis(x, -1, 1)

    def to_jax(a):
        return np.moveaxis(a, 1, -1) if last else a

    for fn, core in ((lambda v: nj.soft_pool2d(v, 3, 2, padding, data_format=data_format),
                      lambda: (npool.soft_pool2d_forward(xn, 3, 2, padding),)),
                     (lambda v: nj.maxent_pool2d(v, lam_j, 3, 2, padding,
                                                 data_format=data_format),
                      lambda: (npool.maxent_pool2d_forward(xn, lam[:, None, None], 3, 2,
                                                           padding),))):
        want, = core()
        y, pullback = jax.vjp(jax.jit(fn), jnp.asarray(xj))
        np.testing.assert_allclose(np.asarray(y), to_jax(want), rtol=1e-6, atol=1e-6)
        g = jnp.ones_like(y)
        grad, = pullback(g)
        with nj.portable():
            y_p, pullback_p = jax.vjp(fn, jnp.asarray(xj))
            grad_p, = pullback_p(g)
        np.testing.assert_allclose(np.asarray(y_p), np.asarray(y), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(grad_p), np.asarray(grad), rtol=1e-4, atol=1e-5)
