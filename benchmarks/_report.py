"""Shared by the benchmark scripts: interleaved CPU timing and writing the report."""
import random
import time

import numpy as np


def interleaved_medians_ms(cases, repeats):
    """Median milliseconds of every zero-argument callable in ``cases`` (name -> callable),
    running each once per round so that the machine's drift hits all cases alike, in a new
    order every round (fixed seed): cases that share an input would otherwise always find it
    in the cache the one before them left it in (a case run right after another on the same
    array reads it from L3, the first one from memory)."""
    times = {name: [] for name in cases}
    order = list(cases)
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            fn = cases[name]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def emit(lines, out=None):
    """Print the report and append it to ``out`` when given."""
    report = "\n".join(lines)
    print(report)
    if out:
        with open(out, "a") as f:
            f.write(report + "\n")
