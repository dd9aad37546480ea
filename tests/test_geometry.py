"""The local pools' window geometry: padding as an int, per-axis ints, per-axis (before, after)
pairs, or TensorFlow's "same"/"valid", dilation, and adaptive output sizes - their rules, their
errors, and agreement with another framework's pooling over the same windows: Max-Ent pooling
is the average over a window's real cells at lam = 0 and its maximum as lam grows, so every
geometry is checked against ``jax.lax.reduce_window`` (sum / count, and max), PyTorch's
``max_pool``/``adaptive_avg_pool``/``adaptive_max_pool`` and Keras' pooling layers with
``padding="same"``, forward and gradient. SoftPool's values and
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


def assert_maxent_gpu_matches_cpu(gpu, dtype, seed, windows):
    """For each of ``windows`` (keyword arguments binding Max-Ent's window: its forward and
    backward functions and their window arguments), the CUDA kernels give the CPU kernels'
    results on a (2, 3, 9, 8) input, forward, grad_x and grad_lam, in both memory layouts."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    lam = (np.abs(rng.standard_normal((3, 1, 1))) + 0.2).astype(dtype)
    tolerance = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12)
    for layout in ("contiguous", "channels_last"):
        xl = x if layout == "contiguous" else np.moveaxis(
            np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
        for forward, backward, args, keywords in windows:
            y = forward(xl, lam, *args, **keywords)
            g = rng.standard_normal(y.shape).astype(dtype)
            grad_x, grad_lam = backward(g, xl, lam, *args, **keywords)
            y_gpu = gpu.to_host(forward(gpu.to_device(xl), gpu.to_device(lam), *args,
                                        **keywords))
            gx_gpu, glam_gpu = backward(gpu.to_device(g), gpu.to_device(xl),
                                        gpu.to_device(lam), *args, **keywords)
            np.testing.assert_allclose(y_gpu, y, **tolerance)
            np.testing.assert_allclose(gpu.to_host(gx_gpu), grad_x, **tolerance)
            np.testing.assert_allclose(gpu.to_host(glam_gpu), grad_lam,
                                       **dict(tolerance, atol=1e-5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_gpu_kernels_take_every_geometry(gpu, dtype):
    """The CUDA kernels' general path (dilated windows: per-axis tables uploaded with the call)
    and asymmetric padding give the CPU kernels' results."""
    assert_maxent_gpu_matches_cpu(gpu, dtype, 8, [
        (npool.maxent_pool2d_forward, npool.maxent_pool2d_backward, args, dict(dilation=dilation))
        for args, dilation in (((3, 1, 1), 2), ((2, 2, "same"), (3, 1)),
                               ((3, 2, ((2, 0), (1, 3))), 2), ((2, 1, 0), (1, 2)),
                               ((3, 1, "same"), 1))])


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


# ------------------------------------------------------------------ adaptive output sizes
@pytest.mark.parametrize("length,size,windows", [
    (5, 3, [(0, 2), (1, 4), (3, 5)]), (6, 3, [(0, 2), (2, 4), (4, 6)]),
    (2, 5, [(0, 1), (0, 1), (0, 2), (1, 2), (1, 2)]), (7, 1, [(0, 7)])])
def test_adaptive_windows_are_pytorchs(length, size, windows):
    """Window o of n over L spans [floor(o L / n), ceil((o + 1) L / n))."""
    first, count = _checks.adaptive_tables(length, size)
    assert list(zip(first.tolist(), (first + count).tolist())) == windows
    assert [(w.start, w.stop) for _, (w,) in references.adaptive_windows((length,), size)] == \
        windows


@st.composite
def adaptive_problems(draw):
    nd = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 9 if nd < 3 else 6)) for _ in range(nd))
    size = tuple(draw(st.one_of(st.none(), st.integers(1, n + 3))) for n in spatial)
    x = draw(hnp_arrays((draw(st.integers(1, 2)), draw(st.integers(1, 3))) + spatial))
    return nd, x, size


def hnp_arrays(shape):
    """Distinct values at least 0.01 apart (lam = 1e4 then gives the max to 1e-40)."""
    size = math.prod(shape)
    return st.permutations(range(size)).map(
        lambda p: (np.array(p, np.float64).reshape(shape) - size / 2) / 100)


