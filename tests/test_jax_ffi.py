"""npool.jax's route to the kernels: XLA's foreign function interface (npool/jax/_ffi.py and
the handler src/cpu/_xla_ffi.pyx). The values, gradients and transforms of every op through
this route are tests/test_jax.py's and tests/test_conformance.py's; here: that the route is
taken, writes in place, falls back, reports errors, keys its targets and survives threads."""
import pathlib
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import npool  # noqa: E402
import npool.jax as nj  # noqa: E402
from npool.jax import _ffi  # noqa: E402

pytestmark = pytest.mark.skipif(not _ffi.available(), reason="npool's XLA FFI handler is not "
                                "registered (an npool built without it, or another jaxlib)")

rng = np.random.default_rng(0)
X = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
LAM = np.asarray([0.5, 1.0, 2.0], np.float32)
XS = rng.standard_normal((2, 5, 4)).astype(np.float32)
ASSIGN = rng.random((2, 5, 3)).astype(np.float32)
CENTERS = rng.standard_normal((4, 3)).astype(np.float32)

# one op of each kind of call: a folded pool, a pool with a parameter array (one call per
# vmapped element), a global pool with indices, one with statistics, GeM, a set pool
OPS = {
    "soft_pool2d": (lambda x: nj.soft_pool2d(x, 2), (X,)),
    "soft_pool2d channels_first": (lambda x: nj.soft_pool2d(x, 3, 1, 1,
                                                            data_format="channels_first"),
                                   (np.ascontiguousarray(np.moveaxis(X, -1, 1)),)),
    "maxent_pool2d lam (C,)": (lambda x, la: nj.maxent_pool2d(x, la, 2), (X, LAM)),
    "global_kmax_pool": (lambda x: nj.global_kmax_pool(x, k=3), (X,)),
    "global_lse_pool": (lambda x: nj.global_lse_pool(x, 2.0), (X,)),
    "global_gem_pool": (lambda x, p: nj.global_gem_pool(x, p), (np.abs(X) + 0.1, LAM + 1.0)),
    "netvlad_pool": (nj.netvlad_pool, (XS, ASSIGN, CENTERS)),
}


def _loss(fn):
    return lambda *a: jnp.sum(fn(*a) ** 2)


def _grad(fn, arrays):
    return jax.grad(_loss(fn), argnums=tuple(range(len(arrays))))


@pytest.mark.parametrize("name", OPS)
def test_the_kernels_run_through_npools_ffi_target(name):
    fn, arrays = OPS[name]
    for what, traced in (("forward", jax.jit(fn)), ("gradient", jax.jit(_grad(fn, arrays)))):
        text = traced.lower(*arrays).as_text()
        assert "custom_call @npool_cpu_kernels" in text, f"{name} {what}: no FFI call"
        assert "callback" not in text, f"{name} {what}: a host callback is left"


@pytest.mark.parametrize("name", OPS)
def test_the_fallback_through_pure_callback_gives_the_same_bits(name, monkeypatch):
    fn, arrays = OPS[name]
    y, grads = fn(*arrays), _grad(fn, arrays)(*arrays)
    monkeypatch.setattr(_ffi, "available", lambda: False)
    text = jax.jit(lambda *a: fn(*a)).lower(*arrays).as_text()  # a new trace
    assert "npool_cpu_kernels" not in text and "callback" in text
    y_cb, grads_cb = fn(*arrays), _grad(fn, arrays)(*arrays)
    np.testing.assert_array_equal(np.asarray(y_cb), np.asarray(y))
    for a, b in zip(grads_cb, grads):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _targets_of(traced, arrays):
    keys = re.findall(r'call = "([^"]+)"', traced.lower(*arrays).as_text())
    assert keys
    return [_ffi._targets[k] for k in keys]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_local_pools_write_xlas_result_buffers_in_place(data_format, dtype):
    """The core writes y and grad_x straight into the result buffers (in JAX's axis order,
    through strided views): nothing is copied after the kernel."""
    x = X.astype(dtype) if data_format == "channels_last" else \
        np.ascontiguousarray(np.moveaxis(X, -1, 1)).astype(dtype)

    def fn(v):
        return nj.soft_pool2d(v, 2, data_format=data_format)

    forward, = _targets_of(jax.jit(fn), (x,))
    backward = _targets_of(jax.jit(_grad(fn, (x,))), (x,))[-1]
    y_out = np.empty(np.shape(fn(jnp.asarray(x))), dtype)
    y, = forward(x, out=(y_out,))
    assert np.shares_memory(y, y_out) and np.array_equal(y_out, np.asarray(fn(x)))
    g = rng.standard_normal(y_out.shape).astype(dtype)
    grad_out = np.empty_like(x)
    grad, = backward(g, x, out=(grad_out,))
    assert np.shares_memory(grad, grad_out)
    _, pullback = jax.vjp(fn, jnp.asarray(x))
    np.testing.assert_array_equal(grad_out, np.asarray(pullback(jnp.asarray(g))[0]))


def test_an_error_in_a_kernel_reaches_the_caller_with_npools_message():
    lam = jnp.asarray([0.5, jnp.nan, 1.0], jnp.float32)  # checked when the kernel runs
    with pytest.raises(Exception, match="lam must be finite"):
        jax.block_until_ready(jax.jit(lambda x, la: nj.maxent_pool2d(x, la, 2))(X, lam))


