"""CPU benchmark of npool.jax: the kernels through XLA's FFI, against the same kernels called
from NumPy (the core), the route before it (jax.pure_callback), npool's decomposition compiled
by XLA (the composite a JAX user would otherwise write) and jax.lax.reduce_window max pooling.

    python benchmarks/bench_jax.py [--repeats 7] [--quick] [--out FILE]

Per op family, every JAX case jitted, float32, 2 threads:
  SoftPool 2x2/2     (32, 112, 112, 64) channels-last (JAX's order) and (32, 64, 112, 112)
                     channels-first; anchors: the composite, reduce_window max pooling
  Max-Ent 2x2/2      lam per channel (an array argument: one call per element under vmap)
  LSE, k-max (10%)   (64, 14, 14, 512) channels-last and channels-first
  GeM (p per channel)
  NetVLAD            (B, M, D) = (64, 300, 256), K = 64
"fwd": y = op(x); "grad": y and the gradients for a cotangent g (jax.vjp: the forward and the
backward; the core's "grad" is its forward and backward functions called in a row on NumPy
arrays, with what the forward saves for the backward, each allocating its results as NumPy
does). "XLA's
floor": the same program shape with one FFI call of npool's target that writes nothing - what
XLA and the handler cost around the kernels (the call, the cotangent's broadcast; result
buffers it allocates but nobody touches, so no page faults). Rounds
interleave the cases; medians in ms. The ratio to the core is what the FFI route costs over
the kernels themselves (goal: within 1.2x).
"""
import argparse
import datetime
import platform
import sys

import numpy as np

import jax
import jax.numpy as jnp

import npool
import npool.jax as nj
from npool.jax import _ffi
from _report import emit, interleaved_medians_ms


def _ready(fn):
    return lambda: jax.block_until_ready(fn())


def _nothing(*arrays, out):
    return out


def _writes_nothing(op, forward_and_backward, kind, arrays):
    """One FFI call of npool's target that writes nothing, with the results of ``op`` (fwd) or
    of its forward and backward (grad): what XLA and the handler cost around the kernels."""
    if kind == "fwd":
        structs = (jax.eval_shape(op, *arrays),)
    else:
        y, grads = jax.eval_shape(forward_and_backward, *arrays)
        structs = (y,) + tuple(grads)
    results = _ffi.call(_nothing, structs, *arrays, vmap_method="sequential")
    return results[0] if kind == "fwd" else (results[0], tuple(results[1:]))


class Routes:
    """The npool.jax function jitted through the FFI and through pure_callback, the
    decomposition jitted (portable()), forward and grad."""

    def __init__(self, op, arrays, g):
        self.op, self.arrays, self.g = op, [jnp.asarray(a) for a in arrays], jnp.asarray(g)

    def jitted(self, route):
        op = self.op

        def traced(kind):
            def body(*a_and_g):  # g, the cotangent, last (an argument, not a constant)
                *a, g = a_and_g

                def forward_and_backward(*a):  # y and the gradients for the cotangent g
                    y, pullback = jax.vjp(op, *a)
                    return y, pullback(g)

                if route == "floor":  # an FFI call that writes nothing, same results
                    return _writes_nothing(op, forward_and_backward, kind, a)
                if route == "composite":
                    with nj.portable():
                        return op(*a) if kind == "fwd" else forward_and_backward(*a)
                return op(*a) if kind == "fwd" else forward_and_backward(*a)
            return jax.jit(body)

        saved = _ffi.available
        if route == "pure_callback":  # the route before the FFI: trace it that way
            _ffi.available = lambda: False
        try:
            cases = {}
            arguments = list(self.arrays) + [self.g]
            for kind in ("fwd", "grad"):
                fn = traced(kind)
                fn.lower(*arguments).compile()  # compile now, with the route chosen
                cases[kind] = _ready(lambda fn=fn: fn(*arguments))
                cases[kind]()  # run once inside the patch: the trace is cached from here
        finally:
            _ffi.available = saved
        return cases


