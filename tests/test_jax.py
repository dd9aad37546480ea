"""npool.jax: every op against the NumPy core, gradients (jax.test_util.check_grads and the
core's backward), jit / vmap / grad / value_and_grad, every dtype, both axis orders, the
portable decomposition (what GPU backends and jax.export get), and a small training loop."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import npool  # noqa: E402
import npool.jax as nj  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def _x64():
    """A context with 64-bit types enabled (jax.enable_x64 in JAX >= 0.7, the experimental
    one before)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64
    return enable_x64()


def _rng(seed=0):
    return np.random.default_rng(seed)


def _nhwc(a):
    return np.moveaxis(a, 1, -1)


def _nchw(a):
    return np.moveaxis(a, -1, 1)


# ------------------------------------------------------------------ cases
LOCAL = [
    ("soft_pool1d", (2, 9, 3), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("soft_pool2d", (2, 7, 9, 3), dict(kernel_size=2)),
    ("soft_pool2d", (2, 7, 8, 3), dict(kernel_size=3, stride=1, padding=1)),
    ("soft_pool3d", (2, 4, 5, 6, 2), dict(kernel_size=2, stride=(1, 2, 2))),
]


def _core_local(name, x_nhwc, kwargs, lam=None):
    nd = int(name[-2])
    x = _nchw(x_nhwc)
    if lam is None:
        y = getattr(npool, f"{name}_forward")(x, **kwargs)
    else:
        y = getattr(npool, f"maxent_pool{nd}d_forward")(x, lam, **kwargs)
    return _nhwc(y)


@pytest.mark.parametrize("name,shape,kwargs", LOCAL)
def test_local_pools_equal_the_core(name, shape, kwargs):
    x = _rng().standard_normal(shape).astype(np.float32)
    fn = getattr(nj, name)
    y = fn(jnp.asarray(x), **kwargs)
    np.testing.assert_array_equal(np.asarray(y), _core_local(name, x, kwargs))
    y_first = fn(jnp.asarray(_nchw(x)), data_format="channels_first", **kwargs)
    np.testing.assert_array_equal(np.asarray(y_first), _nchw(np.asarray(y)))
    unbatched = fn(jnp.asarray(x[0]), **kwargs)
    np.testing.assert_array_equal(np.asarray(unbatched), np.asarray(y)[0])
    jitted = jax.jit(lambda v: fn(v, **kwargs))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(y))


@pytest.mark.parametrize("name,shape,kwargs", LOCAL)
def test_local_pool_gradients(name, shape, kwargs):
    x = jnp.asarray(_rng(1).standard_normal(shape))
    fn = getattr(nj, name)
    with _x64():
        x64 = jnp.asarray(_rng(1).standard_normal(shape), jnp.float64)
        check_grads(lambda v: fn(v, **kwargs), (x64,), order=1, modes=["rev"])
    g = _rng(2).standard_normal(np.shape(fn(x, **kwargs))).astype(np.float32)
    _, vjp = jax.vjp(lambda v: fn(v, **kwargs), x)
    nd = int(name[-2])
    expected = getattr(npool, f"soft_pool{nd}d_backward")(_nchw(g), _nchw(np.asarray(x)),
                                                          **kwargs)
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), _nhwc(expected))


@pytest.mark.parametrize("lam_shape", [(), (3,), (2, 1, 1, 3)])
def test_maxent_pool_with_a_lam_array(lam_shape):
    rng = _rng(3)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    lam = rng.uniform(0.2, 2.0, lam_shape).astype(np.float32)
    y = nj.maxent_pool2d(jnp.asarray(x), jnp.asarray(lam), 2)
    lam_npool = np.moveaxis(np.reshape(lam, (1,) * (4 - lam.ndim) + lam.shape), -1, 1)
    np.testing.assert_allclose(np.asarray(y), _core_local("maxent_pool2d", x, dict(
        kernel_size=2), lam_npool), rtol=0, atol=0)
    assert np.array_equal(np.asarray(nj.maxent_pool2d(jnp.asarray(x), 0.7, 2)),
                          _core_local("maxent_pool2d", x, dict(kernel_size=2), 0.7))
    with _x64():
        check_grads(lambda v, la: nj.maxent_pool2d(v, la, 2),
                    (jnp.asarray(x, jnp.float64), jnp.asarray(lam, jnp.float64)), order=1,
                    modes=["rev"])


