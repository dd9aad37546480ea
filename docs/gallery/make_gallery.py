"""The gallery: what npool's pools do to images, made from images that ship with scikit-image
(no download), and the information-retention comparison of the SoftPool paper redone on them.

    python docs/gallery/make_gallery.py [--out docs/gallery] [--quick]

Writes, under ``--out``:
  pooling_<image>.png   the original, then max, average, SoftPool and Max-Ent (three
                        temperatures) pooling at x2 and x4, side by side
  retention.md          pool, upsample back (nearest), then PSNR and SSIM against the original,
                        per image, factor and method
  maxent_lam.png        Max-Ent's output moving from the average (lam = 0) to the maximum as
                        lam grows, measured on an image's windows
(the benchmark ratio plot is benchmarks/results/summary.png, made by benchmarks/run_all.py).
Needs scikit-image and matplotlib (``pip install "npool[gallery]"``).
"""
import argparse
import pathlib
import sys
import time

import numpy as np

import npool

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAMS = (0.5, 4.0, 32.0)


def images(quick):
    """(name, (C, H, W) float32 in [0, 1]) of scikit-image's bundled photographs."""
    from skimage import data
    chosen = [("camera", data.camera()[None]), ("astronaut", np.moveaxis(data.astronaut(), -1, 0)),
              ("coffee", np.moveaxis(data.coffee(), -1, 0))]
    out = []
    for name, img in chosen[:2] if quick else chosen:
        img = img.astype(np.float32) / 255.0
        if quick:
            img = img[:, :128, :128]
        h, w = img.shape[1] // 4 * 4, img.shape[2] // 4 * 4
        out.append((name, np.ascontiguousarray(img[:, :h, :w])))
    return out


def pooled(x, factor):
    """method -> (N, C, H / factor, W / factor) for x (N, C, H, W)."""
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // factor, factor, w // factor, factor)
    methods = {"max": blocks.max(axis=(3, 5)), "average": blocks.mean(axis=(3, 5)),
               "SoftPool": npool.soft_pool2d_forward(x, factor)}
    for lam in LAMS:
        methods[f"Max-Ent lam={lam:g}"] = npool.maxent_pool2d_forward(x, lam, factor)
    return methods


def upsample(y, factor):
    return np.repeat(np.repeat(y, factor, axis=-2), factor, axis=-1)


def retention_rows(name, img):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    rows = []
    for factor in (2, 4):
        for method, y in pooled(img[None], factor).items():
            back = np.clip(upsample(y[0], factor), 0, 1)
            psnr = peak_signal_noise_ratio(img, back, data_range=1.0)
            ssim = structural_similarity(img, back, data_range=1.0, channel_axis=0)
            rows.append((name, factor, method, psnr, ssim))
    return rows


def figure(name, img, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = ["original", "max", "average", "SoftPool"] + [f"Max-Ent lam={lam:g}"
                                                            for lam in LAMS]
    fig, axes = plt.subplots(2, len(methods), figsize=(2.2 * len(methods), 4.8))
    for row, factor in enumerate((2, 4)):
        results = pooled(img[None], factor)
        for col, method in enumerate(methods):
            shown = img if method == "original" else np.clip(results[method][0], 0, 1)
            ax = axes[row, col]
            ax.imshow(shown[0] if shown.shape[0] == 1 else np.moveaxis(shown, 0, -1),
                      cmap="gray" if shown.shape[0] == 1 else None, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(method, fontsize=9)
        axes[row, 0].set_ylabel(f"x{factor} pooling", fontsize=9)
    fig.suptitle(f"npool on scikit-image's {name}: 2x2 and 4x4 windows", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def lam_figure(img, path):
    """How far Max-Ent's output moves from the window average to the window maximum as lam
    grows (per window: (y - mean) / (max - mean), averaged over windows that are not flat)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = img[None, :1]
    factor = 4
    blocks = x.reshape(1, 1, x.shape[2] // factor, factor, x.shape[3] // factor, factor)
    top, mean = blocks.max(axis=(3, 5)), blocks.mean(axis=(3, 5))
    spread = top - mean
    varied = spread > 1e-3
    lams = np.concatenate([[0.0], np.logspace(-1, 3, 41)])
    fractions = []
    for lam in lams:
        y = npool.maxent_pool2d_forward(x, float(lam), factor)
        fractions.append(float(np.mean((y - mean)[varied] / spread[varied])))
    soft = float(np.mean((npool.soft_pool2d_forward(x, factor) - mean)[varied] / spread[varied]))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.semilogx(lams[1:], fractions[1:], marker=".", label="Max-Ent, lam")
    ax.axhline(0, color="gray", lw=0.8)
    ax.axhline(1, color="gray", lw=0.8)
    ax.scatter([1.0], [soft], color="C3", zorder=3, label="SoftPool (lam = 1)")
    ax.set_xlabel("lam (pixel values in [0, 1])")
    ax.set_ylabel("(y - window mean) / (max - mean)")
    ax.set_title("Max-Ent pooling moves from average (0) to max (1) as lam grows", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return lams, fractions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "gallery"))
    parser.add_argument("--quick", action="store_true", help="two small crops (for CI)")
    opts = parser.parse_args(argv)
    out = pathlib.Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    chosen = images(opts.quick)
    for name, img in chosen:
        print(f"[{time.perf_counter() - start:5.1f} s] {name} {img.shape}: figure and retention",
              flush=True)
        figure(name, img, out / f"pooling_{name}.png")
        rows += retention_rows(name, img)
    print(f"[{time.perf_counter() - start:5.1f} s] Max-Ent lam sweep", flush=True)
    lam_figure(chosen[0][1], out / "maxent_lam.png")
    lines = ["# Information retention (pool, upsample back with nearest, compare)", "",
             "Made by `python docs/gallery/make_gallery.py` from scikit-image's bundled images; "
             "higher is more of the image kept. Average pooling minimises this reconstruction's "
             "squared error by construction; SoftPool sits between max and average pooling, "
             "and Max-Ent moves from average (small lam) to max (large lam).", "",
             "| image | factor | method | PSNR (dB) | SSIM |", "|---|---|---|---|---|"]
    lines += [f"| {name} | x{factor} | {method} | {psnr:.2f} | {ssim:.4f} |"
              for name, factor, method, psnr, ssim in rows]
    (out / "retention.md").write_text("\n".join(lines) + "\n")
    print(f"[{time.perf_counter() - start:5.1f} s] wrote {out}", flush=True)
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
