"""npool.jax on several devices: run by tests/test_jax.py in its own process with
XLA_FLAGS=--xla_force_host_platform_device_count=2 (JAX reads the device count once).

For every op family, on a batch-sharded input: the values and gradients equal those of the same
arrays on one device; each kernel call sees one shard of the batch (half of it), never the whole
batch; the results keep the batch's sharding (and shared parameters' gradients are replicated);
and the next jnp operation on them works. Eager, jit, grad, vmap and shard_map (forward and
grad), with explicit mesh axes (jax.make_mesh's default) and automatic ones. Prints
"all checks passed" at the end."""
import numpy as np

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import npool.jax as nj
from npool.jax import _ops

assert jax.device_count() == 2, "run with XLA_FLAGS=--xla_force_host_platform_device_count=2"
N = 4  # the batch: 2 per device

# every kernel call records the shape of its first argument
seen = []
_kernel_call = _ops._kernel_call


def _recording_kernel_call(target, structs, arrays, vmap_method):
    def record(*arrays, out=None):
        seen.append(np.shape(arrays[0]))
        return target(*arrays, out=out)
    return _kernel_call(record, structs, arrays, vmap_method)


_ops._kernel_call = _recording_kernel_call
assert _ops._ffi.available(), "npool's XLA FFI handler is not registered"

rng = np.random.default_rng(0)
x4 = rng.standard_normal((N, 6, 6, 3)).astype(np.float32)
lam_c = np.asarray([0.5, 1.0, 2.0], np.float32)
lam_n = rng.uniform(0.5, 2.0, (N, 1, 1, 3)).astype(np.float32)
xs = rng.standard_normal((N, 5, 4)).astype(np.float32)
assign = rng.random((N, 5, 3)).astype(np.float32)
assign /= assign.sum(-1, keepdims=True)
centers = rng.standard_normal((4, 3)).astype(np.float32)
weights = (rng.standard_normal((4, 4)) * 0.3).astype(np.float32)
biases = rng.standard_normal(4).astype(np.float32)

# name: (function, arrays, which arrays are per sample (sharded along the batch))
CASES = {
    "soft_pool2d": (lambda x: nj.soft_pool2d(x, 2), (x4,), (True,)),
    "soft_pool2d 3x3/1 pad 1": (lambda x: nj.soft_pool2d(x, 3, 1, 1), (x4,), (True,)),
    "maxent_pool2d lam per channel": (lambda x, lam: nj.maxent_pool2d(x, lam, 2),
                                      (x4, lam_c), (True, False)),
    "maxent_pool2d lam per sample": (lambda x, lam: nj.maxent_pool2d(x, lam, 2),
                                     (x4, lam_n), (True, True)),
    "global_max_pool": (lambda x: nj.global_max_pool(x), (x4,), (True,)),
    "global_avg_pool": (lambda x: nj.global_avg_pool(x, keepdims=True), (x4,), (True,)),
    "global_lse_pool": (lambda x: nj.global_lse_pool(x, beta=2.0), (x4,), (True,)),
    "global_kmax_pool": (lambda x: nj.global_kmax_pool(x, k=3), (x4,), (True,)),
    "weldon_pool": (lambda x: nj.weldon_pool(x, kmax=2, kmin=1), (x4,), (True,)),
    "netvlad_pool": (lambda x, a, c: nj.netvlad_pool(x, a, c), (xs, assign, centers),
                     (True, True, False)),
    "soft_dbow_pool": (lambda a: nj.soft_dbow_pool(a), (assign,), (True,)),
    "context_gating": (lambda x, w, b: nj.context_gating(x, w, b), (xs, weights, biases),
                       (True, False, False)),
}


def loss_of(fn):
    return lambda *arrays: jnp.sum(fn(*arrays) ** 3)