GLOBAL = [
    ("global_max_pool", {}),
    ("global_avg_pool", {}),
    ("global_lse_pool", {"beta": 2.0}),
    ("global_kmax_pool", {"k": 3}),
    ("weldon_pool", {"kmax": 2, "kmin": 3, "alpha": 0.5}),
]


@pytest.mark.parametrize("name,kwargs", GLOBAL)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_global_pools_equal_the_core_with_gradients(name, kwargs, keepdims, data_format):
    x = _rng(4).standard_normal((2, 5, 6, 3))
    x_npool = _nchw(x) if data_format == "channels_last" else x
    fn = getattr(nj, name)
    y = fn(jnp.asarray(x, jnp.float32), keepdims=keepdims, data_format=data_format, **kwargs)
    core = getattr(npool, f"{name}_forward")(x_npool.astype(np.float32), keepdims=keepdims,
                                              **kwargs)
    if keepdims and data_format == "channels_last":
        core = _nhwc(core)
    np.testing.assert_array_equal(np.asarray(y), core)
    with _x64():
        check_grads(lambda v: fn(v, keepdims=keepdims, data_format=data_format, **kwargs),
                    (jnp.asarray(x, jnp.float64),), order=1, modes=["rev"], eps=1e-6)


SETS = ["netvlad_pool", "netrvlad_pool", "netfv_pool", "soft_dbow_pool", "context_gating"]


def _set_args(name, dtype=np.float64, seed=5):
    rng = _rng(seed)
    B, M, D, K = 2, 5, 4, 3
    x = rng.standard_normal((B, M, D)).astype(dtype)
    a = rng.random((B, M, K)).astype(dtype)
    a = a / a.sum(-1, keepdims=True)
    c = rng.standard_normal((D, K)).astype(dtype)
    cw = rng.uniform(0.5, 1.5, (D, K)).astype(dtype)
    mask = np.array([[True] * M, [True, False, True, True, False]])
    return {"netvlad_pool": ((x, a, c), mask), "netrvlad_pool": ((x, a), mask),
            "netfv_pool": ((x, a, c, cw), mask), "soft_dbow_pool": ((a,), mask),
            "context_gating": ((x, rng.standard_normal((D, D)).astype(dtype) * 0.3,
                                rng.standard_normal(D).astype(dtype)), None)}[name]


@pytest.mark.parametrize("name", SETS)
def test_set_pools_equal_the_core_with_gradients(name):
    arrays, mask = _set_args(name)
    fn = getattr(nj, name)
    extra = {} if name == "context_gating" else {"mask": mask}
    with _x64():
        y = fn(*map(jnp.asarray, arrays), **extra)
        core = getattr(npool, f"{name}_forward")(*arrays, **extra)
        np.testing.assert_array_equal(np.asarray(y), core)
        # first and second order, reverse and forward mode (the second order and forward
        # mode through the decomposition's derivatives of the kernels' results)
        check_grads(lambda *a: fn(*a, **extra), tuple(map(jnp.asarray, arrays)), order=2,
                    modes=["fwd", "rev"], eps=1e-6)
        g = _rng(6).standard_normal(core.shape)
        _, vjp = jax.vjp(lambda *a: fn(*a, **extra), *map(jnp.asarray, arrays))
        grads = getattr(npool, f"{name}_backward")(g, *arrays, **extra)
        grads = grads if isinstance(grads, tuple) else (grads,)
        for got, want in zip(vjp(jnp.asarray(g)), grads):
            np.testing.assert_array_equal(np.asarray(got), want)


# ------------------------------------------------------------------ transformations
# Forward mode and second order: the kernels compute values and first derivatives, the portable
# decomposition the derivatives of those (checked against finite differences by check_grads and
# against the decomposition's own Hessian).
HIGHER_ORDER = [
    ("soft_pool2d", lambda v: nj.soft_pool2d(v, 2, stride=1)),
    ("soft_pool1d", lambda v: nj.soft_pool1d(v[:, 0], 3, stride=2, padding=1)),
    ("maxent_pool2d", lambda v: nj.maxent_pool2d(v, 1.5, 2)),
    ("maxent_pool2d lam array", lambda v: nj.maxent_pool2d(v, jnp.asarray([0.5, 2.0]), 2)),
    ("global_max_pool", lambda v: nj.global_max_pool(v)),
    ("global_avg_pool", lambda v: nj.global_avg_pool(v, keepdims=True)),
    ("global_lse_pool", lambda v: nj.global_lse_pool(v, beta=2.0)),
    ("global_kmax_pool", lambda v: nj.global_kmax_pool(v, k=3)),
    ("weldon_pool", lambda v: nj.weldon_pool(v, kmax=2, kmin=1, alpha=0.5)),
]


