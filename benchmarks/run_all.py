"""Every npool CPU benchmark in one command: a summary table and a ratio plot.

    python benchmarks/run_all.py [--quick] [--compiled] [--repeats N] [--out DIR]

Runs in this process, with a progress line per case, each op family against what a user would
otherwise run, built by the per-family scripts (bench_cpu.py, bench_maxent.py,
bench_global.py, bench_netvlad.py, whose own reports say more):

  SoftPool 2x2/2      vs the PyTorch composite, max_pool2d (and with --compiled the
                      torch.compile'd composite, plain and max-subtracted); both layouts
  Max-Ent 2x2/2       vs its PyTorch composite (compiled ones with --compiled); both layouts
  global pools        vs topk / logsumexp / adaptive_max_pool2d / mean; two shapes
  NetVLAD             the pool and the LOUPE layer vs the same in plain PyTorch
  npool.jax           bench_jax.py: jitted, through XLA's FFI, vs the core on the same arrays,
                      pure_callback, XLA's composite, reduce_window max pooling (with jax)
  issue 28's targets  bench_targets.py: SoftPool and Max-Ent (2x2/2, 3x3/2 padding 1, both
                      layouts) against the copy, max_pool2d and the compiled composite, other
                      windows against max_pool1d/2d/3d, the trailing global pools; each
                      target met or missed

and writes under ``--out`` (default benchmarks/results): ``summary.md``, the table (npool ms,
the anchor's ms, anchor / npool: above 1, npool is faster; and npool / a copy of the input on
all threads for the local pools, the memory-traffic floor), and ``summary.png``, the ratios
as bars per case (log scale; needs matplotlib: ``pip install "npool[bench]"``). Cases of one family and
layout run interleaved, so drift hits all alike. ``--quick`` uses small inputs and 3 rounds: a
smoke test, whose ratios mean little.
"""
import argparse
import datetime
import os
import pathlib
import platform
import sys
import textwrap
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import npool  # noqa: E402
from _report import interleaved_medians_ms  # noqa: E402


class Summary:
    """The rows of the summary: (family, setting, case, npool ms, anchor, anchor ms, note)."""

    def __init__(self):
        self.rows = []

    def add(self, family, setting, ms, pairs, copy_ms=None):
        """``pairs``: (case label, npool case name, anchor label, anchor case name)."""
        for label, ours, anchor, theirs in pairs:
            if ours not in ms or theirs not in ms:
                continue
            note = f"{ms[ours] / copy_ms:.2f}x copy" if copy_ms else ""
            self.rows.append((family, setting, label, ms[ours], anchor, ms[theirs], note))

    def markdown(self, header):
        lines = header + ["", "| family | setting | case | npool ms | anchor | anchor ms | "
                          "anchor / npool | note |", "|---|---|---|---|---|---|---|---|"]
        for family, setting, label, ours, anchor, theirs, note in self.rows:
            lines.append(f"| {family} | {setting} | {label} | {ours:.2f} | {anchor} | "
                         f"{theirs:.2f} | {theirs / ours:.2f}x | {note} |")
        return "\n".join(lines) + "\n"

    def plot(self, path, title):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        labels = [f"{f} {s} {c}\nvs {a}" for f, s, c, _, a, _, _ in self.rows]
        ratios = [theirs / ours for _, _, _, ours, _, theirs, _ in self.rows]
        height = max(4.0, 0.32 * len(labels) + 1.2)
        figure, axes = plt.subplots(figsize=(11, height))
        colours = ["tab:green" if r >= 1 else "tab:red" for r in ratios]
        axes.barh(range(len(ratios)), ratios, color=colours)
        axes.set_xscale("log")
        axes.axvline(1.0, color="black", linewidth=0.8)
        axes.set_yticks(range(len(labels)), labels, fontsize=6)
        axes.invert_yaxis()
        axes.set_xlabel("anchor time / npool time (log scale; right of 1: npool is faster)")
        axes.set_title("\n".join(textwrap.wrap(title, 110)), fontsize=8)
        for i, r in enumerate(ratios):
            axes.text(r, i, f" {r:.2f}x", va="center", fontsize=6)
        figure.tight_layout()
        figure.savefig(path, dpi=130)
        plt.close(figure)