def local_cases(quick):
    shape = (4, 56, 56, 16) if quick else (32, 112, 112, 64)
    rng = np.random.default_rng(0)
    x_last = rng.standard_normal(shape).astype(np.float32)
    x_first = np.ascontiguousarray(np.moveaxis(x_last, -1, 1))
    lam = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    out = {}
    for fmt, x in (("channels_last", x_last), ("channels_first", x_first)):
        to_npool = (lambda a: np.moveaxis(a, -1, 1)) if fmt == "channels_last" else (lambda a: a)
        xn = to_npool(x)
        y = npool.soft_pool2d_forward(xn, 2)
        g = rng.standard_normal(y.shape).astype(np.float32)
        g_jax = np.ascontiguousarray(np.moveaxis(g, 1, -1)) if fmt == "channels_last" else g
        gn = to_npool(g_jax)
        lam_n = lam.reshape(-1, 1, 1)
        lam_jax = lam if fmt == "channels_last" else lam_n
        cases = {
            "SoftPool": (lambda v, fmt=fmt: nj.soft_pool2d(v, 2, data_format=fmt), [x], g_jax,
                         lambda xn=xn: npool.soft_pool2d_forward(xn, 2),
                         lambda xn=xn, gn=gn: (npool.soft_pool2d_forward(xn, 2),
                                               npool.soft_pool2d_backward(gn, xn, 2))),
            "Max-Ent lam (C,)": (
                lambda v, la, fmt=fmt: nj.maxent_pool2d(v, la, 2, data_format=fmt),
                [x, lam_jax], g_jax,
                lambda xn=xn: npool.maxent_pool2d_forward(xn, lam_n, 2),
                lambda xn=xn, gn=gn: (npool.maxent_pool2d_forward(xn, lam_n, 2),
                                      npool.maxent_pool2d_backward(gn, xn, lam_n, 2))),
        }
        window = (1, 2, 2, 1) if fmt == "channels_last" else (1, 1, 2, 2)
        x_j = jnp.asarray(x)
        g_j = jnp.asarray(g_jax)

        def max_pool(v, window=window):
            return jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, window, window, "VALID")
        max_fwd = jax.jit(max_pool)
        def max_vjp(v, g, max_pool=max_pool):
            y, pullback = jax.vjp(max_pool, v)
            return y, pullback(g)
        max_grad = jax.jit(max_vjp)
        extra = {"reduce_window max fwd": _ready(lambda f=max_fwd, x_j=x_j: f(x_j)),
                 "reduce_window max grad": _ready(lambda f=max_grad, x_j=x_j, g_j=g_j:
                                                  f(x_j, g_j))}
        out[(f"{shape} {fmt}")] = (cases, extra)
    return out


def global_cases(quick):
    shape = (8, 14, 14, 64) if quick else (64, 14, 14, 512)
    rng = np.random.default_rng(1)
    x_last = rng.standard_normal(shape).astype(np.float32)
    x_pos = np.abs(x_last) + 0.1
    p = np.full(shape[-1], 3.0, np.float32)
    g = rng.standard_normal((shape[0], shape[-1])).astype(np.float32)
    n = shape[1] * shape[2]
    k = max(1, int(0.1 * n))
    out = {}
    for fmt in ("channels_last", "channels_first"):
        def layout(a):
            return np.ascontiguousarray(np.moveaxis(a, -1, 1)) if fmt == "channels_first" else a
        x, xp = layout(x_last), layout(x_pos)
        xn = np.moveaxis(x, -1, 1) if fmt == "channels_last" else x
        xpn = np.moveaxis(xp, -1, 1) if fmt == "channels_last" else xp

        def lse_core(xn=xn):
            y, stats = npool.global_lse_pool_forward(xn, 1.0, return_stats=True)
            return npool.global_lse_pool_backward(g, xn, 1.0, stats=stats)

        def kmax_core(xn=xn):
            y, index = npool.global_kmax_pool_forward(xn, k, return_indices=True)
            return npool.global_kmax_pool_backward(g, xn, k, indices=index)

        cases = {
            "LSE": (lambda v, fmt=fmt: nj.global_lse_pool(v, 1.0, data_format=fmt), [x], g,
                    lambda xn=xn: npool.global_lse_pool_forward(xn, 1.0), lse_core),
            "k-max 10%": (lambda v, fmt=fmt: nj.global_kmax_pool(v, k, data_format=fmt), [x], g,
                          lambda xn=xn: npool.global_kmax_pool_forward(xn, k), kmax_core),
            "GeM p (C,)": (lambda v, q, fmt=fmt: nj.global_gem_pool(v, q, data_format=fmt),
                           [xp, p], g,
                           lambda xpn=xpn: npool.global_gem_pool_forward(xpn, p),
                           lambda xpn=xpn: (npool.global_gem_pool_forward(xpn, p),
                                            npool.global_gem_pool_backward(g, xpn, p))),
        }
        out[f"{shape} {fmt}"] = (cases, {})
    return out


