"""GPU benchmark: SoftPool2d 2x2/2 on CUDA tensors, side by side in one process with what a user
would otherwise run, timed with CUDA events after warm-up.

    python benchmarks/bench_gpu.py [--repeats 50] [--out FILE]

For (32, 64, 112, 112) and (20, 32, 128, 128), float32 and float16, C-contiguous and
channels-last, the rows are:
  d2d copy             x.copy_() into a same-shaped tensor: the bandwidth ceiling
  npool fwd            npool.soft_pool2d_forward on the tensor, through a version-3
                       __cuda_array_interface__ naming torch's current stream (asynchronous)
  npool fwd+bwd        npool.soft_pool2d_forward + npool.soft_pool2d_backward, the same way
  npool Max-Ent fwd    npool.maxent_pool2d_forward with a (N, C, 1, 1) lam on the GPU
  npool fwd (v2)       npool.soft_pool2d_forward on the tensor itself: torch's interface names
                       no stream, so npool synchronises the device before and after
  torch composite fwd  avg_pool2d(x * exp(x)) / avg_pool2d(exp(x))
  torch composite f+b  the same through autograd
  torch max_pool2d     F.max_pool2d (fwd, and fwd+bwd through autograd)
Then the global pools (max, avg, LSE, k-max 10%) on (64, 512, 14, 14) and (8, 64, 112, 112)
float32 against adaptive_max_pool2d, mean, logsumexp and topk.
Then the NetVLAD layer and pool of bench_netvlad.py (LOUPE's sizes) on CUDA tensors, npool's
kernels against the same math in plain PyTorch (einsum + F.normalize, cuBLAS), time only.
Columns: median time, bandwidth (bytes that must move / time: each input read once, each output
written once), that bandwidth as a share of the copy's, and time relative to npool.
"""
import argparse
import datetime
import sys

import numpy as np
import torch
import torch.nn.functional as F

import npool
from _report import emit


class OnStream:
    """A tensor seen through a version-3 interface naming torch's current stream."""

    def __init__(self, tensor):
        self.tensor = tensor
        cai = dict(tensor.__cuda_array_interface__, version=3)
        cai["stream"] = torch.cuda.current_stream().cuda_stream or 1  # 1: the legacy default
        self.__cuda_array_interface__ = cai


