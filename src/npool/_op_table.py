"""The op table: every op of npool as plain data (no framework import, no kernel), read by what
enumerates ops - ``npool.testing`` (its ``OPS``, problems and references), the adapters'
registrations and the conformance suite (tests/test_conformance.py) - so that adding an op is
one row here plus its math, and a capability an op lacks is a visible field, not an accident.

Each op ``name`` has ``npool.<name>_forward`` and ``npool.<name>_backward`` in the core and
``<name>`` in npool.torch, npool.tf and npool.jax, with the core's arguments (less ``out``).

    >>> OPS["global_kmax_pool"].kernel      # k-max is WELDON without a bottom term
    'weldon_pool'
    >>> OPS["maxent_pool2d"].differentiable
    ('x', 'lam')
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Op:
    """One op.

    Attributes
    ----------
    name : str
        The public name (``soft_pool2d``, ``global_lse_pool``, ``netvlad_pool``, ...).
    family : str
        ``"local"`` (windowed pools over 1-3 spatial axes), ``"global"`` (one value per
        (sample, channel) map) or ``"set"`` (LOUPE's pools over a set of M descriptors).
    differentiable : tuple of str
        The forward's array inputs that get a gradient, in signature order: the backward's
        results, in that order.
    other_arrays : tuple of str
        Array inputs without a gradient (a mask).
    static : tuple of str
        The other arguments of the forward (window, counts, temperatures, flags).
    outputs : tuple of str
        The forward's results: ``y``, then what it returns when asked (``return_indices``,
        ``return_stats``, ``return_norms``).
    saved : tuple of str
        What the backward takes from the forward besides the inputs (``indices=``, ``stats=``,
        the output and its norms); empty when it recomputes what it needs.
    kernel : str
        The kernel the op lowers to: the custom op of npool.torch (``npool::<kernel>`` and
        ``npool::<kernel>_backward``) and the family of CPU and CUDA kernels. Several ops may
        share one: k-max is WELDON with kmin = 0, NetRVLAD is NetVLAD without centers.
    nd : int or None
        The spatial axes of a local pool; None for the others (any number, or none).
    layer : str or None
        The layer's name in npool.torch (``SoftPool`` -> ``SoftPool2d`` for a local pool;
        ``GlobalMaxPool`` and its ``GlobalMaxPool2d`` forms; ``NetVLAD``) and npool.keras (in
        Keras' own naming there: ``SoftPooling2D``, ``GlobalMaxPooling2D``); None where there
        is none (Max-Ent has a layer for 2-D only).
    """

    name: str
    family: str
    differentiable: Tuple[str, ...]
    other_arrays: Tuple[str, ...]
    static: Tuple[str, ...]
    outputs: Tuple[str, ...]
    saved: Tuple[str, ...]
    kernel: str
    nd: Optional[int] = None
    layer: Optional[str] = None


_WINDOW = ("kernel_size", "stride", "padding", "ceil_mode", "dilation")


def _local(kind, nd):
    differentiable = ("x", "lam") if kind == "maxent" else ("x",)
    layer = "SoftPool" if kind == "soft" else "MaxEntPool" if nd == 2 else None
    return Op(f"{kind}_pool{nd}d", "local", differentiable, (), _WINDOW, ("y",), (),
              f"{kind}_pool", nd, layer)


def _adaptive(kind, nd):
    """The adaptive form of a local pool: ``output_size`` windows (PyTorch's rule), the same
    kernel (its general path, or the fast path where the sizes divide)."""
    differentiable = ("x", "lam") if kind == "maxent" else ("x",)
    layer = "AdaptiveSoftPool" if kind == "soft" else None
    return Op(f"adaptive_{kind}_pool{nd}d", "local", differentiable, (), ("output_size",),
              ("y",), (), f"{kind}_pool", nd, layer)


_ROWS = (
    *(_local(kind, nd) for kind in ("soft", "maxent") for nd in (1, 2, 3)),
    *(_adaptive(kind, nd) for kind in ("soft", "maxent") for nd in (1, 2, 3)),
    Op("global_max_pool", "global", ("x",), (), ("keepdims",), ("y", "indices"), ("indices",),
       "global_max_pool", layer="GlobalMaxPool"),
    Op("global_avg_pool", "global", ("x",), (), ("keepdims",), ("y",), (), "global_avg_pool",
       layer="GlobalAvgPool"),
    Op("global_kmax_pool", "global", ("x",), (), ("k", "keepdims", "rounding"),
       ("y", "indices"), ("indices",), "weldon_pool", layer="GlobalKMaxPool"),
    Op("global_lse_pool", "global", ("x",), (), ("beta", "keepdims"), ("y", "stats"),
       ("stats",), "global_lse_pool", layer="GlobalLSEPool"),
    Op("global_gem_pool", "global", ("x", "p"), (), ("eps", "keepdims"), ("y",), (),
       "global_gem_pool", layer="GlobalGeMPool"),
    Op("weldon_pool", "global", ("x",), (), ("kmax", "kmin", "alpha", "keepdims", "rounding"),
       ("y", "indices"), ("indices",), "weldon_pool", layer="WeldonPool"),
    Op("netvlad_pool", "set", ("x", "assign", "centers"), ("mask",), (), ("y", "norms"),
       ("y", "norms"), "netvlad_pool", layer="NetVLAD"),
    Op("netrvlad_pool", "set", ("x", "assign"), ("mask",), (), ("y", "norms"), ("y", "norms"),
       "netvlad_pool", layer="NetRVLAD"),
    Op("netfv_pool", "set", ("x", "assign", "mu", "covar_weights"), ("mask",), (), ("y",), (),
       "netfv_pool", layer="NetFV"),
    Op("soft_dbow_pool", "set", ("assign",), ("mask",), (), ("y",), (), "soft_dbow_pool",
       layer="SoftDBoW"),
    Op("context_gating", "set", ("x", "weights", "biases"), (), (), ("y",), (),
       "context_gating", layer="ContextGating"),
)

#: Every op by name, in the order the docs list them.
OPS: Dict[str, Op] = {op.name: op for op in _ROWS}


def core_functions(name: str):
    """``(npool.<name>_forward, npool.<name>_backward)``: the core's functions of op ``name``
    (the adapters' one way to reach them; imported on use, so the table imports nothing).

    >>> core_functions("soft_pool2d")[0].__name__
    'soft_pool2d_forward'
    """
    import npool
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}")
    return getattr(npool, f"{name}_forward"), getattr(npool, f"{name}_backward")


def keras_name(layer: str) -> str:
    """A layer's name in Keras' naming (npool.keras): ``...Pool`` becomes ``...Pooling`` and
    ``Avg`` ``Average`` (``GlobalAvgPool`` -> ``GlobalAveragePooling``, with ``1D/2D/3D``
    forms); the set layers keep theirs.

    >>> keras_name("GlobalAvgPool"), keras_name("NetVLAD")
    ('GlobalAveragePooling', 'NetVLAD')
    """
    layer = layer.replace("Avg", "Average")
    return layer + "ing" if layer.endswith("Pool") else layer


def ops_of(family: str) -> Tuple[Op, ...]:
    """The ops of one family, in table order."""
    if family not in ("local", "global", "set"):
        raise ValueError(f"family must be 'local', 'global' or 'set', got {family!r}")
    return tuple(op for op in _ROWS if op.family == family)


def kernels() -> Tuple[str, ...]:
    """The distinct kernels the ops lower to, in table order."""
    return tuple(dict.fromkeys(op.kernel for op in _ROWS))
