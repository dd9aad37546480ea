"""CPU benchmark of Max-Entropy pooling: 2x2/2 on a (32, 64, 112, 112) float32 array with a
per-sample-and-channel temperature (N, C, 1, 1), as GFGP gives, side by side in one process with
SoftPool on the same input and the same math composed from PyTorch ops.

    python benchmarks/bench_maxent.py [--repeats 7] [--out FILE]

Rows, for C-contiguous and channels-last memory:
  npool SoftPool fwd / fwd+bwd      npool.soft_pool2d_forward (+ backward)
  npool Max-Ent fwd / fwd+bwd       npool.maxent_pool2d_forward (+ backward, grad_x and grad_lam)
  torch composite fwd / f+b         e = exp(lam x); avg_pool2d(x e) / avg_pool2d(e), autograd
  torch.compile ... fwd / f+b       with --compiled: that composite compiled by torch.compile,
                                    and its max-subtracted form (exp(lam x - window max))
Target: Max-Ent within 10% of SoftPool's time (the same kernel plus one multiply per cell).
"""
import argparse
import datetime

import numpy as np
import torch
import torch.nn.functional as F

import npool
from _report import emit, interleaved_medians_ms


def channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def composites():
    """The Max-Ent 2x2/2 composites a PyTorch user can write: plain and max-subtracted."""
    def plain(v, l):
        e = torch.exp(l * v)
        return F.avg_pool2d(v * e, 2) / F.avg_pool2d(e, 2)

    def max_subtracted(v, l):
        z = l * v
        e = torch.exp(z - F.interpolate(F.max_pool2d(z, 2), size=z.shape[-2:], mode="nearest"))
        return F.avg_pool2d(v * e, 2) / F.avg_pool2d(e, 2)

    return plain, max_subtracted


def cases(x, lam, compiled=False):
    y = npool.soft_pool2d_forward(x, 2)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    if not x.flags.c_contiguous:
        g = channels_last(g)
    xt, lt, gt = torch.from_numpy(x), torch.from_numpy(lam), torch.from_numpy(g)
    composite, max_subtracted = composites()

    def forward_backward(fn):
        def run():
            v, l = xt.detach().requires_grad_(True), lt.detach().requires_grad_(True)
            fn(v, l).backward(gt)
        return run

    y_buffer, grad_buffer = np.empty_like(g), np.empty_like(x)  # reused: a training loop

    def maxent_out():
        npool.maxent_pool2d_forward(x, lam, 2, out=y_buffer)

    def maxent_fb_out():
        npool.maxent_pool2d_forward(x, lam, 2, out=y_buffer)
        npool.maxent_pool2d_backward(g, x, lam, 2, out=(grad_buffer, None))

    table = {
        "npool Max-Ent fwd (out=)": maxent_out,
        "npool Max-Ent fwd+bwd (out=)": maxent_fb_out,
        "npool SoftPool fwd": lambda: npool.soft_pool2d_forward(x, 2),
        "npool SoftPool fwd+bwd": lambda: (npool.soft_pool2d_forward(x, 2),
                                           npool.soft_pool2d_backward(g, x, 2)),
        "npool Max-Ent fwd": lambda: npool.maxent_pool2d_forward(x, lam, 2),
        "npool Max-Ent fwd+bwd": lambda: (npool.maxent_pool2d_forward(x, lam, 2),
                                          npool.maxent_pool2d_backward(g, x, lam, 2)),
        "torch composite fwd": lambda: composite(xt, lt),
        "torch composite f+b": forward_backward(composite),
    }
    if compiled:
        for name, fn in (("composite", composite), ("max-subtracted composite", max_subtracted)):
            compiled_fn = torch.compile(fn)
            table[f"torch.compile {name} fwd"] = lambda f=compiled_fn: f(xt, lt)
            table[f"torch.compile {name} f+b"] = forward_backward(compiled_fn)
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out")
    parser.add_argument("--compiled", action="store_true",
                        help="add the torch.compile'd composites (compiling takes a while)")
    opts = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64, 112, 112)).astype(np.float32)
    lam = rng.uniform(0.5, 1.5, (32, 64, 1, 1)).astype(np.float32)
    lines = [f"# npool Max-Ent pooling, CPU, {datetime.datetime.now():%Y-%m-%d %H:%M}",
             f"# threads: npool {npool.get_num_threads()}, torch {torch.get_num_threads()}; "
             f"median of {opts.repeats}"]
    for layout, a in (("contiguous", x), ("channels_last", channels_last(x))):
        table = cases(a, lam, opts.compiled)
        for fn in table.values():  # warm up (and compile)
            fn()
        ms = interleaved_medians_ms(table, opts.repeats)
        lines.append(f"\n## {layout}")
        lines.append(f"{'case':<26}{'ms':>9}{'/ SoftPool':>12}{'composite /':>13}")
        for name, value in ms.items():
            kind = "fwd+bwd" if ("bwd" in name or "f+b" in name) else "fwd"
            soft = ms["npool SoftPool " + kind]
            comp = ms["torch composite " + ("f+b" if kind == "fwd+bwd" else "fwd")]
            lines.append(f"{name:<26}{value:9.2f}{value / soft:12.2f}{comp / value:13.2f}")
    emit(lines, opts.out)


if __name__ == "__main__":
    main()
