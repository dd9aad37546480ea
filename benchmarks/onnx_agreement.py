"""How closely an ONNX export of each npool.torch module agrees with npool, in float32.

Exports each module (behind a 1x1 convolution for the local and global pools) with
``torch.onnx.export(dynamo=True)``, runs it in onnxruntime and prints, per module and layout, the
largest absolute difference from npool's own output and that difference relative to the output's
largest magnitude; also at inputs scaled to +-500, where a naive softmax overflows.

    python benchmarks/onnx_agreement.py [--markdown]
"""
import argparse
import sys
import warnings

import numpy as np
import onnxruntime as ort
import torch

import npool.torch as nt

LOCAL = {
    "SoftPool1d(3, 2, 1, ceil_mode)": (lambda: nt.SoftPool1d(3, 2, 1, ceil_mode=True), 3),
    "SoftPool2d(2)": (lambda: nt.SoftPool2d(2), 4),
    "SoftPool2d(3, 2, 1, ceil_mode)": (lambda: nt.SoftPool2d(3, 2, 1, ceil_mode=True), 4),
    "SoftPool3d((2, 2, 3), padding)": (lambda: nt.SoftPool3d((2, 2, 3), padding=(1, 0, 1)), 5),
    "MaxEntPool2d gfgp": (lambda: nt.MaxEntPool2d(3, 3, 2, 1), 4),
    "MaxEntPool2d channel": (lambda: nt.MaxEntPool2d(3, 2, lam="channel"), 4),
    "MaxEntPool2d fixed lam=-0.5": (lambda: nt.MaxEntPool2d(3, (2, 3), 1, (1, 1), True,
                                                            lam=-0.5), 4),
    "GlobalMaxPool2d": (lambda: nt.GlobalMaxPool2d(), 4),
    "GlobalAvgPool2d": (lambda: nt.GlobalAvgPool2d(keepdims=True), 4),
    "GlobalLSEPool2d(2)": (lambda: nt.GlobalLSEPool2d(2.0), 4),
    "GlobalKMaxPool2d(0.2)": (lambda: nt.GlobalKMaxPool2d(0.2), 4),
    "WeldonPool2d(3, 2, 0.7)": (lambda: nt.WeldonPool2d(3, 2, 0.7), 4),
}
SETS = {
    "NetVLAD": lambda bn: nt.NetVLAD(8, 6, 4, 5, gating=True, add_batch_norm=bn),
    "NetRVLAD": lambda bn: nt.NetRVLAD(8, 6, 4, 5, gating=True, add_batch_norm=bn),
    "NetFV": lambda bn: nt.NetFV(8, 6, 4, 5, gating=True, add_batch_norm=bn),
    "SoftDBoW": lambda bn: nt.SoftDBoW(8, 6, 4, 5, gating=True, add_batch_norm=bn),
}


class _Conv(torch.nn.Module):
    def __init__(self, pool, rank):
        super().__init__()
        conv = {3: torch.nn.Conv1d, 4: torch.nn.Conv2d, 5: torch.nn.Conv3d}[rank]
        self.conv, self.pool = conv(3, 3, 1), pool

    def forward(self, x):
        return self.pool(self.conv(x))


class _Masked(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, mask):
        return self.layer(x, mask)


def difference(model, args):
    """(max |onnx - npool|, that / max |npool|) for model(*args), in float32."""
    model.eval()
    with torch.no_grad():
        expected = model(*args).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, dynamo=True, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    got = session.run(None, feed)[0]
    error = float(np.abs(got.astype(np.float64) - expected).max())
    return error, error / max(float(np.abs(expected).max()), np.finfo(np.float32).tiny)


def rows():
    torch.manual_seed(0)
    for name, (make, rank) in LOCAL.items():
        shape = {3: (2, 3, 10), 4: (2, 3, 9, 10), 5: (2, 3, 4, 6, 6)}[rank]
        for layout in ("contiguous", "channels_last"):
            if layout == "channels_last" and rank != 4:
                continue
            for scale in (1.0, 500.0):
                x = torch.randn(*shape) * scale
                if layout == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                yield (name, layout, scale, *difference(_Conv(make(), rank), (x,)))
    for name, make in SETS.items():
        for bn in (True, False):
            x = torch.randn(3, 6, 8)
            mask = torch.arange(6) < torch.tensor([6, 3, 1])[:, None]
            yield (f"{name} (BatchNorm={bn}, mask)", "-", 1.0,
                   *difference(_Masked(make(bn)), (x, mask)))
    yield ("ContextGating", "-", 1.0,
           *difference(torch.nn.Sequential(nt.ContextGating(6, add_batch_norm=False)),
                       (torch.randn(4, 6),)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    markdown = parser.parse_args(argv).markdown
    if markdown:
        print("| module | layout | input scale | max abs diff | relative |")
        print("|---|---|---|---|---|")
    for name, layout, scale, error, relative in rows():
        if markdown:
            print(f"| {name} | {layout} | {scale:g} | {error:.2e} | {relative:.2e} |")
        else:
            print(f"{name:40s} {layout:13s} x{scale:<5g} abs {error:.2e}  rel {relative:.2e}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
