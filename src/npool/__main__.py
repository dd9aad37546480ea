"""``python -m npool``: what npool is, in a few seconds - its ops and the frameworks installed
here, what SoftPool keeps of an image next to max and average pooling, exact results where the
textbook formula overflows, and its speed against what you would otherwise run."""
import importlib.util
import sys
import time

import numpy as np

import npool
from npool import _build_info
from npool._cpu import selected_isa

DOCS = ("README.md and docs/ in npool's repository (semantics, migration); "
        "help(npool.<op>_forward) for each op")
FRAMEWORKS = (("PyTorch", "torch", "npool.torch"), ("TensorFlow", "tensorflow", "npool.tf"),
              ("JAX", "jax", "npool.jax"), ("Keras 3", "keras", "npool.keras"))
OPS = (("SoftPool 1d/2d/3d", "soft_pool2d_forward(x, 2)"),
       ("Max-Entropy pooling (+ GFGP)", "maxent_pool2d_forward(x, lam, 2)"),
       ("both with adaptive sizes", "adaptive_soft_pool2d_forward(x, 7)"),
       ("global max / avg / LogSumExp", "global_lse_pool_forward(x, beta)"),
       ("global k-max / WELDON", "weldon_pool_forward(x, kmax, kmin)"),
       ("NetVLAD / NetRVLAD / NetFV", "netvlad_pool_forward(x, a, c)"),
       ("Soft-DBoW / Context Gating", "context_gating_forward(x, W, b)"))


def _progress(message):
    print(f"  ... {message}", flush=True)


def _median_ms(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def header():
    print(f"npool {npool.__version__}: learnable and soft pooling operators - one exact, fast "
          f"core for NumPy,\nPyTorch, TensorFlow, JAX and Keras 3, with forward and backward "
          f"kernels for the CPU and CUDA.")
    print(f"Here: CPU kernels {selected_isa()}, {npool.get_num_threads()} threads; GPU "
          f"{'available' if npool.cuda_available() else 'none'}.")
    print(f"Built: CPU kernels {_build_info.cpu_report}; CUDA fatbin {_build_info.cuda_report}.")
    try:  # npool.jax's route to the kernels (the handler module imports nothing of jax)
        from npool._cpu import _xla_ffi
        print(f"npool.jax: the kernels inside jitted programs through XLA's FFI (handler built "
              f"for XLA FFI API {'.'.join(map(str, _xla_ffi.API_VERSION))}; on a JAX GPU, "
              f"SoftPool and Max-Ent with PyCUDA).")
    except ImportError:
        print("npool.jax: no XLA FFI handler in this build (jax.pure_callback instead).")
    installed = [(name, importlib.util.find_spec(module) is not None, adapter)
                 for name, module, adapter in FRAMEWORKS]
    print("\nOps (NumPy core: npool.<op>_forward / _backward; every adapter has them all):")
    for family, example in OPS:
        print(f"  {family:<30} npool.{example}")
    print("Adapters: " + ", ".join(f"{adapter} ({'installed' if ok else 'not installed'})"
                                   for name, ok, adapter in installed))


def _image():
    """A 256 x 256 grey image in [0, 1]: scikit-image's camera when installed (it ships with
    the package), else a synthetic scene (edges, a gradient, texture, small bright spots)."""
    try:
        from skimage import data
        return data.camera().astype(np.float32) / 255.0, "scikit-image's camera, 512 x 512"
    except Exception:  # noqa: BLE001 (any failure: the synthetic image serves)
        pass
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32) / 255.0
    image = 0.3 + 0.4 * xx
    image[(xx - 0.35) ** 2 + (yy - 0.45) ** 2 < 0.04] = 0.9
    image[60:200, 150:160] = 0.05
    image += 0.15 * np.sin(40 * xx) * np.sin(40 * yy) * (yy > 0.7)
    rng = np.random.default_rng(0)
    spots = rng.integers(0, 256, (2, 40))
    image[spots[0], spots[1]] = 1.0
    return np.clip(image, 0, 1), "a synthetic scene, 256 x 256 (pip install scikit-image for a photo)"


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a - b) ** 2))


def retention():
    image, name = _image()
    x = image[None, None]
    factor = 4
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // factor, factor, w // factor, factor)
    pooled = {
        "max pooling": blocks.max(axis=(3, 5)),
        "average pooling": blocks.mean(axis=(3, 5)),
        "SoftPool": npool.soft_pool2d_forward(x, factor),
        "Max-Ent, lam = 10": npool.maxent_pool2d_forward(x, 10.0, factor),
    }
    print(f"\n1. What pooling keeps: {name},\n   pooled {factor}x{factor}, upsampled back "
          f"(nearest), PSNR against the original (higher keeps more):")
    for label, y in pooled.items():
        back = np.repeat(np.repeat(y, factor, axis=2), factor, axis=3)
        print(f"  {label:<20} {_psnr(back, x):6.2f} dB")
    print("  SoftPool keeps more than max pooling (the paper's point: a softmax-weighted mean "
          "follows the\n  strong activations without discarding the rest); average pooling "
          "minimises the squared error\n  of this reconstruction by construction. Gallery and "
          "SSIM: see the docs.")