def _progress(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _time(cases, repeats, what):
    for name, fn in cases.items():  # warm up (and compile), one progress line per case
        start = time.perf_counter()
        fn()
        _progress(f"{what}: {name} ready ({time.perf_counter() - start:.2f} s)")
    _progress(f"{what}: timing {len(cases)} cases, {repeats} interleaved rounds")
    return interleaved_medians_ms(cases, repeats)


def _channels_last(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)).transpose(0, 3, 1, 2)


def soft_pool(summary, opts, torch, F):
    import bench_cpu
    shape = (4, 16, 56, 56) if opts.quick else (32, 64, 112, 112)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for layout, a in (("contiguous", x), ("channels_last", _channels_last(x))):
        ms = _time(bench_cpu.make_cases(a, torch, F, opts.compiled), opts.repeats,
                   f"SoftPool {layout}")
        pairs = []
        for kind in ("fwd", "fwd+bwd"):
            for anchor in ("torch composite", "torch max_pool2d",
                           "torch.compile composite", "torch.compile max-subtracted composite"):
                pairs.append((kind, f"npool {kind}", anchor.replace("torch ", ""),
                              f"{anchor} {kind}"))
            for anchor in ("torch max_pool2d", "torch.compile composite"):
                pairs.append((f"{kind} (out=)", f"npool {kind} (out=)",
                              anchor.replace("torch ", ""), f"{anchor} {kind}"))
        summary.add("SoftPool 2x2/2", f"{shape} {layout}", ms, pairs, ms["copy, all threads"])


def maxent(summary, opts, torch, F):
    import bench_maxent
    shape = (4, 16, 56, 56) if opts.quick else (32, 64, 112, 112)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    lam = rng.uniform(0.5, 1.5, shape[:2] + (1, 1)).astype(np.float32)
    for layout, a in (("contiguous", x), ("channels_last", _channels_last(x))):
        ms = _time(bench_maxent.cases(a, lam, opts.compiled), opts.repeats, f"Max-Ent {layout}")
        pairs = []
        for kind, theirs in (("fwd", "fwd"), ("fwd+bwd", "f+b")):
            for anchor in ("torch composite", "torch.compile composite",
                           "torch.compile max-subtracted composite"):
                pairs.append((kind, f"npool Max-Ent {kind}", anchor.replace("torch ", ""),
                              f"{anchor} {theirs}"))
            pairs.append((f"{kind} (out=)", f"npool Max-Ent {kind} (out=)",
                          "torch.compile composite", f"torch.compile composite {theirs}"))
        summary.add("Max-Ent 2x2/2, lam (N, C)", f"{shape} {layout}", ms, pairs)


def global_pools(summary, opts):
    import bench_global
    shapes = ((8, 64, 14, 14), (2, 16, 56, 56)) if opts.quick else \
        ((64, 512, 14, 14), (8, 64, 112, 112))
    anchors = {"k-max": "topk(k).mean", "WELDON": "two topk", "LSE": "logsumexp",
               "max": "adaptive_max_pool2d", "avg": "mean",
               "GeM": "clamp.pow.mean.pow"}
    for shape in shapes:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for layout, a in (("contiguous", x), ("channels_last", _channels_last(x))):
            table = bench_global.cases(a)
            flat = {f"{name} {side}": fn for name, pair in table.items()
                    for side, fn in zip(("npool", "torch"), pair)}
            ms = _time(flat, opts.repeats, f"global pools {shape} {layout}")
            pairs = [(f"{name}", f"{name} npool", anchors[name.split()[0]], f"{name} torch")
                     for name in table]
            summary.add("global pools", f"{shape} {layout}", ms, pairs)


