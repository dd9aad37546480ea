"""Shared by the benchmark scripts: interleaved CPU timing and writing the report."""
import time

import numpy as np


def interleaved_medians_ms(cases, repeats):
    """Median milliseconds of every zero-argument callable in ``cases`` (name -> callable),
    running each once per round so that the machine's drift hits all cases alike."""
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
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
