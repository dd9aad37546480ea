"""Issue 28's targets, measured side by side in one process: SoftPool and Max-Entropy pooling
against a copy of the input on all threads (the memory floor), PyTorch's max pooling and the
torch.compile'd composite, and the global pools where they trailed PyTorch.

    python benchmarks/bench_targets.py [--repeats 7] [--compiled] [--quick] [--out FILE]

Local pools, (32, 64, 112, 112) float32 (1d and 3d: the same number of cells), both memory
layouts, npool's and torch's thread counts equal:
  SoftPool, Max-Ent with a scalar lam and with lam per (N, C); windows 2x2/2 and 3x3/2
  padding 1:  forward (out=) <= 1.2x and forward + backward (out=) <= 2.5x the copy; no slower
  than F.max_pool2d forward and forward + backward, both allocating their results and npool
  writing into reused buffers (out=); with --compiled, >= 2x the torch.compile'd composite
  (avg_pool2d(x e) / avg_pool2d(e), e = exp(lam x)) forward + backward. Each row also gives the
  forward's cycles per input cell: time x clock x threads / cells, at the clock /proc/cpuinfo
  reports.
  SoftPool 1d (k = s = 2), 3d (2x2x2/2), 2d k = s = 3 and 2d 2x2/1: forward and forward +
  backward within 1.5x of max_pool1d / 3d / 2d.
Global pools: channels-last global max >= 1x F.adaptive_max_pool2d on (64, 512, 14, 14); k-max
and WELDON (10 %) forward + backward >= 3x the topk code on (64, 512, 14, 14); LSE's backward
reusing the forward's statistics (stats=) faster than recomputing them.

Every case of one group runs once per round, rounds interleave the cases (medians reported):
compare ratios, not absolute times; the machines are shared and noisy.
"""
import argparse
import datetime
import math
import os
import platform
import sys

import numpy as np

import npool
from npool._cpu import selected_isa

try:
    from npool._cpu import available_isas
except ImportError:  # npool before issue 28 (run to measure the 'before' side)
    def available_isas():
        return (selected_isa(),)

from _report import interleaved_medians_ms

WINDOWS = {"2x2/2": (2, 2, 0), "3x3/2 pad 1": (3, 2, 1)}


def cpu_line():
    """The CPU model, its vector ISA and clock (MHz, as /proc/cpuinfo reports it)."""
    name, mhz, flags = platform.processor() or "unknown CPU", None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    name = value.strip()
                elif key == "cpu MHz" and mhz is None:
                    mhz = float(value)
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    return name, isa, mhz


def channels_last(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)).transpose(
        (0, a.ndim - 1) + tuple(range(1, a.ndim - 1)))


def local_cases(x, lam, window, torch, F, compiled):
    """name -> callable for one op (lam None: SoftPool), window and layout of x."""
    k, s, p = window
    nd = x.ndim - 2
    fwd = getattr(npool, f"soft_pool{nd}d_forward" if lam is None else f"maxent_pool{nd}d_forward")
    bwd = getattr(npool, f"soft_pool{nd}d_backward" if lam is None else
                  f"maxent_pool{nd}d_backward")
    args = () if lam is None else (lam,)
    y = fwd(x, *args, k, s, p)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    g = channels_last(g) if not x.flags.c_contiguous else g
    y_out, gx_out = np.empty_like(g), np.empty_like(x)
    bwd_out = gx_out if lam is None else (gx_out, np.empty(np.shape(lam), np.float32))
    xt, gt = torch.from_numpy(x), torch.from_numpy(g)
    dst = torch.empty_like(xt)
    max_pool = getattr(F, f"max_pool{nd}d")

    def max_fwd():
        with torch.no_grad():
            max_pool(xt, k, s, p)

    def max_fb():
        v = xt.detach().requires_grad_(True)
        max_pool(v, k, s, p).backward(gt)

    cases = {
        "copy, all threads": lambda: dst.copy_(xt),
        "npool fwd": lambda: fwd(x, *args, k, s, p),
        "npool fwd (out=)": lambda: fwd(x, *args, k, s, p, out=y_out),
        "npool fwd+bwd": lambda: (fwd(x, *args, k, s, p), bwd(g, x, *args, k, s, p)),
        "npool fwd+bwd (out=)": lambda: (fwd(x, *args, k, s, p, out=y_out),
                                         bwd(g, x, *args, k, s, p, out=bwd_out)),
        "max_pool fwd": max_fwd,
        "max_pool fwd+bwd": max_fb,
    }
    if compiled and nd == 2:
        lam_t = 1.0 if lam is None else (lam if np.isscalar(lam) else torch.from_numpy(lam))

        def composite(v):
            e = torch.exp(lam_t * v)
            return F.avg_pool2d(v * e, k, s, p) / F.avg_pool2d(e, k, s, p)

        compiled_fn = torch.compile(composite)

        def compiled_fb():
            v = xt.detach().requires_grad_(True)
            compiled_fn(v).backward(gt)

        cases["torch.compile composite fwd+bwd"] = compiled_fb
    return cases


