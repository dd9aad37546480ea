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


def test_a_users_mypy_sees_every_public_signature(tmp_path):
    """mypy over a user's script (run outside the source tree, so it reads the installed
    package as a user's mypy does): reveal_type of every public callable of every namespace
    whose framework is installed is a signature, never Any; a wrong argument type to the
    functions made once per dimension is flagged."""
    pytest.importorskip("mypy")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    lines = ["import numpy as np"]
    for namespace, framework in NAMESPACES.items():
        if framework and importlib.util.find_spec(framework) is None:
            continue
        module = importlib.import_module(namespace)
        alias = namespace.replace(".", "_")
        lines.append(f"import {namespace} as {alias}")
        lines += [f"reveal_type({alias}.{name})  # {namespace}.{name}" for name in module.__all__
                  if callable(getattr(module, name))]
    wrong = ['npool.soft_pool2d_forward(np.ones((1, 1, 4, 4)), kernel_size="2")',
             'npool.maxent_pool3d_backward(np.ones(1), np.ones(1), lam="1", kernel_size=2)']
    if importlib.util.find_spec("torch"):
        wrong.append('npool_torch.soft_pool2d(np.ones(1), kernel_size="2")')
    if importlib.util.find_spec("jax"):
        wrong.append('npool_jax.maxent_pool2d(np.ones(1), 1.0, kernel_size="2")')
    first_wrong = len(lines) + 1
    lines += wrong
    script = tmp_path / "user_script.py"
    script.write_text("\n".join(lines) + "\n")
    result = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent",
                             "--ignore-missing-imports", "--no-incremental",
                             "--cache-dir", str(tmp_path / "cache"), script.name],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    revealed = {}
    errors = set()
    for line in result.stdout.splitlines():
        place, _, message = line.partition(": ")
        number = int(place.split(":")[1]) if place.count(":") else 0
        if "Revealed type is" in message:
            revealed[lines[number - 1].split("# ")[1]] = message.split("is ", 1)[1]
        elif message.startswith("error"):
            errors.add(number)
    assert len(revealed) == sum(line.startswith("reveal_type") for line in lines), result.stdout
    assert [name for name, kind in revealed.items() if kind == '"Any"'] == []
    assert errors == set(range(first_wrong, first_wrong + len(wrong))), result.stdout
