"""npool.torch's public functions and modules have numpydoc docstrings (parameters matching the
signature, Returns, Examples; numpydoc's sections only) whose examples run, and annotations on
every function, constructor and forward."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numpydoc")

import npool.torch as nt  # noqa: E402
from docstring_checks import (REQUIRED, SECTIONS, failed_examples, numpydoc_errors,  # noqa: E402
                              unannotated)


@pytest.mark.parametrize("name", nt.__all__)
def test_numpydoc_sections(name):
    assert numpydoc_errors(f"npool.torch.{name}", REQUIRED + SECTIONS) == []


@pytest.mark.parametrize("name", nt.__all__)
def test_examples_run(name):
    examples, failures = failed_examples(getattr(nt, name), name, {"torch": torch, "nt": nt})
    assert examples > 0 and failures == 0, (name, failures)


@pytest.mark.parametrize("name", nt.__all__)
def test_annotated(name):
    assert unannotated(getattr(nt, name)) == []