def local_checks(ms, cells, threads, mhz):
    """(what, value, target, met) for one op, window and layout; met None: information."""
    copy = ms["copy, all threads"]
    checks = [
        ("fwd (out=) / copy", ms["npool fwd (out=)"] / copy, "<= 1.2", None),
        ("fwd+bwd (out=) / copy", ms["npool fwd+bwd (out=)"] / copy, "<= 2.5", None),
    ]
    checks = [(w, v, t, v <= float(t[3:])) for w, v, t, _ in checks]
    for kind in ("fwd", "fwd+bwd"):
        for ours in (f"npool {kind}", f"npool {kind} (out=)"):
            ratio = ms[f"max_pool {kind}"] / ms[ours]
            checks.append((f"max_pool {kind} / {ours[6:]}", ratio, ">= 1", ratio >= 1))
    if "torch.compile composite fwd+bwd" in ms:
        ratio = ms["torch.compile composite fwd+bwd"] / ms["npool fwd+bwd (out=)"]
        checks.append(("compiled composite / fwd+bwd (out=)", ratio, ">= 2", ratio >= 2))
    if mhz:
        per_cell = ms["npool fwd (out=)"] * 1e-3 * mhz * 1e6 * threads / cells
        checks.append(("fwd cycles per input cell", per_cell, "", None))
    return checks


def other_window_checks(ms):
    checks = []
    for kind in ("fwd", "fwd+bwd"):
        ratio = ms[f"npool {kind}"] / ms[f"max_pool {kind}"]
        checks.append((f"npool {kind} / max_pool {kind}", ratio, "<= 1.5", ratio <= 1.5))
    return checks


def global_cases(x, torch, F):
    n = x[0, 0].size
    k = max(1, math.floor(0.1 * n + 1e-6))
    g = np.random.default_rng(1).standard_normal(x.shape[:2]).astype(np.float32)
    xt, gt = torch.from_numpy(x), torch.from_numpy(g)

    def torch_fb(fn):
        def run():
            v = xt.detach().requires_grad_(True)
            fn(v).backward(gt)
        return run

    def kmax_fb():
        _, index = npool.global_kmax_pool_forward(x, k, return_indices=True)
        npool.global_kmax_pool_backward(g, x, k, indices=index)

    def weldon_fb():
        _, index = npool.weldon_pool_forward(x, k, k, return_indices=True)
        npool.weldon_pool_backward(g, x, k, k, indices=index)

    def amax():
        with torch.no_grad():
            F.adaptive_max_pool2d(xt, 1)

    _, stats = npool.global_lse_pool_forward(x, 1.0, return_stats=True)
    lse_grad = np.empty_like(x)

    return {
        "npool max fwd": lambda: npool.global_max_pool_forward(x),
        "adaptive_max_pool2d fwd": amax,
        "npool k-max fwd+bwd": kmax_fb,
        "topk fwd+bwd": torch_fb(lambda v: v.flatten(2).topk(k).values.mean(2)),
        "npool WELDON fwd+bwd": weldon_fb,
        "two topk fwd+bwd": torch_fb(
            lambda v: v.flatten(2).topk(k).values.mean(2)
            + v.flatten(2).topk(k, largest=False).values.mean(2)),
        "npool LSE bwd (stats=)": lambda: npool.global_lse_pool_backward(
            g, x, 1.0, stats=stats, out=lse_grad),
        "npool LSE bwd (recomputing)": lambda: npool.global_lse_pool_backward(
            g, x, 1.0, out=lse_grad),
    }


