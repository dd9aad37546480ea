"""npool.jax's GPU route: on a CUDA backend the windowed pools run npool's CUDA kernels through
XLA's FFI on XLA's stream (npool/jax/_ffi.py, the CUDA handler of src/cpu/_xla_ffi.pyx).

Without a GPU, the route is checked on the emulated device (tests/cuda_emulation.py): the JAX
program runs on XLA's CPU backend, but npool's handler hands XLA's buffers to the GPU route's
dispatch - ``DeviceArray`` views carrying a stream - so that npool's CUDA kernels (compiled for
the host) compute every result in place, through the same targets, views, vmap folding and
``out=`` writes as on a GPU. What only a GPU shows (XLA's CUDA registration, the stream
XLA_FFI_Stream_Get returns) is tools/gpu's; here also: the CUDA handler's refusal where XLA has
no stream, and which ops a GPU backend routes where."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import npool  # noqa: E402
import npool.jax as nj  # noqa: E402
from npool.jax import _ffi, _ops  # noqa: E402

pytestmark = pytest.mark.skipif(not _ffi.available(), reason="npool's XLA FFI handler is not "
                                "registered (an npool built without it, or another jaxlib)")

XLA_STREAM = 0x5EED  # the CUstream the emulated route reports


@pytest.fixture(scope="module")
def device(emulation_library):
    """The emulated GPU behind npool._cuda, and npool's FFI handler dispatching XLA's buffers to
    the GPU route (as the CUDA handler does, with XLA_STREAM)."""
    from gpu_backends import Emulated

    from npool._cpu import _xla_ffi

    backend = Emulated(emulation_library)
    _xla_ffi.set_dispatch(lambda inputs, results, attributes:
                          _ffi._dispatch(inputs, results, attributes, stream=XLA_STREAM))
    try:
        with backend:
            yield backend.device
    finally:
        _xla_ffi.set_dispatch(_ffi._dispatch)


def _gpu_core(backend_device, function, *arrays, **kwargs):
    """npool's GPU core called directly on the emulated device (host arrays through
    __cuda_array_interface__), the results read back."""
    from cuda_emulation import HostArray

    results = function(*(HostArray(np.ascontiguousarray(a)) if isinstance(a, np.ndarray)
                         else a for a in arrays), **kwargs)
    results = results if isinstance(results, tuple) else (results,)
    return tuple(np.array(r.array if isinstance(r, HostArray) else r.get()) for r in results)


rng = np.random.default_rng(3)


def _data(shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


CASES = {  # name: (npool.jax call, core forward, core backward, extra core arguments)
    "soft_pool2d 2x2/2": (lambda x: nj.soft_pool2d(x, 2), "soft_pool2d", (2,)),
    "soft_pool2d 3x3/1 pad 1": (lambda x: nj.soft_pool2d(x, 3, 1, 1), "soft_pool2d", (3, 1, 1)),
    "soft_pool1d 3/2 ceil": (lambda x: nj.soft_pool1d(x, 3, 2, 0, True), "soft_pool1d",
                             (3, 2, 0, True)),
    "maxent_pool2d lam 0.7": (lambda x: nj.maxent_pool2d(x, 0.7, 2), "maxent_pool2d",
                              (0.7, 2)),
    "soft_pool2d 3x3/2 same dilation 2": (
        lambda x: nj.soft_pool2d(x, 3, 2, "SAME", dilation=2), "soft_pool2d", (3, 2, "same")),
    "adaptive_soft_pool2d (4, 5)": (lambda x: nj.adaptive_soft_pool2d(x, (4, 5)),
                                    "adaptive_soft_pool2d", ((4, 5),)),
    "adaptive_maxent_pool2d 0.7 (3, None)": (
        lambda x: nj.adaptive_maxent_pool2d(x, 0.7, (3, None)), "adaptive_maxent_pool2d",
        (0.7, (3, None))),
}
SHAPES = {"soft_pool1d": (2, 9, 3), "soft_pool2d": (2, 7, 6, 3), "maxent_pool2d": (2, 6, 6, 3),
          "adaptive_soft_pool2d": (2, 7, 6, 3), "adaptive_maxent_pool2d": (2, 7, 6, 3)}
# the core's keyword arguments of a case (its window's dilation)
KEYWORDS = {"soft_pool2d 3x3/2 same dilation 2": {"dilation": 2}}


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name", CASES)
def test_the_windowed_pools_run_the_cuda_kernels_on_xlas_buffers(device, name, data_format):
    """Forward and gradient through jit: the emulated CUDA kernels' bits (npool's GPU core on
    the same arrays), in XLA's buffers, every launch ordered after XLA's stream."""
    call, op, args = CASES[name]
    last = data_format == "channels_last"
    x = _data(SHAPES[op])
    if not last:
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    fn = (lambda v: call(v)) if last else (
        lambda v: jnp.moveaxis(call(jnp.moveaxis(v, 1, -1)), -1, 1))
    if not last:  # the op's own channels-first form: no transposes around the kernels
        fn = {"soft_pool2d 2x2/2": lambda v: nj.soft_pool2d(v, 2, data_format=data_format),
              "soft_pool2d 3x3/1 pad 1": lambda v: nj.soft_pool2d(v, 3, 1, 1,
                                                                   data_format=data_format),
              "soft_pool1d 3/2 ceil": lambda v: nj.soft_pool1d(v, 3, 2, 0, True,
                                                               data_format=data_format),
              "maxent_pool2d lam 0.7": lambda v: nj.maxent_pool2d(v, 0.7, 2,
                                                                  data_format=data_format),
              "soft_pool2d 3x3/2 same dilation 2": lambda v: nj.soft_pool2d(
                  v, 3, 2, "SAME", data_format=data_format, dilation=2),
              "adaptive_soft_pool2d (4, 5)": lambda v: nj.adaptive_soft_pool2d(
                  v, (4, 5), data_format=data_format),
              "adaptive_maxent_pool2d 0.7 (3, None)": lambda v: nj.adaptive_maxent_pool2d(
                  v, 0.7, (3, None), data_format=data_format),
              }[name]
    sessions = len(device.sessions)
    y = jax.jit(fn)(x)
    g = _data(y.shape)
    grad = np.asarray(jax.jit(lambda v, c: jax.vjp(fn, v)[1](c)[0])(x, g))
    ran = device.sessions[sessions:]
    xn = np.moveaxis(x, -1, 1) if last else x
    gn = np.moveaxis(g, -1, 1) if last else g
    forward, backward = npool._op_table.core_functions(op)
    keywords = KEYWORDS.get(name, {})
    want_y, = _gpu_core(device, forward, xn, *args, **keywords)
    want_grad = _gpu_core(device, backward, gn, xn, *args, **keywords)[0]
    to_jax = (lambda a: np.moveaxis(a, 1, -1)) if last else (lambda a: a)
    np.testing.assert_array_equal(np.asarray(y), to_jax(want_y))
    np.testing.assert_array_equal(grad, to_jax(want_grad))
    # and they agree with the CPU kernels
    np.testing.assert_allclose(np.asarray(y), to_jax(forward(xn, *args, **keywords)),
                               rtol=2e-6, atol=1e-6)
    # the forward, and the gradient's backward (XLA drops the unused forward inside it): each
    # after XLA's stream
    assert len(ran) == 2 and all(streams and set(streams) == {XLA_STREAM} for streams in ran)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("lam_shape", ["(C,)", "(N, 1, 1, C)"])
def test_maxent_with_a_lam_array_writes_dlam_into_xlas_buffer(device, data_format, lam_shape):
    last = data_format == "channels_last"
    x = _data((2, 6, 4, 3))
    lam = (np.abs(_data((3,))) + 0.2) if lam_shape == "(C,)" else \
        (np.abs(_data((2, 1, 1, 3))) + 0.2)
    if not last:
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
        lam = lam if lam.ndim == 1 else np.ascontiguousarray(np.moveaxis(lam, -1, 1))
        lam = lam[:, None, None] if lam.ndim == 1 else lam

    def fn(v, la):
        return nj.maxent_pool2d(v, la, 2, data_format=data_format)

    y, pullback = jax.vjp(jax.jit(fn), x, lam)
    g = _data(y.shape)
    grad_x, grad_lam = jax.jit(lambda v, la, c: jax.vjp(fn, v, la)[1](c))(x, lam, g)
    with npool.jax.portable():  # the decomposition's autodiff, in float64 terms close
        _, reference = jax.vjp(fn, x, lam)
        ref_x, ref_lam = reference(g)
    np.testing.assert_allclose(np.asarray(grad_x), np.asarray(ref_x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad_lam), np.asarray(ref_lam), rtol=1e-4, atol=1e-4)
    assert grad_lam.shape == lam.shape


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=str)
def test_half_precision_on_the_gpu_route(device, dtype):
    x = jnp.asarray(_data((2, 6, 6, 3)), dtype)
    y = jax.jit(lambda v: nj.soft_pool2d(v, 2))(x)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(nj.soft_pool2d(v, 2).astype(jnp.float32))))(x)
    assert y.dtype == dtype and grad.dtype == dtype
    forward, backward = npool._op_table.core_functions("soft_pool2d")
    xn = np.moveaxis(np.asarray(x), -1, 1)
    want_y, = _gpu_core(device, forward, xn, 2)
    want_grad = _gpu_core(device, backward, np.ones(want_y.shape, want_y.dtype), xn, 2)[0]
    np.testing.assert_array_equal(np.asarray(y), np.moveaxis(want_y, 1, -1))
    np.testing.assert_array_equal(np.asarray(grad), np.moveaxis(want_grad, 1, -1))


def test_vmap_folds_into_the_batch_or_loops_without_copies(device):
    """vmap over x folds the vmapped axis into the batch (one launch per kernel); a cotangent
    vmapped over an unbatched x (jax.jacrev's pattern) would need a broadcast copy: the GPU
    route runs the kernels once per vmapped element instead."""
    x = _data((2, 4, 4, 3))
    xs = _data((3, 2, 4, 4, 3))
    launches = len(device.launches)
    ys = jax.jit(jax.vmap(lambda v: nj.soft_pool2d(v, 2)))(xs)
    assert len(device.launches) - launches == 1
    with npool.jax.portable():
        np.testing.assert_allclose(np.asarray(ys), np.asarray(
            jax.vmap(lambda v: nj.soft_pool2d(v, 2))(xs)), rtol=2e-6, atol=1e-6)
    y, pullback = jax.vjp(lambda v: nj.soft_pool2d(v, 2), x)
    gs = _data((5,) + y.shape)
    launches = len(device.launches)
    grads = jax.jit(jax.vmap(lambda c: pullback(c)[0]))(gs)
    assert len(device.launches) - launches == 5
    for g, grad in zip(gs, np.asarray(grads)):
        np.testing.assert_array_equal(grad, np.asarray(pullback(g)[0]))


def test_a_target_that_does_not_write_its_result_in_place_is_an_error(device):
    """The GPU route makes no copies: a target must write every result into XLA's buffer."""
    def returns_its_own(a, out):
        return (a,)

    x = jnp.ones((2, 3), jnp.float32)
    with pytest.raises(Exception, match="was not written into XLA's buffer on the GPU route"):
        jax.block_until_ready(jax.jit(lambda v: _ffi.call(
            returns_its_own, (jax.ShapeDtypeStruct((2, 3), jnp.float32),), v,
            vmap_method="sequential"))(x))


def test_device_views_of_xlas_buffers():
    """XLA's buffers as DeviceArrays: C-contiguous, on XLA's stream (its default stream, 0, as
    the interface's 1), empty ones without an address."""
    a = _ffi._device_array((0x1000, 11, (2, 3, 4)), XLA_STREAM)
    assert (a.ptr, a.shape, a.strides, a.dtype, a.stream) == \
        (0x1000, (2, 3, 4), (12, 4, 1), np.dtype(np.float32), XLA_STREAM)
    assert _ffi._device_array((0x1000, 16, (2,)), 0).stream == 1
    assert _ffi._device_array((0x1000, 16, (2,)), 0).dtype == np.dtype(jnp.bfloat16)
    assert _ffi._device_array((0x1000, 12, (0, 3)), 7).ptr == 0
    cai = _ops._to_npool(a, True).__cuda_array_interface__
    assert cai["shape"] == (2, 4, 3) and cai["strides"] == (48, 4, 16)
    assert cai["stream"] == XLA_STREAM and cai["data"] == (0x1000, False)
    with pytest.raises(TypeError, match="no NumPy dtype"):
        _ffi._device_array((0x1000, 99, (2,)), 1)


def test_the_cuda_handler_refuses_a_call_without_a_stream():
    """XLA's CPU backend has no stream to give: npool's CUDA handler, registered there under a
    test name, returns XLA's error with what npool was doing (nothing of the target runs)."""
    from npool._cpu import _xla_ffi

    name = "npool_test_cuda_handler_on_cpu"
    jax.ffi.register_ffi_target(name, _xla_ffi.cuda_handler(), platform="cpu")
    call = jax.ffi.ffi_call(name, jax.ShapeDtypeStruct((2,), jnp.float32),
                            vmap_method="sequential")
    with pytest.raises(Exception, match="npool: XLA gave no CUDA stream for this call"):
        jax.block_until_ready(jax.jit(lambda v: call(v, call="none"))(jnp.ones(2)))


def test_a_gpu_backend_routes_the_windowed_pools_to_the_cuda_target(monkeypatch):
    """On a CUDA backend with the route available, SoftPool and Max-Ent lower to npool's CUDA
    target and the other ops to standard JAX operations; without the route (no PyCUDA), all
    of them to standard operations. (Lowered only: this machine has no CUDA backend.)"""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    x = jnp.ones((2, 4, 4, 3))
    monkeypatch.setattr(_ffi, "_registration", {"gpu": True})
    assert nj.uses_kernels()
    for fn in (lambda v: nj.soft_pool2d(v, 2), lambda v: nj.maxent_pool2d(v, 0.5, 2),
               lambda v: nj.maxent_pool2d(v, jnp.ones(3), 2)):
        for traced in (jax.jit(fn), jax.jit(jax.grad(lambda v: jnp.sum(fn(v))))):
            text = traced.lower(x).as_text()
            assert "custom_call @npool_cuda_kernels" in text and "npool_cpu_kernels" not in text
    for fn in (lambda v: nj.global_lse_pool(v, 2.0), lambda v: nj.global_kmax_pool(v, k=2)):
        assert "custom_call" not in jax.jit(fn).lower(x).as_text()
    monkeypatch.setattr(_ffi, "_registration", {"gpu": False})
    assert not nj.uses_kernels()
    assert "custom_call" not in jax.jit(lambda v: nj.soft_pool2d(v, 2)).lower(x).as_text()


def test_no_cuda_backend_here_means_no_gpu_route():
    """Where JAX has no CUDA device (this machine), the GPU route is unavailable, silently."""
    import warnings

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU backend is present")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _ffi.available("gpu") is False
    with pytest.raises(ValueError, match="platform must be 'cpu' or 'gpu'"):
        _ffi.available("tpu")


@pytest.mark.skipif(not _ffi.available("gpu"), reason="no JAX CUDA backend with npool's CUDA "
                    "kernels (PyCUDA) here")
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_on_a_real_gpu_the_route_agrees_with_the_decomposition(data_format):
    """A JAX CUDA backend and PyCUDA: the windowed pools lower to npool's CUDA target and agree
    with the decomposition XLA compiles, forward, gradient and vmap."""
    if jax.default_backend() != "gpu":
        pytest.skip("JAX's default backend is not the GPU")
    x = jnp.asarray(_data((4, 16, 12, 8) if data_format == "channels_last" else (4, 8, 16, 12)))
    lam = jnp.asarray(np.abs(_data((8,))) + 0.3)
    lam = lam if data_format == "channels_last" else lam[:, None, None]
    for fn in (lambda v: nj.soft_pool2d(v, 2, data_format=data_format),
               lambda v: nj.soft_pool2d(v, 3, 2, 1, True, data_format=data_format),
               lambda v: nj.maxent_pool2d(v, lam, 2, data_format=data_format)):
        loss = jax.jit(jax.value_and_grad(lambda v: jnp.sum(jnp.sin(fn(v)))))
        assert "npool_cuda_kernels" in jax.jit(fn).lower(x).as_text()
        value, grad = loss(x)
        ys = jax.jit(jax.vmap(fn))(jnp.stack([x, 2 * x]))
        with npool.jax.portable():
            want_value, want_grad = jax.value_and_grad(lambda v: jnp.sum(jnp.sin(fn(v))))(x)
            want_ys = jax.vmap(fn)(jnp.stack([x, 2 * x]))
        np.testing.assert_allclose(float(value), float(want_value), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(np.asarray(ys), np.asarray(want_ys), rtol=1e-5, atol=1e-6)