def set_cases(quick):
    b, m, d, kc = (8, 50, 64, 16) if quick else (64, 300, 256, 64)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((b, m, d)).astype(np.float32)
    logits = rng.standard_normal((b, m, kc)).astype(np.float32)
    assign = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    centers = rng.standard_normal((d, kc)).astype(np.float32)
    g = rng.standard_normal((b, d * kc)).astype(np.float32)
    cases = {"NetVLAD": (nj.netvlad_pool, [x, assign, centers], g,
                         lambda: npool.netvlad_pool_forward(x, assign, centers),
                         lambda: (npool.netvlad_pool_forward(x, assign, centers),
                                  npool.netvlad_pool_backward(g, x, assign, centers)))}
    return {f"(B, M, D) = {(b, m, d)}, K = {kc}": (cases, {})}


def measure(repeats, quick, progress=print):
    """``(family, setting, op names, medians)`` per group of interleaved cases; the medians
    (ms) are keyed ``"<op> <route> <kind>"`` (route: ffi, pure_callback, composite, core; kind:
    fwd, grad) and ``"reduce_window max <kind>"`` for the local pools."""
    groups = {"local pools 2x2/2": local_cases(quick), "global pools": global_cases(quick),
              "set pools": set_cases(quick)}
    for family, settings in groups.items():
        for setting, (ops, extra) in settings.items():
            timed = dict(extra)
            for name, (op, arrays, g, core_fwd, core_grad) in ops.items():
                routes = Routes(op, arrays, g)
                for route in ("ffi", "floor", "pure_callback", "composite"):
                    for kind, fn in routes.jitted(route).items():
                        timed[f"{name} {route} {kind}"] = fn
                timed[f"{name} core fwd"] = core_fwd
                timed[f"{name} core grad"] = core_grad
            progress(f"npool.jax {family} {setting}: timing {len(timed)} cases, "
                     f"{repeats} rounds")
            yield family, setting, list(ops), interleaved_medians_ms(timed, repeats)


def run(repeats, quick, progress=print):
    lines = ["| family | setting | op | kind | core ms | npool.jax (FFI) ms | FFI / core | "
             "XLA's floor ms | pure_callback ms | composite (XLA) ms | composite / FFI | "
             "reduce_window max ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for family, setting, names, ms in measure(repeats, quick, progress):
        for name in names:
            for kind in ("fwd", "grad"):
                def get(route):
                    return ms[f"{name} {route} {kind}"]
                rw = ms.get(f"reduce_window max {kind}")
                lines.append(
                    f"| {family} | {setting} | {name} | {kind} | {get('core'):.2f} | "
                    f"{get('ffi'):.2f} | {get('ffi') / get('core'):.2f}x | "
                    f"{get('floor'):.2f} | {get('pure_callback'):.2f} | {get('composite'):.2f} | "
                    f"{get('composite') / get('ffi'):.2f}x | "
                    f"{'' if rw is None else f'{rw:.2f}'} |")
    return lines


def cpu_line():
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from bench_targets import cpu_line as line
    return line()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small inputs: a smoke test")
    parser.add_argument("--out", help="append the report to this file")
    opts = parser.parse_args(argv)
    from npool._cpu import selected_isa
    name, isa, mhz = cpu_line()
    header = [f"# npool.jax on the CPU ({datetime.date.today()})", "",
              f"{name} ({isa}), {npool.get_num_threads()} threads, {selected_isa()} kernels; "
              f"jax {jax.__version__}, Python {platform.python_version()}; FFI handler "
              f"registered: {_ffi.available()}; medians of {opts.repeats} interleaved rounds", ""]
    emit(header + run(opts.repeats, opts.quick, progress=lambda m: print(m, flush=True)),
         opts.out)


if __name__ == "__main__":
    main()
