"""Runs every Python block of docs/migration.md: the blocks of one section in order, in one
namespace, in a folder holding the files they read (written here as the originals write them:
a GFGP state_dict with torch.save, a LOUPE checkpoint with TensorFlow's v1 Saver)."""
import os
import pathlib
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

GUIDE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "migration.md"
SECTIONS = ["SoftPool", "GFGP (Max-Entropy pooling)",
            "spatial-pooling.torch and WILDCAT (global pools)", "LOUPE (set pools)",
            "A framework's own pooling (window geometry)"]


def _sections():
    text = GUIDE.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {title.strip(): re.findall(r"```python\n(.*?)```", body, flags=re.S)
            for title, body in zip(parts[1::2], parts[2::2])}


def test_every_original_has_a_section_with_code():
    sections = _sections()
    for title in SECTIONS:
        assert sections.get(title), f"docs/migration.md has no code in section {title!r}"


def _write_files(folder, section):
    if section.startswith("GFGP"):
        from original_layouts import OriginalGFGP
        torch.manual_seed(0)
        original = OriginalGFGP(64, 3, 2, 1, False, "sigmoid", 32)
        with torch.no_grad():
            original.ToParam(torch.randn(8, 64, 28, 28))  # BatchNorm statistics
        torch.save(original.state_dict(), folder / "gfgp_pool.pth")
    if section.startswith("LOUPE"):
        pytest.importorskip("tensorflow")
        import loupe_tf1
        (folder / "loupe").mkdir()
        rng = np.random.default_rng(0)
        loupe_tf1.run(str(folder / "loupe" / "model.ckpt"), "NetVLAD",
                      rng.standard_normal((4, 30, 128)).astype(np.float32),
                      np.ones((4, 256), np.float32), 256, 16)


@pytest.mark.parametrize("section", SECTIONS)
def test_guide_section_runs(section, tmp_path, monkeypatch):
    _write_files(tmp_path, section)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "migration_guide"}
    for number, block in enumerate(_sections()[section]):
        code = compile(block, f"docs/migration.md[{section} #{number + 1}]", "exec")
        exec(code, namespace)  # noqa: S102 (the guide's own snippets)
    assert os.getcwd() == str(tmp_path)