@settings(max_examples=150, deadline=None)
@given(adaptive_problems())
def test_adaptive_pools_agree_with_pytorchs_adaptive_pools(problem):
    """Max-Ent at lam = 0 is ``adaptive_avg_pool`` and at lam = 1e4 (distinct values)
    ``adaptive_max_pool``, forward and gradient, through the core and npool.torch; adaptive
    SoftPool equals the float64 reference."""
    torch = pytest.importorskip("torch")
    nt = pytest.importorskip("npool.torch")
    nd, x, size = problem
    avg = getattr(torch.nn.functional, f"adaptive_avg_pool{nd}d")
    top = getattr(torch.nn.functional, f"adaptive_max_pool{nd}d")
    forward = getattr(npool, f"adaptive_maxent_pool{nd}d_forward")
    backward = getattr(npool, f"adaptive_maxent_pool{nd}d_backward")
    resolved = tuple(n if o is None else o for n, o in zip(x.shape[2:], size))
    for lam, theirs, tolerance in ((0.0, avg, 1e-13), (1e4, top, 1e-9)):
        xt = torch.from_numpy(x).requires_grad_()
        want = theirs(xt, size if nd > 1 else resolved)  # (1-d: PyTorch takes no None)
        g = np.cos(np.arange(want.numel())).reshape(want.shape)
        want.backward(torch.from_numpy(g))
        y = forward(x, lam, size)
        np.testing.assert_allclose(y, want.detach().numpy(), rtol=tolerance, atol=tolerance)
        grad_x, _ = backward(g, x, lam, size)
        np.testing.assert_allclose(grad_x, xt.grad.numpy(), rtol=tolerance, atol=tolerance)
        xn = torch.from_numpy(x).requires_grad_()
        yn = getattr(nt, f"adaptive_maxent_pool{nd}d")(xn, lam, size)
        yn.backward(torch.from_numpy(g))
        np.testing.assert_allclose(yn.detach().numpy(), y, rtol=1e-15, atol=0)
        np.testing.assert_allclose(xn.grad.numpy(), grad_x, rtol=1e-15, atol=0)
    soft = getattr(npool, f"adaptive_soft_pool{nd}d_forward")(x, size)
    np.testing.assert_allclose(soft, references.REFERENCES[f"adaptive_soft_pool{nd}d"][0](
        x, size), rtol=1e-13, atol=1e-13)


def test_adaptive_sizes_that_divide_run_the_fast_path():
    """Where every output size divides its input's, adaptive windows are regular (kernel =
    stride = L / n): the same bits as the windowed pool."""
    x = np.random.default_rng(1).standard_normal((2, 3, 14, 12, 6))
    np.testing.assert_array_equal(npool.adaptive_soft_pool3d_forward(x, (7, 4, None)),
                                  npool.soft_pool3d_forward(x, (2, 3, 1)))
    g = np.ones((2, 3, 7, 4, 6))
    np.testing.assert_array_equal(npool.adaptive_soft_pool3d_backward(g, x, (7, 4, None)),
                                  npool.soft_pool3d_backward(g, x, (2, 3, 1)))


@pytest.mark.parametrize("size,error,match", [
    (0, ValueError, r"output_size must be >= 1 on every axis"),
    ((3, 0), ValueError, r"output_size must be >= 1"),
    ((3,), ValueError, r"output_size must be an int or a tuple of 2"),
    ((3, 2.5), TypeError, r"output_size must be an int"),
    ((True, 2), TypeError, r"output_size must be an int"),
])
def test_bad_output_sizes_are_refused_naming_them(size, error, match):
    x = np.ones((1, 1, 5, 5))
    with pytest.raises(error, match=match):
        npool.adaptive_soft_pool2d_forward(x, size)
    with pytest.raises(error, match=match):
        npool.adaptive_maxent_pool2d_backward(np.ones((1, 1, 2, 2)), x, 1.0, size)


def test_an_adaptive_output_beyond_memory_is_refused_before_any_allocation():
    """An adaptive output is not bounded by the input: output_size=2**40 over 5 cells would be
    8 TiB. It is a ValueError naming output_size, in the core and the adapters, not an
    out-of-memory kill."""
    match = r"output_size=.*1099511627776.* gives an output of .* more than half this machine"
    with pytest.raises(ValueError, match=match):
        npool.adaptive_soft_pool1d_forward(np.ones((1, 1, 5)), 2 ** 40)
    with pytest.raises(ValueError, match=match):
        npool.adaptive_maxent_pool2d_backward(np.ones((1, 1, 1, 1)), np.ones((1, 1, 5, 5)),
                                              1.0, (1, 2 ** 40))
    torch = pytest.importorskip("torch")
    nt = pytest.importorskip("npool.torch")
    with pytest.raises(ValueError, match=match):
        nt.adaptive_soft_pool1d(torch.ones(1, 1, 5), 2 ** 40)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_gpu_kernels_take_adaptive_windows(gpu, dtype):
    """Adaptive windows on the GPU (the general path's tables; the fast path where the sizes
    divide) give the CPU kernels' results."""
    assert_maxent_gpu_matches_cpu(gpu, dtype, 9, [
        (npool.adaptive_maxent_pool2d_forward, npool.adaptive_maxent_pool2d_backward, (size,), {})
        for size in ((4, 3), (9, None), (12, 5), (3, 4), 1)])