def test_a_target_gets_xlas_inputs_read_only():
    x = jnp.asarray(X)

    def writes_its_input(a, out):
        a[...] = 0
        return (a,)

    with pytest.raises(Exception, match="read-only"):
        jax.block_until_ready(jax.jit(lambda v: _ffi.call(
            writes_its_input, (jax.ShapeDtypeStruct(v.shape, v.dtype),), v,
            vmap_method="sequential")[0])(x))
    np.testing.assert_array_equal(np.asarray(x), X)


def test_target_keys_follow_the_static_values_a_target_closes_over():
    def make(window, last):
        def target(a, out):
            return (npool.soft_pool2d_forward(np.moveaxis(a, -1, 1) if last else a, window),)
        return target

    assert _ffi.target_key(make(2, True)) == _ffi.target_key(make(2, True))
    keys = {_ffi.target_key(make(w, last)) for w in (2, 3, (2, 3)) for last in (True, False)}
    assert len(keys) == 6
    first, second = (lambda a, out: (a + 1,)), (lambda a, out: (a - 1,))  # one line
    assert _ffi.target_key(first) != _ffi.target_key(second)
    array = np.ones(3)
    with pytest.raises(TypeError, match="static"):
        _ffi.target_key(lambda a, out: (a + array,))


def test_repeated_eager_calls_reuse_their_target():
    nj.soft_pool2d(X, 2)
    count = len(_ffi._targets)
    for _ in range(3):
        nj.soft_pool2d(X, 2)
        jax.grad(lambda v: jnp.sum(nj.soft_pool2d(v, 2)))(X)
    jax.grad(lambda v: jnp.sum(nj.soft_pool2d(v, 2)))(X)
    after = len(_ffi._targets)
    for _ in range(3):
        jax.grad(lambda v: jnp.sum(nj.soft_pool2d(v, 2)))(X)
    assert len(_ffi._targets) == after <= count + 1  # + the backward's target


def test_an_empty_batch_goes_through_the_ffi():
    x = np.zeros((0, 8, 8, 3), np.float32)
    y = jax.jit(lambda v: nj.soft_pool2d(v, 2))(x)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(nj.soft_pool2d(v, 2))))(x)
    assert y.shape == (0, 4, 4, 3) and grad.shape == x.shape


def test_threads_run_the_ffi_calls_concurrently_and_correctly():
    fn = jax.jit(jax.value_and_grad(lambda v: jnp.sum(nj.soft_pool2d(v, 2) ** 2)))
    arrays = [rng.standard_normal((4, 16, 16, 8)).astype(np.float32) for _ in range(4)]
    want = [jax.block_until_ready(fn(a)) for a in arrays]
    got = [None] * len(arrays)

    def work(i):
        for _ in range(5):
            got[i] = jax.block_until_ready(fn(arrays[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(arrays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    for (value, grad), (value_want, grad_want) in zip(got, want):
        np.testing.assert_array_equal(np.asarray(value), np.asarray(value_want))
        np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_want))


def test_the_handler_module_imports_nothing_of_jax():
    code = ("import sys, npool, npool._cpu._xla_ffi as h; "
            "assert not any(m == 'jax' or m.startswith(('jax.', 'jaxlib')) for m in sys.modules)"
            ", sorted(m for m in sys.modules if 'jax' in m); print(h.API_VERSION)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_handler_jax_refuses_falls_back_to_pure_callback_with_a_warning(monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("the hander's API version (0.3) is incompatible with the framework's "
                         "API version (0.4)")

    monkeypatch.setattr(jax.ffi, "register_ffi_target", refuse)
    monkeypatch.setattr(_ffi, "_registration", {})
    with pytest.warns(RuntimeWarning, match="XLA FFI API .* to .*pure_callback"):
        assert not _ffi.available()
    text = jax.jit(lambda v: nj.soft_pool2d(v, 2)).lower(X).as_text()
    assert "npool_cpu_kernels" not in text and "callback" in text
    np.testing.assert_array_equal(np.asarray(nj.soft_pool2d(X, 2)),
                                  np.moveaxis(npool.soft_pool2d_forward(
                                      np.moveaxis(X, -1, 1), 2), 1, -1))


def test_large_result_buffers_get_huge_page_advice():
    """XLA's fresh result buffers fault 4 KiB pages one by one on first write (25,000 faults per
    100 MB); npool advises huge pages before its kernels write them, as NumPy does for its own
    arrays. The advice covers only the 2 MiB-aligned part of a buffer."""
    import mmap
    from npool._cpu import _xla_ffi
    setting = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not sys.platform.startswith("linux") or not setting.exists() or \
            "[never]" in setting.read_text():
        pytest.skip("no transparent huge pages here")
    memory = mmap.mmap(-1, 8 << 20)
    address = np.frombuffer(memory, np.uint8).__array_interface__["data"][0]
    assert _xla_ffi.advise_huge_pages(address, 8 << 20)
    assert not _xla_ffi.advise_huge_pages(address + 1, 1 << 20)  # no whole huge page inside
    assert _ffi.HUGE_PAGE_MIN_BYTES == 4 << 20


def test_a_call_whose_kernel_function_is_unknown_says_so():
    with pytest.raises(RuntimeError, match="no kernel function is registered"):
        _ffi._dispatch([], [], {"call": "made-up#0"})
