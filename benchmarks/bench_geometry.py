"""CPU benchmark of the local pools' window geometries: the fast paths of the regular windows
(PyTorch's symmetric padding, the asymmetric padding of "same", which the same kernels take,
and adaptive sizes that divide the input's) against the kernels' general path (dilated and
adaptive windows: per-axis window tables, lines along C), against PyTorch's adaptive average
and max pooling (what a user would otherwise run) and the floor of one pass over x (a copy).

    python benchmarks/bench_geometry.py [--repeats 9] [--quick] [--out FILE]

SoftPool, float32, npool's default threads, (32, 64, 112, 112) channels-first (C order) and
channels-last memory; "fwd" the forward, "bwd" the backward for a cotangent of ones. Rounds
interleave the cases; medians in ms.
"""
import argparse
import datetime
import pathlib
import sys

import numpy as np

import npool

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _report import emit, interleaved_medians_ms  # noqa: E402
from bench_targets import cpu_line  # noqa: E402

# (name, window arguments, dilation, path); an adaptive pool's arguments: ("adaptive", size)
WINDOWS = (
    ("2x2/2", (2, 2, 0), 1, "fast"),
    ("3x3/2 padding 1", (3, 2, 1), 1, "fast"),
    ("3x3/2 'same'", (3, 2, "same"), 1, "fast"),
    ("3x3/1 'same'", (3, 1, "same"), 1, "fast"),
    ("3x3/2 padding 1, dilation 2", (3, 2, 1), 2, "general"),
    ("3x3/1 'same', dilation 2", (3, 1, "same"), 2, "general"),
    ("3x3/2 (55 x 55 outputs)", (3, 2, 0), 1, "fast"),
    ("adaptive 55 x 55 (windows of 3, overlapping by 1)", ("adaptive", 55), 1, "general"),
    ("adaptive 56 x 56 (sizes divide: 2x2/2)", ("adaptive", 56), 1, "fast"),
    ("adaptive 7 x 7 (sizes divide: 16x16/16)", ("adaptive", 7), 1, "fast"),
    ("adaptive 6 x 6 (windows of 19-20)", ("adaptive", 6), 1, "general"),
)
# what a PyTorch user runs for the adaptive sizes (same process, npool's thread count)
TORCH_ADAPTIVE = (55, 7)


def _pool(x, args, dilation):
    if args[0] == "adaptive":
        return npool.adaptive_soft_pool2d_forward(x, args[1])
    return npool.soft_pool2d_forward(x, *args, dilation=dilation)


def _pool_backward(g, x, args, dilation):
    if args[0] == "adaptive":
        return npool.adaptive_soft_pool2d_backward(g, x, args[1])
    return npool.soft_pool2d_backward(g, x, *args, dilation=dilation)


def _torch_cases(timed, layout, x):
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(npool.get_num_threads())
    xt = torch.from_numpy(x)
    for size in TORCH_ADAPTIVE:
        for kind, function in (("avg", torch.nn.functional.adaptive_avg_pool2d),
                               ("max", torch.nn.functional.adaptive_max_pool2d)):
            name = f"torch adaptive_{kind}_pool2d {size} x {size}"
            leaf = xt.clone().requires_grad_()
            y = function(leaf, size)
            g = torch.ones_like(y)
            timed[(layout, name, "fwd")] = lambda f=function, s=size: f(xt, s)
            timed[(layout, name, "bwd")] = lambda f=function, s=size, leaf=leaf, g=g: \
                torch.autograd.grad(f(leaf, s), leaf, g)


def cases(quick):
    shape = (4, 16, 56, 56) if quick else (32, 64, 112, 112)
    rng = np.random.default_rng(0)
    x_first = rng.standard_normal(shape).astype(np.float32)
    x_last = np.moveaxis(np.ascontiguousarray(np.moveaxis(x_first, 1, -1)), -1, 1)
    timed = {}
    for layout, x in (("channels-first", x_first), ("channels-last", x_last)):
        copy_out = np.empty_like(x)
        timed[(layout, "copy of x", "floor")] = lambda x=x, o=copy_out: np.copyto(o, x)
        for name, args, dilation, _ in WINDOWS:
            y = _pool(x, args, dilation)
            g = np.ones_like(y)
            timed[(layout, name, "fwd")] = lambda x=x, a=args, d=dilation: _pool(x, a, d)
            timed[(layout, name, "bwd")] = lambda x=x, a=args, d=dilation, g=g: \
                _pool_backward(g, x, a, d)
        _torch_cases(timed, layout, x)
    return shape, timed


def run(repeats, quick):
    shape, timed = cases(quick)
    ms = interleaved_medians_ms(timed, repeats)
    paths = {name: path for name, _, _, path in WINDOWS}
    paths.update({name: "PyTorch" for (_, name, _) in ms if name.startswith("torch ")})
    lines = [f"SoftPool {shape} float32", "",
             "| layout | window | path | fwd ms | bwd ms | fwd / copy | bwd / copy |",
             "|---|---|---|---|---|---|---|"]
    for layout in ("channels-first", "channels-last"):
        copy = ms[(layout, "copy of x", "floor")]
        lines.append(f"| {layout} | copy of x (the floor) | - | {copy:.2f} | | | |")
        for name, path in paths.items():
            fwd, bwd = ms[(layout, name, "fwd")], ms[(layout, name, "bwd")]
            lines.append(f"| {layout} | {name} | {path} | {fwd:.2f} | {bwd:.2f} | "
                         f"{fwd / copy:.1f}x | {bwd / copy:.1f}x |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="small inputs: a smoke test")
    parser.add_argument("--out", help="append the report to this file")
    opts = parser.parse_args(argv)
    from npool._cpu import selected_isa
    name, isa, _ = cpu_line()
    header = [f"# npool window geometries on the CPU ({datetime.date.today()})", "",
              f"{name} ({isa}), {npool.get_num_threads()} threads, {selected_isa()} kernels; "
              f"medians of {opts.repeats} interleaved rounds", ""]
    emit(header + run(opts.repeats, opts.quick) + [""], opts.out)


if __name__ == "__main__":
    main()
