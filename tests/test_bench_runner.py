"""benchmarks/run_all.py, the one command that runs every CPU benchmark, runs to the end and
writes its summary table (quick mode: small inputs; the ratios are not checked, only that every
family reports every case)."""
import pathlib
import subprocess
import sys

import pytest

from npool._op_table import ops_of

pytest.importorskip("torch")
try:
    import jax  # noqa: F401
    HAS_JAX = True
except ImportError:
    HAS_JAX = False
ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_run_all_writes_the_summary(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick",
                             "--repeats", "1", "--no-plot", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ready" in result.stdout and "timing" in result.stdout  # progress lines
    table = (tmp_path / "summary.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    families = {row.split(" | ")[0].lstrip("| ") for row in rows[1:]}
    jax_families = {"npool.jax local pools 2x2/2", "npool.jax global pools",
                    "npool.jax set pools"} if HAS_JAX else set()
    assert families == {"SoftPool 2x2/2", "Max-Ent 2x2/2, lam (N, C)", "global pools",
                        "NetVLAD"} | jax_families, families
    # without --compiled: SoftPool 2 layouts x (2 cases x 2 anchors + 2 out= cases x
    # max_pool2d), Max-Ent 2 layouts x 2 cases, global pools 2 shapes x 2 layouts x (fwd,
    # fwd+bwd) of every global pool of the op table, NetVLAD 4; npool.jax (fwd, grad) x: local
    # 2 layouts x 2 ops x 4 anchors, global 2 layouts x 3 ops x 3 anchors, NetVLAD 3 anchors
    jax_rows = 2 * (2 * 2 * 4 + 2 * 3 * 3 + 3) if HAS_JAX else 0
    assert len(rows) - 1 == 12 + 4 + 2 * 2 * 2 * len(ops_of("global")) + 4 + jax_rows
    # issue 28's targets, each met or missed: 3 ops x 2 windows x 2 layouts x 6 checks, 4 other
    # windows x 2 layouts x 2 checks, global pools 2 + 3
    assert "## Targets (issue 28)" in table
    verdicts = [line for line in table.splitlines() if line.endswith((" met", " MISSED"))]
    assert len(verdicts) == 72 + 16 + 7, len(verdicts)
