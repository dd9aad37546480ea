"""A bad-input fuzzer over every public function of npool, run as its own process by
tests/test_robustness.py (so that a crash fails that test instead of killing the test run).

    python tests/fuzz_bad_input.py EXAMPLES

Hypothesis draws a public function, a valid call of it, and replaces one to three of its
arguments with something a careless or adversarial caller might pass: None, strings, huge or
negative ints, 10**400, NaN and infinities, bools for flags, other array types (lists, masked
arrays, int/complex/bool/object/big-endian arrays), arrays of the wrong rank or shape, empty
arrays, read-only, strided and transposed views, non-finite values, and ``matmul`` callables that
return junk (wrong shapes and dtypes, read-only arrays, their own inputs). Every call must return
or raise TypeError or ValueError, and must leave the caller's arrays unchanged. The outcome
counts are printed as one JSON line at the end; any other outcome stops the run with hypothesis'
shrunk example and a non-zero exit status.
"""
import inspect
import json
import sys
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npool

RNG = np.random.default_rng(0)
F32 = np.float32


def _array(*shape, dtype=F32):
    return RNG.standard_normal(shape).astype(dtype)


def _assign(b, m, k):
    logits = RNG.standard_normal((b, m, k))
    return (np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)).astype(F32)


def _valid_forward_calls():
    """op name -> keyword arguments of a valid forward call."""
    calls = {}
    for nd in (1, 2, 3):
        x = _array(2, 3, *(5,) * nd)
        window = dict(kernel_size=2, stride=None, padding=0, ceil_mode=False, dilation=1)
        lam = np.full((3,) + (1,) * nd, 1.5, F32)
        calls[f"soft_pool{nd}d"] = dict(x=x, **window)
        calls[f"maxent_pool{nd}d"] = dict(x=x, lam=lam, **window)
        calls[f"adaptive_soft_pool{nd}d"] = dict(x=x, output_size=3)
        calls[f"adaptive_maxent_pool{nd}d"] = dict(x=x, lam=lam, output_size=(3,) * nd)
    x = _array(2, 3, 4, 4)
    calls["global_max_pool"] = dict(x=x, keepdims=False, return_indices=False)
    calls["global_avg_pool"] = dict(x=x, keepdims=False)
    calls["global_kmax_pool"] = dict(x=x, k=3, keepdims=False, return_indices=False)
    calls["global_lse_pool"] = dict(x=x, beta=2.0, keepdims=False)
    calls["global_gem_pool"] = dict(x=x, p=np.full(3, 3.0, F32), eps=1e-6, keepdims=False)
    calls["weldon_pool"] = dict(x=x, kmax=2, kmin=1, alpha=0.7, keepdims=False,
                                return_indices=False)
    xs, a = _array(2, 5, 4), _assign(2, 5, 3)
    mask = np.array([[True] * 5, [True, True, False, False, False]])
    calls["netvlad_pool"] = dict(x=xs, assign=a, centers=_array(4, 3), mask=mask,
                                 return_norms=False, matmul=None)
    calls["netrvlad_pool"] = dict(x=xs, assign=a, mask=mask, return_norms=False, matmul=None)
    calls["netfv_pool"] = dict(x=xs, assign=a, mu=_array(4, 3), covar_weights=_array(4, 3),
                               mask=mask, matmul=None)
    calls["soft_dbow_pool"] = dict(assign=a, mask=mask)
    calls["context_gating"] = dict(x=xs, weights=_array(4, 4), biases=_array(4), matmul=None)
    return calls


def valid_calls():
    """(function name, keyword arguments) of a valid call of every public function."""
    calls = []
    for op, kwargs in _valid_forward_calls().items():
        forward = getattr(npool, f"{op}_forward")
        backward = getattr(npool, f"{op}_backward")
        calls.append((forward.__name__, kwargs))
        y = forward(**kwargs)
        grad_out = np.ones_like(y)
        names = inspect.signature(backward).parameters
        calls.append((backward.__name__, dict(
            grad_out=grad_out, **{k: v for k, v in kwargs.items() if k in names})))
    calls += [("set_num_threads", dict(n=2)), ("get_num_threads", {}),
              ("cuda_available", {})]
    missing = set(npool.__all__) - {name for name, _ in calls}
    assert not missing, f"the fuzzer has no valid call of {sorted(missing)}: add one"
    return calls


CALLS = valid_calls()


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _masked(a):
    return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))


