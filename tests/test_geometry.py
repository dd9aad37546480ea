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
from hypothesis import assume, given, settings
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
    """(x, kernel, stride, padding, dilation, jax's (before, after) pairs) with distinct cells
    (no ties: max pooling's gradient is then one cell per window); every window holds a
    cell."""
    nd = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd)) if draw(st.booleans()) \
        else (1,) * nd
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    padding, pairs = draw(padding_args(kernel))
    low = [1 if pairs is None else max(1, e - b - a)
           for e, (b, a) in zip(extent, pairs or [(0, 0)] * nd)]
    spatial = tuple(draw(st.integers(lo, e + 4)) for lo, e in zip(low, extent))
    assume(all(w.stop > w.start for _, window in references.windows(
        spatial, kernel, stride, padding, False, dilation) for w in window))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) + spatial
    values = np.random.default_rng(draw(st.integers(0, 2 ** 16))).permutation(
        math.prod(shape)).reshape(shape).astype(np.float64)
    jax_padding = ((0, 0), (0, 0)) + tuple(references.padding_pairs(spatial, kernel, stride,
                                                                    padding, dilation))
    return values, kernel, stride, padding, dilation, jax_padding


def _maxent(x, lam, kernel, stride, padding, dilation):
    nd = len(kernel)
    forward, backward = npool._op_table.core_functions(f"maxent_pool{nd}d")
    y = forward(x, lam, kernel, stride, padding, dilation=dilation)
    g = np.cos(np.arange(y.size, dtype=np.float64)).reshape(y.shape)
    return y, g, backward(g, x, lam, kernel, stride, padding, dilation=dilation)[0]


