"""``python -m npool``: a small SoftPool result and a timing against plain NumPy."""
import time

import numpy as np

import npool
from npool import _build_info
from npool._cpu import selected_isa
from npool._cuda import fatbin_path


def numpy_soft_pool2d(x, k):
    """The same SoftPool (kernel = stride = k, no padding) written with NumPy operations."""
    n, c, h, w = x.shape
    windows = x.reshape(n, c, h // k, k, w // k, k)
    e = np.exp(windows - windows.max(axis=(3, 5), keepdims=True))
    return (e * windows).sum(axis=(3, 5)) / e.sum(axis=(3, 5))


def median_time(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    fatbin = fatbin_path()
    print(f"npool {npool.__version__}: CPU kernels {selected_isa()}, "
          f"OpenMP {'on' if _build_info.openmp else 'off'}, {npool.get_num_threads()} threads; "
          f"CUDA fatbin {'(' + _build_info.cuda_archs + ')' if fatbin else 'not built'}")

    x = np.array([[[[1.0, 2.0, 0.0, -1.0],
                    [3.0, 4.0, 5.0, 500.0],
                    [-2.0, -2.0, 7.0, 7.0],
                    [-2.0, -2.0, 7.0, 6.0]]]], dtype=np.float32)
    y = npool.soft_pool2d_forward(x, kernel_size=2)
    grad = npool.soft_pool2d_backward(np.ones_like(y), x, kernel_size=2)
    print("\nx (1, 1, 4, 4):\n", x[0, 0])
    print("soft_pool2d_forward(x, kernel_size=2):\n", y[0, 0])
    print("soft_pool2d_backward(ones, x, kernel_size=2):\n", grad[0, 0])

    shape = (8, 64, 112, 112)
    big = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(npool.soft_pool2d_forward(big, 2), numpy_soft_pool2d(big, 2),
                               rtol=1e-5, atol=1e-5)
    t_npool = median_time(lambda: npool.soft_pool2d_forward(big, 2))
    t_numpy = median_time(lambda: numpy_soft_pool2d(big, 2))
    print(f"\nSoftPool2d 2x2/2 forward on {shape} float32 (median of 5):")
    print(f"  npool  {t_npool * 1e3:8.2f} ms")
    print(f"  NumPy  {t_numpy * 1e3:8.2f} ms   (npool is {t_numpy / t_npool:.1f}x faster)")


if __name__ == "__main__":
    main()
