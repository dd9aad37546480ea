"""npool.torch's public functions and modules, and npool.torch.compat's, have numpydoc
docstrings (parameters matching the signature, Returns, Examples; numpydoc's sections only)
whose examples run (their annotations: test_typing.py)."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numpydoc")

import npool.torch as nt  # noqa: E402
from npool.torch import compat  # noqa: E402
from docstring_checks import REQUIRED, SECTIONS, failed_examples, numpydoc_errors  # noqa: E402

PUBLIC = [(nt, "npool.torch", name) for name in nt.__all__] + \
    [(compat, "npool.torch.compat", name) for name in compat.__all__]
IDS = [f"{module}.{name}" for _, module, name in PUBLIC]


@pytest.mark.parametrize("namespace, module, name", PUBLIC, ids=IDS)
def test_numpydoc_sections(namespace, module, name):
    assert numpydoc_errors(f"{module}.{name}", REQUIRED + SECTIONS) == []


@pytest.mark.parametrize("namespace, module, name", PUBLIC, ids=IDS)
def test_examples_run(namespace, module, name):
    examples, failures = failed_examples(getattr(namespace, name), name,
                                         {"torch": torch, "nt": nt})
    assert examples > 0 and failures == 0, (name, failures)
