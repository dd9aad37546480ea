"""The two cells of bench_jax.py that ran above 1.2x of the core in its big interleaved runs
(SoftPool's and LSE's channels-last "grad"), measured alone, with what XLA's fresh result
buffers cost: XLA allocates each call's results anew, so the kernels' first writes fault and
zero their pages, where NumPy's repeated calls reuse freed memory.

    python benchmarks/bench_jax_alone.py [rounds]

Rows: the core (allocating as NumPy does, and writing into reused buffers with out=), npool.jax
through the FFI, and an FFI call whose target writes zeros into / writes nothing into an
x-sized result, next to NumPy writing zeros into reused memory. Medians of interleaved rounds,
ms, float32, npool's default threads.
"""
import pathlib
import platform
import sys

import numpy as np

import jax
import jax.numpy as jnp

import npool
import npool.jax as nj
from npool.jax import _ffi

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _report import interleaved_medians_ms  # noqa: E402
from bench_targets import cpu_line  # noqa: E402


def _ready(fn):
    return lambda: jax.block_until_ready(fn())


def _vjp(op):
    """op's forward and its gradients for a cotangent given as an argument, jitted."""
    def forward_and_backward(v, c):
        y, pullback = jax.vjp(op, v)
        return y, pullback(c)
    return jax.jit(forward_and_backward)


def _writes_zeros(*arrays, out):
    for o in out:
        o[...] = 0
    return out


def _writes_nothing(*arrays, out):
    return out


def _one_result_like(target):
    """An FFI call of npool's target with one result of its argument's shape."""
    return jax.jit(lambda v: _ffi.call(target, (jax.ShapeDtypeStruct(v.shape, v.dtype),), v,
                                       vmap_method="sequential"))


def lse_cases(rng):
    x = rng.standard_normal((64, 14, 14, 512)).astype(np.float32)
    g = rng.standard_normal((64, 512)).astype(np.float32)
    xn = np.moveaxis(x, -1, 1)
    reused = np.empty_like(x)

    def core(out=None):
        y, stats = npool.global_lse_pool_forward(xn, 1.0, return_stats=True)
        return npool.global_lse_pool_backward(g, xn, 1.0, stats=stats, out=out)

    through_ffi = _vjp(lambda v: nj.global_lse_pool(v, 1.0))
    zeros, nothing = _one_result_like(_writes_zeros), _one_result_like(_writes_nothing)
    xj, gj = jnp.asarray(x), jnp.asarray(g)
    return {"LSE channels-last grad: core": core,
            "LSE channels-last grad: core, out= reused": lambda: core(np.moveaxis(reused, -1,
                                                                                  1)),
            "LSE channels-last grad: npool.jax (FFI)": _ready(lambda: through_ffi(xj, gj)),
            "an x-sized fresh XLA result, the FFI target writes zeros": _ready(lambda:
                                                                               zeros(xj)),
            "an x-sized fresh XLA result, the FFI target writes nothing": _ready(lambda:
                                                                                 nothing(xj)),
            "NumPy writes zeros into reused x-sized memory": lambda: reused.fill(0)}


def softpool_cases(rng):
    x = rng.standard_normal((32, 112, 112, 64)).astype(np.float32)
    xn = np.moveaxis(x, -1, 1)
    y = npool.soft_pool2d_forward(xn, 2)
    g = np.ascontiguousarray(np.moveaxis(rng.standard_normal(y.shape).astype(np.float32), 1,
                                         -1))
    gn = np.moveaxis(g, -1, 1)
    reused_y, reused_grad = np.empty(g.shape, np.float32), np.empty_like(x)

    def core(y_out=None, grad_out=None):
        return (npool.soft_pool2d_forward(xn, 2, out=y_out),
                npool.soft_pool2d_backward(gn, xn, 2, out=grad_out))

    through_ffi = _vjp(lambda v: nj.soft_pool2d(v, 2))
    xj, gj = jnp.asarray(x), jnp.asarray(g)
    return {"SoftPool 2x2/2 channels-last grad: core": core,
            "SoftPool 2x2/2 channels-last grad: core, out= reused": lambda: core(
                np.moveaxis(reused_y, -1, 1), np.moveaxis(reused_grad, -1, 1)),
            "SoftPool 2x2/2 channels-last grad: npool.jax (FFI)": _ready(lambda:
                                                                        through_ffi(xj, gj))}


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    rng = np.random.default_rng(0)
    cases = {**lse_cases(rng), **softpool_cases(rng)}
    for fn in cases.values():
        fn()
    ms = interleaved_medians_ms(cases, rounds)
    name, isa, _ = cpu_line()
    print(f"{name} ({isa}), {npool.get_num_threads()} threads; jax {jax.__version__}, Python "
          f"{platform.python_version()}; medians of {rounds} interleaved rounds\n")
    print("| case | ms |\n|---|---|")
    for case, value in ms.items():
        print(f"| {case} | {value:.2f} |")


if __name__ == "__main__":
    main()
