"""CPU benchmark of the global pools, side by side in one process with the PyTorch code a user
would otherwise write, on the same float32 arrays.

    python benchmarks/bench_global.py [--repeats 7] [--out FILE]

For (64, 512, 14, 14) and (8, 64, 112, 112), C-contiguous, forward and forward+backward:
  k-max (k = 10%)   npool.global_kmax_pool      vs x.flatten(2).topk(k).values.mean(2)
  WELDON (10%/10%)  npool.weldon_pool           vs topk(k) + topk(k, largest=False) means
  LSE (beta = 1)    npool.global_lse_pool       vs torch.logsumexp(x.flatten(2), 2) - log(n)
  max               npool.global_max_pool       vs F.adaptive_max_pool2d(x, 1)
  avg               npool.global_avg_pool       vs x.mean((2, 3))
  GeM (p = 3, per channel, learnt)  npool.global_gem_pool
                    vs x.clamp(min=1e-6).pow(p).mean((2, 3)).pow(1 / p) (fwd+bwd: grad_x and grad_p)
The torch backward runs through autograd; npool's selecting pools pass the forward's indices to
the backward, as the adapters do. Rounds interleave the cases; the table gives medians
and torch time / npool time (above 1: npool is faster). Compare ratios, not absolute times.
"""
import argparse
import datetime
import math
import platform

import numpy as np
import torch
import torch.nn.functional as F

import npool
from _report import emit, interleaved_medians_ms


def cases(x_np):
    xt = torch.from_numpy(x_np)
    n = x_np[0, 0].size
    k = max(1, math.floor(0.1 * n + 1e-6))
    g_np = np.random.default_rng(1).standard_normal(x_np.shape[:2]).astype(np.float32)
    gt = torch.from_numpy(g_np)

    def torch_fb(fn):
        def run():
            v = xt.detach().requires_grad_(True)  # no copy: npool's cases copy nothing either
            fn(v).backward(gt)
        return run

    def kmax_t(v):
        return v.flatten(2).topk(k, dim=2).values.mean(2)

    def weldon_t(v):
        f = v.flatten(2)
        return f.topk(k, dim=2).values.mean(2) + f.topk(k, dim=2, largest=False).values.mean(2)

    def lse_t(v):
        return torch.logsumexp(v.flatten(2), 2) - math.log(n)

    def max_t(v):
        return F.adaptive_max_pool2d(v, 1).flatten(1)

    def avg_t(v):
        return v.mean((2, 3))

    p_np = np.full(x_np.shape[1], 3.0, np.float32)
    pt = torch.from_numpy(p_np).requires_grad_(True)

    def gem_t(v):
        shape = (-1,) + (1,) * (v.dim() - 2)
        return v.clamp(min=1e-6).pow(pt.reshape(shape)).mean((2, 3)).pow(1 / pt)

    def pair(forward, backward):
        return lambda: forward(x_np), lambda: (forward(x_np), backward(g_np, x_np))

    def selecting(forward, backward, **kwargs):
        """As the adapters run them: the forward's indices spare the backward a selection."""
        def fb():
            _, index = forward(x_np, return_indices=True, **kwargs)
            backward(g_np, x_np, indices=index, **kwargs)
        return lambda: forward(x_np, **kwargs), fb

    np_kmax = selecting(npool.global_kmax_pool_forward, npool.global_kmax_pool_backward, k=0.1)
    np_weldon = selecting(npool.weldon_pool_forward, npool.weldon_pool_backward, kmax=0.1)
    np_lse = pair(npool.global_lse_pool_forward, npool.global_lse_pool_backward)
    np_max = selecting(npool.global_max_pool_forward, npool.global_max_pool_backward)
    np_avg = pair(npool.global_avg_pool_forward, npool.global_avg_pool_backward)
    np_gem = (lambda: npool.global_gem_pool_forward(x_np, p_np),
              lambda: (npool.global_gem_pool_forward(x_np, p_np),
                       npool.global_gem_pool_backward(g_np, x_np, p_np)))
    out = {}
    for name, (npf, npfb), tf in [("k-max", np_kmax, kmax_t), ("WELDON", np_weldon, weldon_t),
                                  ("LSE", np_lse, lse_t), ("max", np_max, max_t),
                                  ("avg", np_avg, avg_t), ("GeM", np_gem, gem_t)]:
        out[f"{name} fwd"] = (npf, lambda tf=tf: tf(xt))
        out[f"{name} fwd+bwd"] = (npfb, torch_fb(tf))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out")
    opts = parser.parse_args()
    lines = [f"# npool global pools, CPU, {datetime.datetime.now():%Y-%m-%d %H:%M}",
             f"# {platform.processor() or platform.machine()} | npool threads "
             f"{npool.get_num_threads()} | torch threads {torch.get_num_threads()} | "
             f"median of {opts.repeats}"]
    for shape in ((64, 512, 14, 14), (8, 64, 112, 112)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        table = cases(x)
        flat = {(name, side): fn for name, pair in table.items()
                for side, fn in zip(("npool", "torch"), pair)}
        ms = interleaved_medians_ms(flat, opts.repeats)
        lines.append(f"\n## {shape} float32 contiguous")
        lines.append(f"{'case':<16}{'npool ms':>10}{'torch ms':>10}{'torch/npool':>13}")
        for name in table:
            a, b = ms[name, "npool"], ms[name, "torch"]
            lines.append(f"{name:<16}{a:10.2f}{b:10.2f}{b / a:13.2f}")
    emit(lines, opts.out)


if __name__ == "__main__":
    main()
