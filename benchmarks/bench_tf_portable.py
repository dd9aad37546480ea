"""What npool.tf's portable decomposition costs next to npool's kernels, on the CPU.

The decomposition (npool/_decompositions.py with TensorFlow ops) is what SavedModels, XLA and TFLite
get; eager code and ordinary ``tf.function``s run npool's kernels. For each op: the median time
of forward and of forward + backward for the kernels (inside ``tf.function``), the
decomposition (``tf.function`` under ``npool.tf.portable()``) and the decomposition compiled
by XLA (``jit_compile=True``), the size of the decomposition's largest intermediate (the
gathered windows) relative to the input, and how far the decomposition's output (fwd) or input
gradients (fwd+bwd, for an upstream gradient of ones) are from the kernels' (max abs diff).

    python benchmarks/bench_tf_portable.py [--repeats 7] [--markdown]
"""
import argparse
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import npool.tf as ntf  # noqa: E402
from npool import _checks  # noqa: E402

RNG = np.random.default_rng(0)
IMAGE = RNG.standard_normal((8, 56, 56, 64)).astype(np.float32)  # NHWC
SETS = [RNG.standard_normal((16, 100, 256)).astype(np.float32),
        RNG.dirichlet(np.ones(32), (16, 100)).astype(np.float32),
        RNG.standard_normal((256, 32)).astype(np.float32)]


def _window_growth(kernel, stride, padding):
    """Gathered cells / input cells of a 2-d pool over IMAGE."""
    window = _checks.WindowArgs(2, kernel, stride, padding, False)
    out = window.output_size(IMAGE.shape[1:3])
    return math.prod(out) * math.prod(window.kernel) / math.prod(IMAGE.shape[1:3])


CASES = {
    "soft_pool2d 2x2/2": (lambda x: ntf.soft_pool2d(x, 2), [IMAGE], _window_growth(2, 2, 0)),
    "soft_pool2d 3x3/2 pad 1": (lambda x: ntf.soft_pool2d(x, 3, 2, 1), [IMAGE],
                                _window_growth(3, 2, 1)),
    "maxent_pool2d 3x3/2 pad 1": (lambda x: ntf.maxent_pool2d(x, 0.5, 3, 2, 1), [IMAGE],
                                  _window_growth(3, 2, 1)),
    "global_lse_pool": (lambda x: ntf.global_lse_pool(x, 2.0), [IMAGE], 1.0),
    "global_kmax_pool k=0.1": (lambda x: ntf.global_kmax_pool(x, 0.1), [IMAGE], 1.0),
    "weldon_pool 5/5": (lambda x: ntf.weldon_pool(x, 5, 5, 0.7), [IMAGE], 1.0),
    "netvlad_pool (16,100,256) K=32": (ntf.netvlad_pool, SETS, 1.0),
}


def _step(function, backward):
    def step(*tensors):
        if not backward:
            return function(*tensors)
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            y = function(*tensors)
        return tape.gradient(y, tensors, output_gradients=tf.ones_like(y))
    return step


def _median_time(run, tensors, repeats):
    run(*tensors)  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run(*tensors)
        tf.nest.map_structure(lambda t: t.numpy(), result)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--markdown", action="store_true")
    options = parser.parse_args(argv)
    header = ("op", "pass", "kernels ms", "decomposition ms", "ratio", "XLA ms", "ratio",
              "gathered / input", "max abs diff")
    if options.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
    for name, (function, arrays, growth) in CASES.items():
        tensors = [tf.constant(a) for a in arrays]
        for backward in (False, True):
            step = _step(function, backward)
            kernels = _median_time(tf.function(step), tensors, options.repeats)
            expected = tf.nest.flatten(step(*tensors))
            with ntf.portable():
                plain = tf.function(step)
                xla = tf.function(step, jit_compile=True)
                decomposed = _median_time(plain, tensors, options.repeats)
                compiled = _median_time(xla, tensors, options.repeats)
                got = tf.nest.flatten(step(*tensors))
            difference = max(float(np.abs(g.numpy() - e.numpy()).max())
                             for g, e in zip(got, expected))
            row = (name, "fwd+bwd" if backward else "fwd", f"{kernels * 1e3:.1f}",
                   f"{decomposed * 1e3:.1f}", f"{decomposed / kernels:.2f}x",
                   f"{compiled * 1e3:.1f}", f"{compiled / kernels:.2f}x", f"{growth:.2f}x",
                   f"{difference:.1e}")
            print(("| " + " | ".join(row) + " |") if options.markdown else "  ".join(row))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