def expect_per_shard(what):
    calls = list(seen)
    seen.clear()
    assert calls, f"{what}: no kernel call"
    assert all(c[0] == N // 2 for c in calls), f"{what}: kernel calls saw shapes {calls}"


def assert_batch_sharded(a, what):
    spec = a.sharding.spec
    assert len(spec) and spec[0] == "batch", f"{what}: result sharded as {a.sharding}"


def per_device_loss(u):
    return jnp.sum(nj.global_max_pool(nj.soft_pool2d(u, 2)) ** 2, keepdims=True)


def check_mesh(axis_type):
    mesh = jax.make_mesh((2,), ("batch",), axis_types=(axis_type,))
    kind = axis_type.name
    for name, (fn, arrays, per_sample) in CASES.items():
        what = f"{kind} {name}"
        want, want_grads = jax.block_until_ready((
            fn(*map(jnp.asarray, arrays)),
            jax.grad(loss_of(fn), argnums=tuple(range(len(arrays))))(*map(jnp.asarray, arrays))))
        seen.clear()
        placed = [jax.device_put(a, NamedSharding(mesh, P("batch") if s else P()))
                  for a, s in zip(arrays, per_sample)]
        with jax.set_mesh(mesh):
            for mode, run in (("eager", fn), ("jit", jax.jit(fn))):
                y = jax.block_until_ready(run(*placed))  # (callbacks run asynchronously)
                expect_per_shard(f"{what} {mode}")
                np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-6,
                                           atol=1e-6, err_msg=f"{what} {mode}")
                assert_batch_sharded(y, f"{what} {mode}")
                assert_batch_sharded(y + 1, f"{what} {mode}, the next jnp op")
            grads = jax.block_until_ready(jax.jit(jax.grad(
                loss_of(fn), argnums=tuple(range(len(arrays)))))(*placed))
            expect_per_shard(f"{what} grad")
            for i, (got, wanted, s) in enumerate(zip(grads, want_grads, per_sample)):
                np.testing.assert_allclose(np.asarray(got), np.asarray(wanted), rtol=2e-5,
                                           atol=2e-5, err_msg=f"{what} grad {i}")
                if s:
                    assert_batch_sharded(got, f"{what} grad {i}")
                else:
                    assert got.sharding.is_fully_replicated, f"{what} grad {i}: {got.sharding}"
    print(f"{kind}: eager, jit and grad per shard for {len(CASES)} ops")

    # vmap over a sharded batch: the vmapped axis folds into each shard's batch
    x = jax.device_put(x4, NamedSharding(mesh, P("batch")))
    stacked = jnp.stack([x, 2 * x], axis=1)  # (N, 2, H, W, C): vmap over axis 1
    seen.clear()
    with jax.set_mesh(mesh):
        y = jax.block_until_ready(jax.jit(jax.vmap(lambda u: nj.soft_pool2d(u, 2), in_axes=1,
                                                   out_axes=1))(stacked))
    # (the vmapped axis in front of each shard: the FFI call's expand_dims)
    assert seen and all(c[:2] == (2, N // 2) for c in seen), f"{kind} vmap: calls saw {seen}"
    seen.clear()
    np.testing.assert_allclose(np.asarray(y[:, 1]), np.asarray(nj.soft_pool2d(2 * x4, 2)),
                               rtol=1e-5)
    assert_batch_sharded(y, f"{kind} vmap")
    want = jax.block_until_ready(jax.grad(lambda u: jnp.sum(per_device_loss(u)))(
        jnp.asarray(x4)))
    seen.clear()

    # shard_map: inside, the kernels run on the shard they are given (forward and grad)
    sharded = jax.shard_map(per_device_loss, mesh=mesh, in_specs=P("batch"),
                            out_specs=P("batch"))
    with jax.set_mesh(mesh):
        for mode, run in (("eager", jax.grad(lambda u: jnp.sum(sharded(u)))),
                          ("jit", jax.jit(jax.grad(lambda u: jnp.sum(sharded(u)))))):
            g = jax.block_until_ready(run(x))
            expect_per_shard(f"{kind} shard_map grad {mode}")
            np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-5,
                                       err_msg=f"{kind} shard_map grad {mode}")
            assert_batch_sharded(g, f"{kind} shard_map grad {mode}")
        y = jax.block_until_ready(jax.jit(jax.shard_map(
            lambda u: nj.soft_pool2d(u, 2), mesh=mesh, in_specs=P("batch"),
            out_specs=P("batch")))(x))
        expect_per_shard(f"{kind} shard_map forward")
        assert_batch_sharded(y, f"{kind} shard_map forward")
    print(f"{kind}: vmap and shard_map (forward and grad) per shard")


check_mesh(AxisType.Explicit)
check_mesh(AxisType.Auto)

# a mesh with a size-1 axis as well: every axis not yet manual is made manual around the
# kernels (a callback needs them all), the batch still split over the other
for axis_type in (AxisType.Explicit, AxisType.Auto):
    mesh = jax.make_mesh((2, 1), ("batch", "model"), axis_types=(axis_type, axis_type))
    x = jax.device_put(x4, NamedSharding(mesh, P("batch")))
    with jax.set_mesh(mesh):
        y, g = jax.block_until_ready(jax.jit(jax.value_and_grad(
            lambda u: jnp.sum(nj.soft_pool2d(u, 2) ** 2)))(x))
    expect_per_shard(f"{axis_type.name} (2, 1) mesh")
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(
        lambda u: jnp.sum(nj.soft_pool2d(u, 2) ** 2))(jnp.asarray(x4))), rtol=1e-5)
    assert_batch_sharded(g, f"{axis_type.name} (2, 1) mesh")
    seen.clear()

# a batch that does not divide over the devices, and an input on one device: the whole batch
# in one call, the values right
odd = rng.standard_normal((3, 4, 4, 2)).astype(np.float32)
mesh = jax.make_mesh((2,), ("batch",), axis_types=(AxisType.Auto,))
with jax.set_mesh(mesh):
    y = jax.jit(lambda u: nj.soft_pool2d(u, 2))(jax.device_put(odd, NamedSharding(mesh, P())))
np.testing.assert_allclose(np.asarray(y), np.asarray(nj.soft_pool2d(odd, 2)), rtol=1e-6)
seen.clear()
print("all checks passed")