@pytest.mark.parametrize("name,fn", HIGHER_ORDER, ids=[n for n, _ in HIGHER_ORDER])
def test_forward_mode_and_second_order_with_the_kernels(name, fn):
    x = _rng(21).standard_normal((2, 4, 5, 2))
    with _x64():
        v = jnp.asarray(x)
        assert nj.uses_kernels()
        check_grads(fn, (v,), order=2, modes=["fwd", "rev"], eps=1e-6)

        def loss(u):
            return jnp.sum(fn(u) ** 2)

        small = v[:1, :3, :4]
        hessians = [jax.hessian(loss)(small), jax.jit(jax.jacrev(jax.jacrev(loss)))(small),
                    jax.jacfwd(jax.jacfwd(loss))(small)]
        with nj.portable():
            want = jax.hessian(loss)(small)
        for got in hessians:
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9,
                                       atol=1e-9)
        tangent = jnp.ones_like(v)
        _, got = jax.jit(lambda u: jax.jvp(fn, (u,), (tangent,)))(v)
        with nj.portable():
            _, want = jax.jvp(fn, (v,), (tangent,))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-9)


def test_forward_mode_of_a_jitted_kernel_op_is_jaxs_error():
    """jax.jvp of an already-jitted function (and jax.linearize) reach the reverse-mode op,
    which has no forward mode: JAX's TypeError. Inside portable() both work."""
    x = jnp.ones((1, 4, 4, 1))
    f = jax.jit(lambda v: nj.soft_pool2d(v, 2))
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(f, (x,), (x,))
    with pytest.raises(TypeError, match="forward-mode"):
        jax.linearize(lambda v: nj.soft_pool2d(v, 2), x)[1](x)
    with nj.portable():
        assert jax.jvp(jax.jit(lambda v: nj.soft_pool2d(v, 2)), (x,), (x,))[1].shape == \
            (1, 2, 2, 1)


