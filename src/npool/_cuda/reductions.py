"""Launch npool_sum_to_shape (src/cuda/reductions.cu): sums of a contiguous array over some of
its axes, in a fixed order (deterministic)."""
import numpy as np

from ._arrays import type_suffix

ARGS = np.dtype([("full", "u8"), ("out", "u8"), ("full_shape", "i8", 5),
                 ("out_shape", "i8", 5), ("count", "i8")])


def sum_to_shape(call, dtype, full, full_shape, out, out_shape):
    """``out`` (address of a C-contiguous ``dtype`` array of ``out_shape``) = ``full`` (address
    of C-contiguous accumulators of ``full_shape``: float32 for float16 and float32, float64 for
    float64) summed over the axes where ``out_shape`` is 1. Shapes of up to 5 axes."""
    pad = 5 - len(full_shape)
    if pad < 0 or len(out_shape) != len(full_shape):
        raise ValueError(f"sum_to_shape takes two shapes of the same rank <= 5, got "
                         f"{full_shape} and {out_shape}")
    count = int(np.prod(out_shape, dtype=np.int64))
    if not count:
        return
    args = np.zeros((), ARGS)
    args["full"] = full
    args["out"] = out
    args["full_shape"] = (1,) * pad + tuple(full_shape)
    args["out_shape"] = (1,) * pad + tuple(out_shape)
    args["count"] = count
    accumulator = 8 if np.dtype(dtype) == np.float64 else 4
    call.launch_blocks(f"npool_sum_to_shape_{type_suffix(np.dtype(dtype))}", args[()], count,
                       accumulator * call.block_size)