def netvlad(summary, opts):
    import bench_netvlad
    sizes = (8, 20, 64, 8, 64) if opts.quick else (bench_netvlad.B, bench_netvlad.M,
                                                   bench_netvlad.D, bench_netvlad.K,
                                                   bench_netvlad.OUT)
    table = bench_netvlad.cases(*bench_netvlad.setup(sizes=sizes))
    flat = {f"{name} {side}": fn for name, pair in table.items()
            for side, fn in zip(("npool", "torch"), pair)}
    ms = _time(flat, opts.repeats, "NetVLAD")
    pairs = [(name, f"{name} npool", "plain PyTorch", f"{name} torch") for name in table]
    b, m, d, k, out = sizes
    summary.add("NetVLAD", f"(B, M, D) = {(b, m, d)}, K = {k}", ms, pairs)


def jax_adapter(summary, opts):
    """npool.jax (jitted, the kernels through XLA's FFI) against the core on the same arrays,
    the route before it (pure_callback), XLA's composite and reduce_window max pooling
    (bench_jax.py); skipped without jax."""
    try:
        import bench_jax
    except ImportError as error:
        _progress(f"npool.jax: skipped ({error})")
        return
    anchors = (("core (NumPy)", "core"), ("pure_callback", "pure_callback"),
               ("XLA composite", "composite"))
    for family, setting, names, ms in bench_jax.measure(opts.repeats, opts.quick, _progress):
        pairs = []
        for name in names:
            for kind in ("fwd", "grad"):
                for anchor, route in anchors:
                    pairs.append((f"{name} {kind}", f"{name} ffi {kind}", anchor,
                                  f"{name} {route} {kind}"))
                if f"reduce_window max {kind}" in ms:
                    pairs.append((f"{name} {kind}", f"{name} ffi {kind}", "reduce_window max",
                                  f"reduce_window max {kind}"))
        summary.add(f"npool.jax {family}", setting, ms, pairs)


def targets(opts):
    """Issue 28's targets (bench_targets.py), as the lines of a met/missed report."""
    import bench_targets
    lines, _ = bench_targets.run(opts.repeats, opts.compiled, opts.quick, progress=_progress)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, 3 rounds")
    parser.add_argument("--compiled", action="store_true",
                        help="add the torch.compile'd composites (compiling takes minutes)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default 7; quick 3)")
    parser.add_argument("--out", default=str(HERE / "results"),
                        help="folder of summary.md and summary.png")
    parser.add_argument("--no-plot", action="store_true", help="write the table only")
    opts = parser.parse_args(argv)
    opts.repeats = opts.repeats or (3 if opts.quick else 7)
    import torch
    import torch.nn.functional as F
    threads = npool.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    summary = Summary()
    soft_pool(summary, opts, torch, F)
    maxent(summary, opts, torch, F)
    global_pools(summary, opts)
    netvlad(summary, opts)
    jax_adapter(summary, opts)
    target_lines = targets(opts)
    header = [f"# npool benchmark summary, {datetime.datetime.now():%Y-%m-%d %H:%M}",
              "",
              f"{platform.machine()}, {os.cpu_count()} CPUs; npool {npool.__version__} "
              f"({threads} threads), torch {torch.__version__} ({torch.get_num_threads()} "
              f"threads), numpy {np.__version__}; medians of {opts.repeats} interleaved rounds"
              f"{'; QUICK (small inputs): the ratios mean little' if opts.quick else ''}."]
    out = pathlib.Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary.markdown(header) + "\n## Targets (issue 28)\n\n```\n"
                                    + "\n".join(target_lines) + "\n```\n")
    _progress(f"wrote {out / 'summary.md'} ({len(summary.rows)} rows)")
    if not opts.no_plot:
        try:
            summary.plot(out / "summary.png", header[0].lstrip("# ") + ". " + header[2])
            _progress(f"wrote {out / 'summary.png'}")
        except ImportError:
            _progress("matplotlib is not installed: no plot (pip install 'npool[bench]')")
    _progress(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
