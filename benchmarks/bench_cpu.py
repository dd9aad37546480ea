"""CPU benchmark: SoftPool2d 2x2/2 on a (32, 64, 112, 112) float32 array, side by side in one
process with what a user would otherwise run.

    python benchmarks/bench_cpu.py [--repeats 9] [--shape 32 64 112 112] [--out FILE]

Rows, for C-contiguous and channels-last memory:
  copy, all threads    a copy of the input on npool's thread count (torch's copy_, which
                       spreads over its threads): the memory-bandwidth floor
  numpy.copyto         the same copy on one thread (numpy does not thread it)
  npool fwd            npool.soft_pool2d_forward
  npool fwd+bwd        npool.soft_pool2d_forward + npool.soft_pool2d_backward
  npool ... (out=)     the same writing into buffers reused every round (a training loop)
  torch composite fwd  avg_pool2d(x * exp(x)) / avg_pool2d(exp(x))
  torch composite f+b  the same through autograd (forward + backward)
  torch max_pool2d     torch.nn.functional.max_pool2d (fwd, and fwd+bwd through autograd)
  torch.compile ...    the composite compiled by torch.compile (Inductor fuses it), and its
                       max-subtracted form (exp(x - max of the window), which does not
                       overflow), with --compiled
Every case runs once per round, rounds interleave the cases, and the table reports medians and
ratios (the machines are shared and noisy: compare ratios, not absolute times).
"""
import argparse
import datetime
import os
import platform
import sys

import numpy as np

import npool
from npool._cpu import selected_isa

from _report import interleaved_medians_ms