def test_several_devices_run_the_kernels_per_shard():
    """On 2 forced host devices, in a fresh process: the kernels run once per shard of a
    batch-sharded input and the results keep its sharding (eager, jit, grad, vmap,
    shard_map; explicit and automatic mesh axes; every op family). tests/jax_multi_device.py
    holds the checks."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, str(HERE / "jax_multi_device.py")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "all checks passed" in result.stdout, result.stdout[-3000:]


def test_vmap_folds_into_the_batch_and_equals_a_loop():
    x = jnp.asarray(_rng(7).standard_normal((4, 2, 6, 6, 3)), jnp.float32)
    pooled = jax.vmap(lambda v: nj.soft_pool2d(v, 2))(x)
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(pooled[i]), np.asarray(nj.soft_pool2d(x[i],
                                                                                        2)))
    grads = jax.vmap(jax.grad(lambda v: nj.global_kmax_pool(v, k=4).sum()))(x)
    for i in range(4):
        np.testing.assert_array_equal(
            np.asarray(grads[i]), np.asarray(jax.grad(lambda v: nj.global_kmax_pool(
                v, k=4).sum())(x[i])))
    # an op with a parameter runs once per vmapped element
    centers = jnp.asarray(_rng(8).standard_normal((2, 4, 3)), jnp.float32)
    arrays, mask = _set_args("netvlad_pool", np.float32)
    out = jax.vmap(lambda c: nj.netvlad_pool(arrays[0], arrays[1], c, mask))(centers)
    for i in range(2):
        np.testing.assert_allclose(np.asarray(out[i]), npool.netvlad_pool_forward(
            arrays[0], arrays[1], np.asarray(centers[i]), mask), rtol=1e-6)


def test_value_and_grad_under_jit():
    x = jnp.asarray(_rng(9).standard_normal((2, 8, 8, 3)), jnp.float32)

    @jax.jit
    def loss(v):
        return jnp.sum(nj.global_avg_pool(nj.soft_pool2d(v, 2)) ** 2)

    value, grad = jax.value_and_grad(loss)(x)
    assert np.isfinite(float(value)) and grad.shape == x.shape
    with nj.portable():
        value_p, grad_p = jax.value_and_grad(lambda v: jnp.sum(nj.global_avg_pool(
            nj.soft_pool2d(v, 2)) ** 2))(x)
    np.testing.assert_allclose(float(value), float(value_p), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_p), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_dtypes_are_kept_and_computed_in_float32(dtype):
    x = _rng(10).standard_normal((2, 6, 6, 3)).astype(np.float32)
    y = nj.soft_pool2d(jnp.asarray(x, dtype), 2)
    assert y.dtype == dtype
    half = np.asarray(jnp.asarray(x, dtype)).astype(np.float32)
    expected = _core_local("soft_pool2d", half, dict(kernel_size=2))
    np.testing.assert_allclose(np.asarray(y, np.float32), expected,
                               rtol=float(jnp.finfo(dtype).eps), atol=0)
    grad = jax.grad(lambda v: jnp.sum(nj.global_lse_pool(v).astype(jnp.float32)))(
        jnp.asarray(x, dtype))
    assert grad.dtype == dtype


def test_float64_with_x64():
    with _x64():
        x = _rng(11).standard_normal((2, 6, 6, 3))
        y = nj.soft_pool2d(jnp.asarray(x), 2)
        assert y.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(y), _core_local("soft_pool2d", x, dict(
            kernel_size=2)))


# ------------------------------------------------------------------ the decomposition
PORTABLE_CASES = [
    ("soft_pool2d", lambda v: nj.soft_pool2d(v, 3, 2, 1, True)),
    ("maxent_pool2d", lambda v: nj.maxent_pool2d(v, jnp.full((3,), 0.6, v.dtype), 2)),
    ("global_max_pool", nj.global_max_pool),
    ("global_lse_pool", lambda v: nj.global_lse_pool(v, beta=3.0, keepdims=True)),
    ("weldon_pool", lambda v: nj.weldon_pool(v, kmax=3, kmin=2, alpha=0.7)),
]


@pytest.mark.parametrize("name,fn", PORTABLE_CASES, ids=[c[0] for c in PORTABLE_CASES])
def test_the_portable_form_agrees_with_the_kernels(name, fn):
    x = jnp.asarray(_rng(12).standard_normal((2, 7, 8, 3)) * 5, jnp.float32)
    assert nj.uses_kernels()
    y = fn(x)
    with nj.portable():
        assert not nj.uses_kernels()
        y_p = fn(x)
        grad_p = jax.grad(lambda v: jnp.sum(fn(v) ** 2))(x)
    np.testing.assert_allclose(np.asarray(y_p), np.asarray(y), rtol=2e-6, atol=2e-6)
    grad = jax.grad(lambda v: jnp.sum(fn(v) ** 2))(x)
    np.testing.assert_allclose(np.asarray(grad_p), np.asarray(grad), rtol=1e-4, atol=1e-5)


def test_jax_export_needs_the_portable_form_and_runs_it():
    from jax import export
    x = jnp.asarray(_rng(13).standard_normal((2, 8, 8, 3)), jnp.float32)

    def model(v):
        return nj.global_avg_pool(nj.soft_pool2d(v, 2))

    with nj.portable():
        exported = export.export(jax.jit(model))(x)
    restored = export.deserialize(exported.serialize())
    np.testing.assert_allclose(np.asarray(restored.call(x)), np.asarray(model(x)), rtol=1e-5)
    # the kernels' FFI call cannot be saved (a new function: jax.jit keeps a function's trace,
    # whichever form it was traced with); JAX names npool's target
    with pytest.raises(ValueError, match="(?s)no compatibility guarantees.*npool_cpu_kernels"):
        export.export(jax.jit(lambda v: model(v)))(x).serialize()


def test_set_pools_portable_form():
    arrays, mask = _set_args("netfv_pool", np.float32)
    y = nj.netfv_pool(*arrays, mask=mask)
    with nj.portable():
        y_p = nj.netfv_pool(*arrays, mask=mask)
    np.testing.assert_allclose(np.asarray(y_p), np.asarray(y), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ docs, errors, training
def test_docstring_examples_run():
    import doctest
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    finder = doctest.DocTestFinder(recurse=False)
    ran = 0
    for name in nj.__all__:
        for test in finder.find(getattr(nj, name), name, globs={"npool": npool, "jnp": jnp}):
            runner.run(test)
            ran += len(test.examples)
    assert ran >= 10 and runner.failures == 0



def test_bad_arguments_name_themselves():
    x = jnp.ones((2, 4, 4, 3))
    with pytest.raises(TypeError, match="x must have dtype"):
        nj.soft_pool2d(jnp.ones((2, 4, 4, 3), jnp.int32), 2)
    with pytest.raises(ValueError, match="x must be 3-D or 4-D"):
        nj.soft_pool2d(jnp.ones((4, 4)), 2)
    with pytest.raises(ValueError, match="data_format"):
        nj.soft_pool2d(x, 2, data_format="NHWC")
    with pytest.raises(ValueError, match="kernel"):
        nj.soft_pool2d(x, 5)
    with pytest.raises(ValueError, match="lam must be finite"):
        nj.maxent_pool2d(x, float("nan"), 2)
    with pytest.raises(TypeError, match="lam must be a real number"):
        nj.maxent_pool2d(x, True, 2)
    with pytest.raises(ValueError, match="beta"):
        nj.global_lse_pool(x, beta=float("inf"))


def test_a_small_model_trains():
    """A Flax-free CNN head: a per-channel scale, SoftPool, k-max pooling, a linear layer,
    fitted by plain SGD (jit, grad through both pools' backward kernels) to a teacher with the
    same head; the loss goes down by 10x."""
    rng = _rng(14)
    x = jnp.asarray(rng.standard_normal((32, 8, 8, 4)), jnp.float32)

    def head(p, v):
        return nj.global_kmax_pool(nj.soft_pool2d(v * p["s"], 2), k=0.25) @ p["w"] + p["b"]

    teacher = {"s": jnp.asarray([1.5, 0.5, 2.0, 1.0], jnp.float32),
               "w": jnp.asarray(rng.standard_normal((4, 2)), jnp.float32),
               "b": jnp.asarray([0.5, -0.5], jnp.float32)}
    targets = head(teacher, x)
    params = {"s": jnp.ones((4,), jnp.float32), "w": jnp.zeros((4, 2), jnp.float32),
              "b": jnp.zeros((2,), jnp.float32)}

    def loss(p):
        return jnp.mean((head(p, x) - targets) ** 2)

    step = jax.jit(lambda p: jax.tree_util.tree_map(lambda a, g: a - 0.2 * g, p,
                                                    jax.grad(loss)(p)))
    first = float(loss(params))
    for _ in range(150):
        params = step(params)
    assert float(loss(params)) < 0.1 * first
    assert not np.allclose(np.asarray(params["s"]), 1.0)  # the pools passed gradients back


def test_the_docs_example_runs():
    """docs/frameworks/jax.md's example (the README shows the same block)."""
    import pathlib
    page = (pathlib.Path(__file__).parents[1] / "docs" / "frameworks" / "jax.md").read_text()
    block = page.split("```python")[1].split("```")[0]
    assert block in (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    namespace = {}
    exec(compile(block, "docs/frameworks/jax.md", "exec"), namespace)
    assert namespace["pooled"].shape == (4, 8, 16, 16, 16)
    assert namespace["grad"].shape == (8, 32, 32, 16)


def test_a_one_device_mesh_with_explicit_axes_keeps_the_batch_sharding():
    """Arrays on a mesh of one device are typed sharded (8@batch); the kernels' results, and the
    gradient that must have its primal's type, keep that type (found by the docs' example)."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((1,), ("batch",), devices=jax.devices()[:1])
    x = jax.device_put(jnp.asarray(_rng(3).standard_normal((4, 8, 8, 3)), jnp.float32),
                       NamedSharding(mesh, P("batch")))
    with jax.set_mesh(mesh):
        y = jax.jit(lambda v: nj.soft_pool2d(v, 2))(x)
        grads = [jax.jit(jax.grad(lambda v: jnp.sum(fn(v) ** 2)))(x)
                 for fn in (nj.global_max_pool, lambda v: nj.soft_pool2d(v, 2),
                            lambda v: nj.maxent_pool2d(v, jnp.ones(3), 2))]
    assert y.sharding.spec[0] == "batch"
    for grad in grads:
        assert grad.sharding.spec[0] == "batch" and grad.shape == x.shape
