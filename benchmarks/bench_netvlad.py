"""CPU benchmark of the NetVLAD layer at LOUPE's sizes, side by side in one process with the
same math in plain PyTorch (einsum + F.normalize, differentiated by autograd).

    python benchmarks/bench_netvlad.py [--repeats 7] [--out FILE]

Input (B, M, D) = (64, 100, 1024) float32, K = 64 clusters, output 1024, gating and BatchNorm on
(LOUPE's defaults), training mode. Both sides share everything but the pool: the assignment
softmax(BN(x W)), the projection to 1024 and the Context Gating are the same torch code and the
same weights; the pool is npool.torch.netvlad_pool on one side and

    v = einsum("bmk,bmd->bdk", a, x) - a.sum(1)[:, None] * c
    v = F.normalize(F.normalize(v, dim=1).flatten(1), dim=1)

on the other. Rows: the whole layer and the pool alone, forward and forward+backward (the
backward of x and every parameter). Time: medians over interleaved rounds, torch / npool (above
1: npool is faster). Peak memory: how far one call raises the resident set above where it
started (the kernel's peak VmHWM, reset before the call), each case in a fresh subprocess
(tracemalloc does not see torch's allocations); Linux only. Compare ratios, not absolute times: the machines are shared.
"""
import argparse
import datetime
import json
import platform
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

import npool
import npool.torch as nt
from _report import emit, interleaved_medians_ms

B, M, D, K, OUT = 64, 100, 1024, 64, 1024
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain_netvlad_pool(x, a, c):
    """NetVLAD as a user would write it in PyTorch (eps as TensorFlow's l2_normalize)."""
    v = torch.einsum("bmk,bmd->bdk", a, x) - a.sum(1)[:, None, :] * c
    v = F.normalize(v, dim=1, eps=1e-6)
    return F.normalize(v.flatten(1), dim=1, eps=1e-6)


def setup(device="cpu", sizes=(B, M, D, K, OUT)):
    """The layer, an input and its assignments, on ``device`` (bench_gpu.py uses "cuda"), at
    ``sizes`` (B, M, D, K, output; LOUPE's by default)."""
    b, m, d, k, out = sizes
    torch.manual_seed(0)
    layer = nt.NetVLAD(d, m, k, out).to(device)
    x = torch.randn(b, m, d, device=device)
    a = layer.assignment(x).detach()
    return layer, x, a


def cases(layer, x, a):
    """name -> (npool callable, torch callable)."""
    c = layer.cluster_weights2

    def layer_forward(pool):
        def run(x):
            pooled = pool(x, layer.assignment(x), c)
            return layer.context_gating(pooled @ layer.hidden1_weights)
        return run

    def forward(fn, *inputs):
        def run():
            with torch.no_grad():
                fn(*inputs)
        return run

    def forward_backward(fn, *inputs):
        def run():
            layer.zero_grad(set_to_none=True)
            leaves = [t.detach().requires_grad_() for t in inputs]
            fn(*leaves).sum().backward()
        return run

    npool_layer, plain_layer = layer_forward(nt.netvlad_pool), layer_forward(plain_netvlad_pool)
    return {
        "layer fwd": (forward(npool_layer, x), forward(plain_layer, x)),
        "layer fwd+bwd": (forward_backward(npool_layer, x), forward_backward(plain_layer, x)),
        "pool fwd": (forward(nt.netvlad_pool, x, a, c), forward(plain_netvlad_pool, x, a, c)),
        "pool fwd+bwd": (forward_backward(nt.netvlad_pool, x, a, c),
                         forward_backward(plain_netvlad_pool, x, a, c)),
    }


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure_peak(case, side):
    """In this (fresh) process: the growth of resident memory over the second call of ``case``
    on ``side`` above the resident memory before it (MiB). The peak (VmHWM) is reset first through
    /proc/self/clear_refs, after glibc gave its free memory back, so set-up does not count."""
    import ctypes
    layer, x, a = setup()
    fn = cases(layer, x, a)[case][0 if side == "npool" else 1]
    fn()  # one-time costs (lazy imports, thread pools) are not the op's memory
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def peak_mib(case, side):
    """``measure_peak`` in a fresh process, so earlier cases leave nothing behind."""
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import bench_netvlad as b; "
            f"print(json.dumps(b.measure_peak({case!r}, {side!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out")
    opts = parser.parse_args()
    layer, x, a = setup()
    table = cases(layer, x, a)
    for npool_fn, torch_fn in table.values():  # warm up both sides
        npool_fn(), torch_fn()
    flat = {(name, side): fn for name, pair in table.items()
            for side, fn in zip(("npool", "torch"), pair)}
    ms = interleaved_medians_ms(flat, opts.repeats)
    lines = [f"# npool NetVLAD layer, CPU, {datetime.datetime.now():%Y-%m-%d %H:%M}",
             f"# {platform.processor() or platform.machine()} | npool threads "
             f"{npool.get_num_threads()} | torch threads {torch.get_num_threads()} | "
             f"median of {opts.repeats}",
             f"\n## (B, M, D) = {(B, M, D)} float32, K = {K}, output {OUT}, gating + BatchNorm, "
             "training mode",
             f"{'case':<16}{'npool ms':>10}{'torch ms':>10}{'torch/npool':>13}"
             f"{'npool MiB':>11}{'torch MiB':>11}{'torch/npool':>13}"]
    for name in table:
        t_np, t_torch = ms[name, "npool"], ms[name, "torch"]
        m_np, m_torch = peak_mib(name, "npool"), peak_mib(name, "torch")
        lines.append(f"{name:<16}{t_np:10.1f}{t_torch:10.1f}{t_torch / t_np:13.2f}"
                     f"{m_np:11.0f}{m_torch:11.0f}{m_torch / max(m_np, 1):13.2f}")
    emit(lines, opts.out)


if __name__ == "__main__":
    main()