def median_ms(fn, repeats, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def cases(x):
    """name -> (callable, bytes that must move)."""
    item = x.element_size()
    n_in = x.numel()
    n_out = n_in // 4
    fwd_bytes = (n_in + n_out) * item
    bwd_bytes = (2 * n_in + n_out) * item  # read x and grad_out, write grad_x
    dst = torch.empty_like(x)
    x_v3 = OnStream(x)
    g = torch.randn_like(F.avg_pool2d(x, 2))
    g_v3 = OnStream(g)
    x_grad = x.detach().clone().requires_grad_(True)

    def npool_fb():
        npool.soft_pool2d_forward(x_v3, 2)
        npool.soft_pool2d_backward(g_v3, x_v3, 2)

    def composite(v):
        e = torch.exp(v)
        return F.avg_pool2d(v * e, 2) / F.avg_pool2d(e, 2)

    def composite_fb():
        composite(x_grad).backward(g)

    def max_fb():
        F.max_pool2d(x_grad, 2).backward(g)

    lam = torch.rand(x.shape[0], x.shape[1], 1, 1, device="cuda", dtype=x.dtype) + 0.5
    lam_v3 = OnStream(lam)
    return {
        "d2d copy": (lambda: dst.copy_(x), 2 * n_in * item),
        "npool Max-Ent fwd": (lambda: npool.maxent_pool2d_forward(x_v3, lam_v3, 2), fwd_bytes),
        "npool fwd": (lambda: npool.soft_pool2d_forward(x_v3, 2), fwd_bytes),
        "npool fwd+bwd": (npool_fb, fwd_bytes + bwd_bytes),
        "npool fwd (v2)": (lambda: npool.soft_pool2d_forward(x, 2), fwd_bytes),
        "torch composite fwd": (lambda: composite(x), fwd_bytes),
        "torch composite f+b": (composite_fb, fwd_bytes + bwd_bytes),
        "torch max_pool2d fwd": (lambda: F.max_pool2d(x, 2), fwd_bytes),
        "torch max_pool2d f+b": (max_fb, fwd_bytes + bwd_bytes),
    }


def global_cases(x):
    """Global pools on (N, C, H, W): name -> (callable, bytes that must move, torch name)."""
    item = x.element_size()
    read = x.numel() * item
    out = x.shape[0] * x.shape[1] * item
    x_v3 = OnStream(x)
    k = max(1, int(0.1 * x[0, 0].numel() + 1e-6))
    return {
        "d2d copy": (lambda: torch.empty_like(x).copy_(x), 2 * read),
        "npool max": (lambda: npool.global_max_pool_forward(x_v3), read + out),
        "torch adaptive_max_pool2d": (lambda: F.adaptive_max_pool2d(x, 1), read + out),
        "npool avg": (lambda: npool.global_avg_pool_forward(x_v3), read + out),
        "torch mean": (lambda: x.mean((2, 3)), read + out),
        "npool LSE": (lambda: npool.global_lse_pool_forward(x_v3), read + out),
        "torch logsumexp": (lambda: torch.logsumexp(x.flatten(2), 2), read + out),
        "npool k-max 10%": (lambda: npool.global_kmax_pool_forward(x_v3, k=0.1), read + out),
        "torch topk 10%": (lambda: x.flatten(2).topk(k, 2).values.mean(2), read + out),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", help="also write the report to this file")
    opts = parser.parse_args()
    if not torch.cuda.is_available() or not npool.cuda_available():
        sys.exit("bench_gpu.py needs a CUDA GPU, PyTorch with CUDA and PyCUDA")

    lines = [f"# npool GPU benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}",
             f"# device: {torch.cuda.get_device_name()} | torch {torch.__version__} | "
             f"npool {npool.__version__} | median of {opts.repeats} after warm-up"]
    torch.manual_seed(0)
    for shape in ((32, 64, 112, 112), (20, 32, 128, 128)):
        for dtype in (torch.float32, torch.float16):
            for layout in ("contiguous", "channels_last"):
                x = torch.randn(shape, device="cuda", dtype=dtype)
                if layout == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                runs = cases(x)
                table = {name: median_ms(fn, opts.repeats) for name, (fn, _) in runs.items()}
                bytes_moved = {name: b for name, (_, b) in runs.items()}
                copy_bw = bytes_moved["d2d copy"] / table["d2d copy"] / 1e6
                lines.append(f"\n## {tuple(shape)} {str(dtype).replace('torch.', '')} {layout}")
                lines.append(f"{'case':<22}{'ms':>9}{'GB/s':>9}{'% copy BW':>11}"
                             f"{'/ npool':>9}")
                for name, ms in table.items():
                    gbs = bytes_moved[name] / ms / 1e6
                    base = "npool fwd+bwd" if "f+b" in name or "bwd" in name else "npool fwd"
                    ratio = "" if name == "d2d copy" else f"{ms / table[base]:9.2f}"
                    lines.append(f"{name:<22}{ms:9.3f}{gbs:9.0f}{100 * gbs / copy_bw:10.0f}%"
                                 f"{ratio}")
                del x, runs
                torch.cuda.empty_cache()
    for shape in ((64, 512, 14, 14), (8, 64, 112, 112)):
        x = torch.randn(shape, device="cuda")
        runs = global_cases(x)
        table = {name: median_ms(fn, opts.repeats) for name, (fn, _) in runs.items()}
        copy_bw = runs["d2d copy"][1] / table["d2d copy"] / 1e6
        lines.append(f"\n## global pools {tuple(shape)} float32 contiguous (forward)")
        lines.append(f"{'case':<26}{'ms':>9}{'GB/s':>9}{'% copy BW':>11}")
        for name, ms in table.items():
            gbs = runs[name][1] / ms / 1e6
            lines.append(f"{name:<26}{ms:9.3f}{gbs:9.0f}{100 * gbs / copy_bw:10.0f}%")
    lines += netvlad_lines(opts.repeats)
    emit(lines, opts.out)


def netvlad_lines(repeats):
    """The NetVLAD cases of bench_netvlad.py on the GPU: torch / npool time ratios."""
    import bench_netvlad
    layer, x, a = bench_netvlad.setup("cuda")
    table = bench_netvlad.cases(layer, x, a)
    lines = [f"\n## NetVLAD (B, M, D) = {(bench_netvlad.B, bench_netvlad.M, bench_netvlad.D)} "
             f"float32, K = {bench_netvlad.K}, output {bench_netvlad.OUT}, gating + BatchNorm, "
             "training mode",
             f"{'case':<16}{'npool ms':>10}{'torch ms':>10}{'torch/npool':>13}"]
    for name, (npool_fn, torch_fn) in table.items():
        t_np, t_torch = median_ms(npool_fn, repeats), median_ms(torch_fn, repeats)
        lines.append(f"{name:<16}{t_np:10.2f}{t_torch:10.2f}{t_torch / t_np:13.2f}")
    return lines


if __name__ == "__main__":
    main()
