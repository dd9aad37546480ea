"""bfloat16 in npool.tf: every op on bfloat16 tensors against the float64 reference at
bfloat16's tolerance (npool.testing.check_op, forward and GradientTape backward), and a Keras
model under the "mixed_bfloat16" policy that trains (test_tf_workflow.py)."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

import npool.tf as ntf  # noqa: E402
from npool import testing  # noqa: E402

CHANNELS_FIRST = {op for op in testing.OPS
                  if op.startswith(("soft_pool", "maxent_pool", "adaptive", "global", "weldon"))}


def tf_op(op):
    """npool.tf's function for op with npool's core signature (channels-first), on NumPy
    inputs, and its backward through tf.GradientTape."""
    function = getattr(ntf, op)
    layout = {"data_format": "channels_first"} if op in CHANNELS_FIRST else {}

    def call(args, options):
        return function(*args, **{k: tf.constant(v) if isinstance(v, np.ndarray) else v
                                   for k, v in options.items()}, **layout)

    def forward(*args, **options):
        return call([tf.constant(a) for a in args], options).numpy()

    def backward(grad_out, *args, **options):
        inputs = [tf.constant(a) if isinstance(a, np.ndarray) else
                  tf.constant(a, dtype=tf.bfloat16) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = call(inputs, options)
        return tuple(g.numpy() for g in tape.gradient(y, inputs,
                                                      output_gradients=tf.constant(grad_out)))
    return forward, backward


@pytest.mark.parametrize("op", testing.OPS)
def test_every_op_in_bfloat16_matches_the_reference(op):
    testing.check_op(op, *tf_op(op), max_examples=20, dtypes=("bfloat16",),
                     layouts=("contiguous",))
