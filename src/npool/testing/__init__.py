"""npool.testing: npool's float64 references, hypothesis strategies and property suite, for
testing your own pooling kernels (CUDA, Triton, C++, a composite of framework ops) the way
npool tests its own.

- ``reference(op)`` -> ``(forward, backward)``: plain float64 NumPy with the signatures of
  ``npool.<op>_forward`` / ``npool.<op>_backward``, written to be read (docs/semantics.md has
  the formulas they implement).
- ``problems(op, *, dtypes=(float32, float64), layouts=("contiguous", "channels_last",
  "strided"), extreme=True)``: a hypothesis strategy of ``Problem``s (inputs, options,
  ``grad_out``) that draws what breaks kernels.
- ``assert_close(actual, problem, which="forward", *, dtype=None)``: the reference comparison,
  with tolerances that follow the problem's conditioning (``npool.testing.tolerances``).
- ``check_op(op, forward, backward=None, *, max_examples=100, to_array=None,
  from_array=None)``: the whole property suite on your functions.

``op`` is one of ``OPS``, npool's ops by name (soft_pool1d/2d/3d, maxent_pool1d/2d/3d, the
global pools, the set pools: ``npool.testing.OPS`` lists them all). hypothesis is needed for ``problems`` and
``check_op`` only.
"""
from typing import Any, Callable, Sequence, Tuple

from ._check import assert_close, check_op, check_problem, require_hypothesis
from ._problems import OPS, Problem, check_op_name
from .references import REFERENCES

__all__ = ["OPS", "Problem", "assert_close", "check_op", "check_problem", "problems",
           "reference"]


def reference(op: str) -> Tuple[Callable[..., Any], Callable[..., Any]]:
    """The float64 references of ``op``, with npool's signatures.

    Plain float64 NumPy, written to be read (docs/semantics.md has the formulas).

    Parameters
    ----------
    op : str
        One of ``OPS`` (``"soft_pool2d"``, ``"global_lse_pool"``, ``"netvlad_pool"``, ...).

    Returns
    -------
    forward : callable
        ``forward(*inputs, **options)`` like ``npool.<op>_forward``.
    backward : callable
        ``backward(grad_out, *inputs, **options)`` like ``npool.<op>_backward``.

    Raises
    ------
    ValueError
        An unknown op.

    Examples
    --------
    >>> forward, backward = npool.testing.reference("soft_pool1d")
    >>> forward(np.array([[[0.0, 0.0, 1.0, 1.0]]]), 2).tolist()
    [[[0.0, 1.0]]]
    """
    return REFERENCES[check_op_name(op)]


def problems(op: str, *, dtypes: Sequence[str] = ("float32", "float64"),
             layouts: Sequence[str] = ("contiguous", "channels_last", "strided"),
             extreme: bool = True,
             paddings: Sequence[str] = ("symmetric", "pairs", "same", "valid"),
             dilations: bool = True) -> Any:
    """A hypothesis strategy of ``Problem`` objects for ``op``.

    It draws what breaks kernels: shapes with size-1 axes and N = 0, windows equal to the
    input, strides other than the kernel, dilated windows, every form of padding (up to half the kernel on both
    sides, ``(before, after)`` pairs up to the kernel less one, "same" and "valid"), ceil_mode windows
    hanging over the edge, values around 0, +-500 and +-1e4 and pool inputs whose windows and
    maps lie about 1e3 apart (``extreme``), ties, temperatures of every broadcast shape, k as
    counts and fractions, masks with empty sets.

    Parameters
    ----------
    op : str
        One of ``OPS``.
    dtypes : sequence of str, default ("float32", "float64")
        Also "float16" and "bfloat16".
    layouts : sequence of str, default ("contiguous", "channels_last", "strided")
        C order, channels-last memory, strided views.
    extreme : bool, default True
        Include the large-magnitude values.
    paddings : sequence of str, default ("symmetric", "pairs", "same", "valid")
        The forms of a local pool's ``padding`` to draw: an int or per-axis ints (the same on
        both sides: PyTorch's), per-axis ``(before, after)`` pairs, TensorFlow's "same" and
        "valid" (in either case). Other ops ignore it.
    dilations : bool, default True
        Draw dilated windows too (``dilation=`` up to 3 per axis, in one local-pool problem in
        four).

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of ``Problem``.

    Raises
    ------
    ImportError
        hypothesis is not installed (``pip install "npool[testing]"``).

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, deadline=None)
    ... @given(npool.testing.problems("global_avg_pool", dtypes=("float64",)))
    ... def test(problem):
    ...     npool.testing.assert_close(npool.global_avg_pool_forward(*problem.args,
    ...                                **problem.options), problem)
    >>> test()
    """
    require_hypothesis()
    from .strategies import problems as strategy
    return strategy(op, dtypes=dtypes, layouts=layouts, extreme=extreme, paddings=paddings,
                    dilations=dilations)
