"""npool.tf's public functions and npool.keras' layers (npool.tf's layer names are the same
classes) have numpydoc docstrings (parameters matching the signature, Returns, Examples;
numpydoc's sections only) whose examples run (their annotations: test_typing.py)."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("numpydoc")

import npool  # noqa: E402
import npool.keras  # noqa: E402,F401
import npool.tf  # noqa: E402,F401
from docstring_checks import REQUIRED, SECTIONS, failed_examples, numpydoc_errors  # noqa: E402

PUBLIC = [("npool.tf", name) for name in npool.tf.__all__] + \
    [("npool.keras", name) for name in npool.keras.__all__]


@pytest.mark.parametrize("module, name", PUBLIC)
def test_numpydoc_sections(module, name):
    assert numpydoc_errors(f"{module}.{name}", REQUIRED + SECTIONS,
                           allowed=("RT01",) if name == "portable" else ()) == []


@pytest.mark.parametrize("name", npool.tf.__all__)
def test_examples_run(name):
    examples, failures = failed_examples(getattr(npool.tf, name), name,
                                         {"np": np, "tf": tf, "npool": npool})
    assert examples > 0 and failures == 0, (name, failures)


def test_npool_keras_layers_are_npool_tf_layers():
    """So the examples above, run through npool.tf, are npool.keras' too."""
    assert {name: getattr(npool.keras, name) for name in npool.keras.__all__} == \
        {name: getattr(npool.tf, name) for name in npool.keras.__all__}
