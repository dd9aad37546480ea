"""The typed public API: every public function and class (its constructor and call) of npool,
npool.testing, npool.jax, npool.torch (and compat), npool.tf and npool.keras is annotated, the
package ships py.typed, and mypy passes over src/npool (the configuration is pyproject's)."""
import importlib
import importlib.resources
import os
import pathlib
import subprocess
import sys

import pytest

from docstring_checks import unannotated

ROOT = pathlib.Path(__file__).resolve().parents[1]
# namespace: the framework it needs (None: none)
NAMESPACES = {"npool": None, "npool.testing": "hypothesis", "npool.jax": "jax",
              "npool.torch": "torch", "npool.torch.compat": "torch", "npool.tf": "tensorflow",
              "npool.keras": "keras"}


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_public_name_is_annotated(namespace):
    if NAMESPACES[namespace]:
        pytest.importorskip(NAMESPACES[namespace])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module = importlib.import_module(namespace)
    missing = {name: unannotated(getattr(module, name)) for name in module.__all__
               if callable(getattr(module, name))}
    assert {name: gaps for name, gaps in missing.items() if gaps} == {}


def test_the_package_says_it_is_typed():
    assert importlib.resources.files("npool").joinpath("py.typed").is_file()


def test_mypy_passes():
    pytest.importorskip("mypy")
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