def global_checks(ms, layout):
    checks = []
    if layout == "channels_last":
        ratio = ms["adaptive_max_pool2d fwd"] / ms["npool max fwd"]
        checks.append(("adaptive_max_pool2d / npool global max", ratio, ">= 1", ratio >= 1))
    for ours, theirs, what in (("npool k-max fwd+bwd", "topk fwd+bwd", "k-max"),
                               ("npool WELDON fwd+bwd", "two topk fwd+bwd", "WELDON")):
        ratio = ms[theirs] / ms[ours]
        checks.append((f"topk / npool {what} fwd+bwd", ratio, ">= 3", ratio >= 3))
    ratio = ms["npool LSE bwd (recomputing)"] / ms["npool LSE bwd (stats=)"]
    checks.append(("LSE bwd recomputing / reusing stats", ratio, "> 1", ratio > 1))
    return checks


def check_lines(checks):
    lines = []
    for what, value, target, met in checks:
        verdict = "" if met is None else ("met" if met else "MISSED")
        lines.append(f"  {what:<40}{value:8.2f}  {target:<7} {verdict}")
    return lines


def run(repeats, compiled=False, quick=False, progress=print):
    """The report's lines, and every (setting, what, value, target, met) check."""
    import torch
    import torch.nn.functional as F

    threads = npool.get_num_threads()
    torch.set_num_threads(threads)
    name, isa, mhz = cpu_line()
    shape = (4, 16, 56, 56) if quick else (32, 64, 112, 112)
    cells = math.prod(shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    lams = {"SoftPool": None, "Max-Ent, lam scalar": np.float32(0.7),
            "Max-Ent, lam (N, C)": rng.uniform(0.5, 1.5, shape[:2] + (1, 1)).astype(np.float32)}
    lines = [
        f"# npool issue-28 targets, {datetime.date.today()}",
        f"# {name} ({isa}), {os.cpu_count()} CPUs, {mhz or 0:.0f} MHz; npool {npool.__version__} "
        f"kernels {selected_isa()} (builds here: {', '.join(available_isas())}), {threads} "
        f"threads; torch {torch.__version__} ({torch.get_num_threads()} threads); Python "
        f"{platform.python_version()}",
        f"# medians of {repeats} interleaved rounds; local pools on {shape} float32", ""]
    results = []

    def report(setting, checks):
        lines.append(setting)
        lines.extend(check_lines(checks))
        results.extend((setting,) + c for c in checks)

    for op, lam in lams.items():
        for window_name, window in WINDOWS.items():
            for layout, a in (("contiguous", x), ("channels_last", channels_last(x))):
                setting = f"{op} {window_name} {layout}"
                progress(f"timing {setting}")
                cases = local_cases(a, lam, window, torch, F, compiled)
                for fn in cases.values():
                    fn()
                ms = interleaved_medians_ms(cases, repeats)
                report(setting, local_checks(ms, cells, threads, mhz))
    others = {"SoftPool 1d k=s=2": ((shape[0], shape[1], shape[2] * shape[3]), (2, 2, 0)),
              "SoftPool 3d 2x2x2/2": ((shape[0], shape[1], 16, shape[2] // 4, shape[3] // 4),
                                      (2, 2, 0)),
              "SoftPool 2d k=s=3": (shape, (3, 3, 0)),
              "SoftPool 2d 2x2/1": (shape, (2, 1, 0))}
    for setting, (other_shape, window) in others.items():
        a = rng.standard_normal(other_shape).astype(np.float32)
        for layout, b in (("contiguous", a), ("channels_last", channels_last(a))):
            progress(f"timing {setting} {layout}")
            cases = local_cases(b, None, window, torch, F, False)
            for fn in cases.values():
                fn()
            report(f"{setting} {layout}",
                   other_window_checks(interleaved_medians_ms(cases, repeats)))
    global_shape = (8, 64, 14, 14) if quick else (64, 512, 14, 14)
    g = rng.standard_normal(global_shape).astype(np.float32)
    for layout, b in (("contiguous", g), ("channels_last", channels_last(g))):
        progress(f"timing global pools {global_shape} {layout}")
        cases = global_cases(b, torch, F)
        for fn in cases.values():
            fn()
        report(f"global pools {global_shape} {layout}",
               global_checks(interleaved_medians_ms(cases, repeats), layout))
    met = sum(1 for r in results if r[-1] is True)
    missed = sum(1 for r in results if r[-1] is False)
    lines += ["", f"# {met} targets met, {missed} missed"]
    return lines, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compiled", action="store_true",
                        help="add the torch.compile'd composites (compiling takes minutes)")
    parser.add_argument("--quick", action="store_true", help="small inputs: a smoke test")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()
    lines, _ = run(args.repeats, args.compiled, args.quick,
                   progress=lambda m: print(m, file=sys.stderr, flush=True))
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    sys.exit(main())