def channels_last(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def composites(torch, F):
    """The SoftPool 2x2/2 composites a PyTorch user can write: plain (overflows to NaN once
    exp(x) does, from x ~ 89 in float32) and max-subtracted."""
    def plain(v):
        e = torch.exp(v)
        return F.avg_pool2d(v * e, 2) / F.avg_pool2d(e, 2)

    def max_subtracted(v):
        top = F.interpolate(F.max_pool2d(v, 2), size=v.shape[-2:], mode="nearest")
        e = torch.exp(v - top)
        return F.avg_pool2d(v * e, 2) / F.avg_pool2d(e, 2)

    return plain, max_subtracted


def make_cases(x, torch, F, compiled=False):
    """name -> zero-argument callable, for one memory layout of x; ``compiled`` adds the
    torch.compile'd composites (compiled on the first call)."""
    g_np = np.random.default_rng(1).standard_normal(
        npool.soft_pool2d_forward(x, 2).shape).astype(np.float32)
    if not x.flags.c_contiguous:
        g_np = channels_last(g_np)
    dst = np.empty_like(x)  # same memory layout as x
    xt = torch.from_numpy(x)  # shares memory and strides (channels-last stays channels-last)
    dst_t = torch.from_numpy(dst)
    gt = torch.from_numpy(g_np)

    def npool_fb():
        npool.soft_pool2d_forward(x, 2)
        npool.soft_pool2d_backward(g_np, x, 2)

    # A training loop's form: the same output buffers every step (out=), no page faults on
    # fresh memory.
    y_buffer = np.empty_like(g_np)
    grad_buffer = np.empty_like(x)

    def npool_fwd_out():
        npool.soft_pool2d_forward(x, 2, out=y_buffer)

    def npool_fb_out():
        npool.soft_pool2d_forward(x, 2, out=y_buffer)
        npool.soft_pool2d_backward(g_np, x, 2, out=grad_buffer)

    composite, max_subtracted = composites(torch, F)

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(xt)
        return run

    def forward_backward(fn):
        def run():
            v = xt.detach().requires_grad_(True)
            fn(v).backward(gt)
        return run

    def maxpool_fwd():
        with torch.no_grad():
            F.max_pool2d(xt, 2)

    def maxpool_fb():
        v = xt.detach().requires_grad_(True)
        F.max_pool2d(v, 2).backward(gt)

    # Same math, checked once before timing.
    with torch.no_grad():
        np.testing.assert_allclose(npool.soft_pool2d_forward(x, 2), composite(xt).numpy(),
                                   rtol=1e-4, atol=1e-5)
    cases = {
        "copy, all threads": lambda: dst_t.copy_(xt),
        "numpy.copyto": lambda: np.copyto(dst, x),
        "npool fwd": lambda: npool.soft_pool2d_forward(x, 2),
        "npool fwd+bwd": npool_fb,
        "npool fwd (out=)": npool_fwd_out,
        "npool fwd+bwd (out=)": npool_fb_out,
        "torch composite fwd": forward(composite),
        "torch composite fwd+bwd": forward_backward(composite),
        "torch max_pool2d fwd": maxpool_fwd,
        "torch max_pool2d fwd+bwd": maxpool_fb,
    }
    if compiled:
        for name, fn in (("composite", composite), ("max-subtracted composite", max_subtracted)):
            compiled_fn = torch.compile(fn)
            cases[f"torch.compile {name} fwd"] = forward(compiled_fn)
            cases[f"torch.compile {name} fwd+bwd"] = forward_backward(compiled_fn)
    return cases


def targets(med, cells, threads):
    """Issue 28's targets for SoftPool 2x2/2 from the medians (seconds) of one layout, as
    report lines: bench_targets.py's checks (this script names PyTorch's cases its own way)."""
    from bench_targets import check_lines, cpu_line, local_checks
    ms = {name: seconds * 1e3 for name, seconds in med.items()}
    ms.update({f"max_pool {kind}": ms[f"torch max_pool2d {kind}"] for kind in ("fwd", "fwd+bwd")})
    return check_lines(local_checks(ms, cells, threads, cpu_line()[2]))


def time_cases(cases, repeats):
    """Median seconds of each case over interleaved rounds, after a warm-up."""
    for fn in cases.values():
        fn()
    return {name: ms / 1e3 for name, ms in interleaved_medians_ms(cases, repeats).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--shape", type=int, nargs=4, default=[32, 64, 112, 112])
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("--compiled", action="store_true",
                        help="add the torch.compile'd composites (compiling takes a while)")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    threads = npool.get_num_threads()
    torch.set_num_threads(threads)
    x = np.random.default_rng(0).standard_normal(args.shape).astype(np.float32)

    lines = [
        f"# npool CPU benchmark, {datetime.date.today()}",
        f"# {cpu_name()}, {os.cpu_count()} CPUs; npool {npool.__version__} "
        f"({selected_isa()} kernels, {threads} threads); torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); numpy {np.__version__}; Python "
        f"{platform.python_version()}",
        f"# SoftPool2d kernel 2, stride 2, input {tuple(args.shape)} float32, "
        f"median of {args.repeats} interleaved rounds",
        "",
    ]
    summary = []
    for layout, xl in (("contiguous", x), ("channels_last", channels_last(x))):
        med = time_cases(make_cases(xl, torch, F, args.compiled), args.repeats)
        copy = med["copy, all threads"]
        lines.append(f"## {layout}")
        lines.append(f"{'case':<40}{'median ms':>11}{'x copy':>10}{'npool speedup':>15}")
        for name, t in med.items():
            if name.startswith("npool") or "copy" in name:
                speed = ""
            else:
                ref = med["npool fwd+bwd (out=)" if "bwd" in name else "npool fwd (out=)"]
                speed = f"{t / ref:.1f}x"
            lines.append(f"{name:<40}{t * 1e3:>11.2f}{t / copy:>10.2f}{speed:>15}")
        lines.append("")
        summary.append(f"{layout}:")
        summary.extend(targets(med, int(np.prod(args.shape)), threads))
    lines.append("## targets (issue 28)")
    lines.extend(summary)
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    sys.exit(main())