def exactness():
    x = np.array([[[[500.0, 499.0], [0.0, -1.0]]]], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(x)
        naive = (e * x).sum() / e.sum()
    y = npool.soft_pool2d_forward(x, 2)[0, 0, 0, 0]
    g = npool.soft_pool2d_backward(np.ones((1, 1, 1, 1), np.float32), x, 2)[0, 0]
    print("\n2. Exact where the textbook formula overflows: one 2x2 window "
          "[[500, 499], [0, -1]] (float32)")
    print(f"  sum(exp(x) x) / sum(exp(x)):  {naive}   (exp(500) overflows)")
    exact = (500 + 499 * np.exp(-1.0)) / (1 + np.exp(-1.0))
    print(f"  npool.soft_pool2d_forward:    {y:.6f}   (exact {exact:.6f}; the nearest float32 "
          f"is {np.float32(exact):.6f})")
    print(f"  its gradient:                 {np.array2string(g.ravel() + 0.0, precision=4)}")


def speed():
    shape = (8, 64, 112, 112)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    print(f"\n3. Speed: SoftPool2d 2x2/2 on {shape} float32 (median of 5, {npool.get_num_threads()}"
          f" threads):")
    _progress("npool")
    y = np.empty((8, 64, 56, 56), np.float32)
    g = np.ones_like(y)
    grad = np.empty_like(x)
    rows = [("npool forward", _median_ms(lambda: npool.soft_pool2d_forward(x, 2, out=y))),
            ("npool forward + backward", _median_ms(lambda: (
                npool.soft_pool2d_forward(x, 2, out=y),
                npool.soft_pool2d_backward(g, x, 2, out=grad))))]
    if importlib.util.find_spec("torch") is not None:
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(npool.get_num_threads())
        xt, gt = torch.from_numpy(x), torch.from_numpy(g)

        def composite(v):  # what a PyTorch user writes (it overflows for x beyond ~88)
            e = torch.exp(v)
            return F.avg_pool2d(v * e, 2) / F.avg_pool2d(e, 2)

        def forward_backward(fn):
            def run():
                v = xt.detach().requires_grad_(True)
                fn(v).backward(gt)
            return run

        _progress("PyTorch")
        with torch.no_grad():
            rows.append(("PyTorch composite forward", _median_ms(lambda: composite(xt))))
            rows.append(("PyTorch max_pool2d forward", _median_ms(lambda: F.max_pool2d(xt, 2))))
        rows.append(("PyTorch composite forward + backward",
                     _median_ms(forward_backward(composite))))
        rows.append(("PyTorch max_pool2d forward + backward",
                     _median_ms(forward_backward(lambda v: F.max_pool2d(v, 2)))))
    else:
        def numpy_soft_pool2d(v):
            windows = v.reshape(8, 64, 56, 2, 56, 2)
            e = np.exp(windows - windows.max(axis=(3, 5), keepdims=True))
            return (e * windows).sum(axis=(3, 5)) / e.sum(axis=(3, 5))

        _progress("NumPy (install torch to compare with PyTorch)")
        rows.append(("NumPy forward", _median_ms(lambda: numpy_soft_pool2d(x))))
    base = {"forward": rows[0][1], "backward": rows[1][1]}
    for label, ms in rows:
        reference = base["backward" if "backward" in label else "forward"]
        note = "" if label.startswith("npool") else \
            f"   (npool is {ms / reference:.1f}x faster)" if ms >= reference else \
            f"   ({reference / ms:.1f}x faster than npool)"
        print(f"  {label:<38} {ms:8.2f} ms{note}")
    print("  Every case against PyTorch, eager and torch.compile'd: python "
          "benchmarks/run_all.py --compiled")


def build_lines():
    """What this build holds, from npool/_build_info.py (CMakeLists.txt writes it)."""
    return [f"npool {npool.__version__} (Python {sys.version.split()[0]})",
            f"CPU kernels: {_build_info.cpu_report}",
            f"CUDA fatbin: {_build_info.cuda_report}"]


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m npool", description="npool's demo: what it computes, how exactly, "
        "how fast, on this machine; --version says what this build holds")
    parser.add_argument("--version", action="store_true",
                        help="print the version and what was built (kernel ISA variants, "
                             "OpenMP, the CUDA fatbin's architectures or why it is absent)")
    if parser.parse_args(argv).version:
        print("\n".join(build_lines()))
        return 0
    header()
    retention()
    exactness()
    speed()
    print(f"\nMore: {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