@settings(max_examples=200, deadline=None)
@given(geometries())
def test_every_geometry_agrees_with_jax_reduce_window(problem):
    """lam = 0: the mean over each window's real cells (reduce_window's sum over count of real
    cells); lam = 1e4 over distinct integers: the maximum, gradient on the window's largest
    cell (reduce_window max's); over the same (before, after) padding and window dilation."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    x, kernel, stride, padding, dilation, pads = problem
    window, strides = (1, 1) + kernel, (1, 1) + stride
    dilated = (1, 1) + dilation
    with jax.enable_x64(True) if hasattr(jax, "enable_x64") else \
            __import__("jax.experimental", fromlist=["enable_x64"]).enable_x64():
        def average(v):
            total = jax.lax.reduce_window(v, 0.0, jax.lax.add, window, strides, pads,
                                          window_dilation=dilated)
            count = jax.lax.reduce_window(jnp.ones_like(v), 0.0, jax.lax.add, window, strides,
                                          pads, window_dilation=dilated)
            return total / count

        def maximum(v):
            return jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, window, strides, pads,
                                         window_dilation=dilated)

        for lam, pool in ((0.0, average), (1e4, maximum)):
            y, g, grad = _maxent(x, lam, kernel, stride, padding, dilation)
            want, pullback = jax.vjp(pool, jnp.asarray(x))
            assert y.shape == want.shape
            np.testing.assert_allclose(y, np.asarray(want), rtol=1e-13, atol=1e-13)
            if pool is maximum and dilated != (1,) * len(dilated):
                # JAX has no VJP of a dilated max: the float64 reference's instead
                want_grad = references.maxent_pool_backward(len(kernel))(
                    g, x, lam, kernel, stride, padding, dilation=dilation)[0]
            else:
                want_grad = np.asarray(pullback(jnp.asarray(g))[0])
            np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-13)


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


def test_dilation_errors_name_it():
    with pytest.raises(ValueError, match=r"dilation=\(3,\) steps over every cell"):
        npool.soft_pool1d_forward(np.ones((1, 1, 2)), 2, 1, ((1, 1),), dilation=3)
    with pytest.raises(ValueError, match="smaller than the dilated window"):
        npool.soft_pool1d_forward(np.ones((1, 1, 4)), 3, dilation=2)
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        npool.soft_pool2d_forward(np.ones((1, 1, 4, 4)), 2, dilation=0)
    with pytest.raises(TypeError, match="dilation must be an int"):
        npool.soft_pool2d_forward(np.ones((1, 1, 4, 4)), 2, dilation=1.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_gpu_kernels_take_every_geometry(gpu, dtype):
    """The CUDA kernels' general path (dilated windows: per-axis tables uploaded with the call)
    and asymmetric padding give the CPU kernels' results, forward, grad_x and grad_lam, in both
    memory layouts."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    lam = (np.abs(rng.standard_normal((3, 1, 1))) + 0.2).astype(dtype)
    tolerance = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12)
    for layout in ("contiguous", "channels_last"):
        xl = x if layout == "contiguous" else np.moveaxis(
            np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
        for args, dilation in (((3, 1, 1), 2), ((2, 2, "same"), (3, 1)),
                               ((3, 2, ((2, 0), (1, 3))), 2), ((2, 1, 0), (1, 2)),
                               ((3, 1, "same"), 1)):
            y = npool.maxent_pool2d_forward(xl, lam, *args, dilation=dilation)
            g = rng.standard_normal(y.shape).astype(dtype)
            grad_x, grad_lam = npool.maxent_pool2d_backward(g, xl, lam, *args,
                                                            dilation=dilation)
            y_gpu = gpu.to_host(npool.maxent_pool2d_forward(
                gpu.to_device(xl), gpu.to_device(lam), *args, dilation=dilation))
            gx_gpu, glam_gpu = npool.maxent_pool2d_backward(
                gpu.to_device(g), gpu.to_device(xl), gpu.to_device(lam), *args,
                dilation=dilation)
            np.testing.assert_allclose(y_gpu, y, **tolerance)
            np.testing.assert_allclose(gpu.to_host(gx_gpu), grad_x, **tolerance)
            np.testing.assert_allclose(gpu.to_host(glam_gpu), grad_lam,
                                       **dict(tolerance, atol=1e-5))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_npool_jax_takes_dilation(data_format):
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp

    import npool.jax as nj

    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    last = data_format == "channels_last"
    xj = jnp.asarray(x if last else np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    want = npool.soft_pool2d_forward(np.moveaxis(x, -1, 1), 3, 1, "same", dilation=(2, 3))

    def fn(v):
        return nj.soft_pool2d(v, 3, 1, "SAME", data_format=data_format, dilation=(2, 3))

    y, pullback = jax.vjp(jax.jit(fn), xj)
    np.testing.assert_allclose(np.asarray(y), np.moveaxis(want, 1, -1) if last else want,
                               rtol=1e-6, atol=1e-6)
    grad, = pullback(jnp.ones_like(y))
    with nj.portable():
        _, pullback_p = jax.vjp(fn, xj)
        np.testing.assert_allclose(np.asarray(pullback_p(jnp.ones_like(y))[0]),
                                   np.asarray(grad), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spatial,kernel,stride", [((7, 8), (3, 2), (2, 3)),
                                                   ((5, 5), (4, 4), (1, 1)),
                                                   ((9, 4), (2, 3), (3, 1))])
def test_npool_tf_same_agrees_with_tensorflows_own_pooling(spatial, kernel, stride):
    """npool.tf's padding="SAME": Max-Ent at lam = 0 is tf.nn.avg_pool2d's "SAME" (the mean of
    the real cells), at lam = 1e4 over distinct values tf.nn.max_pool2d's, values and
    gradients."""
    tf = pytest.importorskip("tensorflow")
    import npool.tf as ntf

    rng = np.random.default_rng(7)
    x = tf.constant(rng.permutation(2 * 3 * math.prod(spatial)).reshape(
        (2,) + spatial + (3,)).astype(np.float64))
    for lam, pool in ((0.0, tf.nn.avg_pool2d), (1e4, tf.nn.max_pool2d)):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = ntf.maxent_pool2d(x, lam, kernel, stride, "SAME")
            want = pool(x, kernel, stride, "SAME")
            loss, want_loss = (tf.reduce_sum(tf.sin(v)) for v in (y, want))
        np.testing.assert_allclose(y.numpy(), want.numpy(), rtol=1e-12)
        np.testing.assert_allclose(tape.gradient(loss, x).numpy(),
                                   tape.gradient(want_loss, x).numpy(), rtol=1e-10, atol=1e-12)


def test_npool_tf_takes_dilation():
    """npool.tf's dilation= (tf.nn.pool's dilations): the core's values and gradients, and the
    decomposition's (what SavedModel, XLA and TFLite run) inside npool.tf.portable()."""
    tf = pytest.importorskip("tensorflow")
    import npool.tf as ntf

    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 9, 8, 3))
    xn = np.moveaxis(x, -1, 1)
    want = npool.maxent_pool2d_forward(xn, 0.7, 3, 1, "same", dilation=(2, 3))
    g = np.cos(np.arange(want.size)).reshape(want.shape)
    want_grad = npool.maxent_pool2d_backward(g, xn, 0.7, 3, 1, "same", dilation=(2, 3))[0]
    xt = tf.constant(x)
    for portable in (False, True):
        with (ntf.portable() if portable else __import__("contextlib").nullcontext()):
            with tf.GradientTape() as tape:
                tape.watch(xt)
                y = ntf.maxent_pool2d(xt, 0.7, 3, 1, "SAME", dilation=(2, 3))
            grad = tape.gradient(y, xt, output_gradients=tf.constant(np.moveaxis(g, 1, -1)))
        np.testing.assert_allclose(y.numpy(), np.moveaxis(want, 1, -1), rtol=1e-12)
        np.testing.assert_allclose(grad.numpy(), np.moveaxis(want_grad, 1, -1), rtol=1e-10,
                                   atol=1e-12)