# ------------------------------------------------------------------ npool.torch
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_npool_torch_dilation_agrees_with_pytorchs_max_pool(data):
    """npool.torch's dilated windows at lam = 1e4 (distinct values) are ``max_pool{nd}d``'s
    with the same dilation, padding and ceil_mode, forward and gradient."""
    torch = pytest.importorskip("torch")
    nt = pytest.importorskip("npool.torch")
    nd = data.draw(st.integers(1, 3))
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(data.draw(st.integers(0, k // 2)) for k in kernel)
    ceil_mode = data.draw(st.booleans())
    spatial = tuple(data.draw(st.integers((k - 1) * d + 1, (k - 1) * d + 5))
                    for k, d in zip(kernel, dilation))
    x = data.draw(hnp_arrays((2, 2) + spatial))
    args = (kernel, stride, padding, dilation, ceil_mode)
    xt = torch.from_numpy(x).requires_grad_()
    want = getattr(torch.nn.functional, f"max_pool{nd}d")(xt, *args)
    g = torch.from_numpy(np.sin(np.arange(want.numel())).reshape(want.shape))
    want.backward(g)
    xn = torch.from_numpy(x).requires_grad_()
    y = getattr(nt, f"maxent_pool{nd}d")(xn, 1e4, kernel, stride, padding, ceil_mode,
                                        dilation=dilation)
    y.backward(g)
    np.testing.assert_allclose(y.detach().numpy(), want.detach().numpy(), atol=1e-9)
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), atol=1e-9)


@pytest.mark.parametrize("padding", ["same", "valid", ((2, 0), (1, 2)), 1])
def test_npool_torch_takes_every_padding_form_and_exports_it(padding):
    """npool.torch takes the core's padding forms ("same"/"valid" as ``nn.Conv2d`` takes them)
    with dilation and adaptive sizes: the core's values and gradients, under torch.compile, and
    in an ONNX export (the decomposition) run by onnxruntime."""
    torch = pytest.importorskip("torch")
    nt = pytest.importorskip("npool.torch")
    x = np.random.default_rng(4).standard_normal((2, 3, 9, 8))
    want = npool.soft_pool2d_forward(x, 3, 2, padding, dilation=(1, 2))
    g = np.ones_like(want)
    xt = torch.from_numpy(x).requires_grad_()
    y = nt.soft_pool2d(xt, 3, 2, padding, dilation=(1, 2))
    y.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-15)
    np.testing.assert_allclose(xt.grad.numpy(),
                               npool.soft_pool2d_backward(g, x, 3, 2, padding, dilation=(1, 2)),
                               rtol=1e-14)
    compiled = torch.compile(lambda v: nt.soft_pool2d(v, 3, 2, padding, dilation=(1, 2)),
                             fullgraph=True)
    np.testing.assert_allclose(compiled(torch.from_numpy(x)).numpy(), want, rtol=1e-15)
    pytest.importorskip("onnxruntime")
    import onnxruntime

    class Pool(torch.nn.Module):
        def forward(self, v):
            return nt.adaptive_soft_pool2d(nt.soft_pool2d(v, 3, 2, padding, dilation=(1, 2)),
                                           (3, None))

    x32 = x.astype(np.float32)
    program = torch.onnx.export(Pool(), (torch.from_numpy(x32),), dynamo=True, verbose=False)
    assert not any("npool" in node.domain for node in program.model_proto.graph.node)
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    got, = session.run(None, {session.get_inputs()[0].name: x32})
    expected = npool.adaptive_soft_pool2d_forward(
        npool.soft_pool2d_forward(x32, 3, 2, padding, dilation=(1, 2)), (3, None))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ Keras
@pytest.mark.parametrize("spatial,pool,strides", [((7, 8), 3, 2), ((9, 6), (2, 3), (2, 1)),
                                                  ((5, 5), 3, 1)])
def test_keras_same_agrees_with_keras_pooling_layers(spatial, pool, strides):
    """MaxEntPooling2D(padding="same") at lam = 0 is ``AveragePooling2D(padding="same")``
    (the mean of the real cells) and at lam = 1e4 ``MaxPooling2D(padding="same")``, forward
    and gradient (Keras' backend here: TensorFlow; the other backends run the same layer
    through npool.jax and npool.torch, whose "same" the tests above check)."""
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras runs on another backend in this process")
    nk = pytest.importorskip("npool.keras")
    x = tf.constant(np.random.default_rng(2).permutation(
        2 * 3 * math.prod(spatial)).reshape((2,) + spatial + (3,)).astype(np.float64) / 7)
    for lam, theirs in ((0.0, keras.layers.AveragePooling2D), (1e4, keras.layers.MaxPooling2D)):
        ours = nk.MaxEntPooling2D(pool, strides, padding="same", lam=lam, dtype="float64")
        reference = theirs(pool, strides, padding="same", dtype="float64")
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y, want = ours(x), reference(x)
            weights = tf.cos(tf.reshape(tf.range(tf.size(y), dtype=tf.float64), y.shape))
            loss, loss_want = tf.reduce_sum(y * weights), tf.reduce_sum(want * weights)
        np.testing.assert_allclose(y.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(tape.gradient(loss, x).numpy(),
                                   tape.gradient(loss_want, x).numpy(), rtol=1e-12, atol=1e-12)