# Turn a valid array into an awkward or wrong one.
ARRAY_MUTATIONS = {
    "float64": lambda a: a.astype(np.float64),
    "float16": lambda a: a.astype(np.float16),
    "int32": lambda a: a.astype(np.int32),
    "bool": lambda a: a.astype(bool),
    "complex": lambda a: a.astype(np.complex64),
    "object": lambda a: a.astype(object),
    "big-endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
    "list": lambda a: a.tolist(),
    "masked": _masked,
    "read-only": _read_only,
    "transposed": lambda a: a.T,
    "strided": lambda a: a[..., ::2],
    "reversed": lambda a: a[..., ::-1],
    "extra-axis": lambda a: a[None],
    "one-axis-less": lambda a: a[0],
    "empty-first-axis": lambda a: a[:0],
    "empty-last-axis": lambda a: a[..., :0],
    "0-d": lambda a: np.asarray(a.ravel()[0]) if a.size else np.zeros(()),
    "nan": lambda a: np.full_like(a, np.nan),
    "inf": lambda a: np.full_like(a, np.inf),
    "huge": lambda a: np.full_like(a, np.finfo(a.dtype).max if a.dtype.kind == "f" else 1),
    "wrong-size": lambda a: np.zeros(tuple(n + 1 for n in a.shape), a.dtype),
    "fortran": lambda a: np.asfortranarray(a),
}

JUNK = [None, "abc", "", 3, -1, 0, 1, 2 ** 63, -2 ** 63, 10 ** 400, 1.5, -0.0, float("nan"),
        float("inf"), float("-inf"), True, False, [1, 2], (2, 2, 2, 2), (), object(),
        np.float32(2), np.int64(7), complex(1, 1), np.zeros(0), np.zeros((1, 1, 1)),
        np.array(7.5), np.array([2**40]), b"x", {"a": 1}]


def _junk_matmul(kind):
    def matmul(a, b):
        product = np.matmul(a, b)
        return {"shape": lambda: np.zeros((1, 1, 1), product.dtype),
                "transposed-shape": lambda: np.swapaxes(product, -1, -2),
                "dtype": lambda: product.astype(np.float64 if product.dtype != np.float64
                                                else np.float32),
                "read-only": lambda: _read_only(product),
                "strided": lambda: np.repeat(product, 2, axis=-1)[..., ::2],
                "first-input": lambda: a,
                "list": lambda: product.tolist(),
                "none": lambda: None}[kind]()
    return matmul


MATMULS = [_junk_matmul(kind) for kind in ("shape", "transposed-shape", "dtype", "read-only",
                                           "strided", "first-input", "list", "none")]


@st.composite
def bad_calls(draw):
    name, kwargs = draw(st.sampled_from(CALLS))
    kwargs = dict(kwargs)
    if kwargs:
        for key in draw(st.lists(st.sampled_from(sorted(kwargs)), min_size=1, max_size=3,
                                 unique=True)):
            value = kwargs[key]
            choices = [st.sampled_from(JUNK)]
            if isinstance(value, np.ndarray):
                choices.append(st.sampled_from(sorted(ARRAY_MUTATIONS)).map(
                    lambda m, v=value: ARRAY_MUTATIONS[m](v)))
            if key == "matmul":
                choices.append(st.sampled_from(MATMULS))
            kwargs[key] = draw(st.one_of(*choices))
    return name, kwargs


def _snapshots(kwargs):
    return {k: np.array(v, copy=True) for k, v in kwargs.items()
            if isinstance(v, np.ndarray) and v.dtype != object}


def run(examples):
    """Outcome counts: overall, and per function (``by_function``)."""
    outcomes = Counter()
    by_function = {}

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(bad_calls())
    def fuzz(call):
        name, kwargs = call
        before = _snapshots(kwargs)
        try:
            getattr(npool, name)(**kwargs)
            outcome = "returned"
        except (TypeError, ValueError) as error:
            outcome = type(error).__name__
            assert str(error), f"{name}: an error without a message"
        finally:
            npool.set_num_threads(None)
        outcomes[outcome] += 1
        by_function.setdefault(name, Counter())[outcome] += 1
        for key, copy in before.items():
            assert np.array_equal(np.asarray(kwargs[key]), copy, equal_nan=True), \
                f"{name} changed the caller's {key}"

    fuzz()
    outcomes["calls"] = sum(outcomes.values())
    return dict(outcomes, by_function={k: dict(v) for k, v in sorted(by_function.items())})


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 500)))
