"""The build: OpenMP, kernel selection, the CUDA fatbin shipped in the package, the demo."""
import os
import shutil
import struct
import subprocess
import sys

import pytest

import npool
from npool import _build_info
from npool._cuda import fatbin_path

FATBIN_MAGIC = 0xBA55ED50
KERNELS = [f"npool_windowed_softmax_{name}_{t}_{i}"
           for name in ("forward", "backward_disjoint", "backward_stats", "backward_gather")
           for t in ("f16", "f32", "f64") for i in ("i32", "i64")] + [
    f"npool_global_{name}_{t}"
    for name in ("max", "avg", "lse", "lse_backward", "select", "select_backward",
                 "scatter_backward", "avg_backward") for t in ("f16", "f32", "f64")] + [
    f"npool_sum_to_shape_{t}" for t in ("f16", "f32", "f64")] + [
    f"npool_{name}_{t}"
    for name in ("batched_matmul", "vlad_normalize", "vlad_normalize_backward",
                 "vlad_centers_gradient", "l2n_rows", "l2n_rows_backward", "fv_moments",
                 "fv_backward_terms", "gating", "gating_backward") for t in ("f32", "f64")] + [
    f"npool_set_rows_{pair}" for pair in ("f32_f32", "f64_f64", "f16_f32", "f32_f16")]


def test_build_info_is_consistent():
    assert isinstance(_build_info.openmp, bool)
    assert isinstance(_build_info.cuda_fatbin, bool)
    assert (fatbin_path() is not None) == _build_info.cuda_fatbin


@pytest.mark.skipif(not _build_info.cuda_fatbin, reason="built without nvcc")
def test_fatbin_holds_every_kernel_for_every_arch():
    data = fatbin_path().read_bytes()
    magic, = struct.unpack_from("<I", data)
    assert magic == FATBIN_MAGIC
    archs = _build_info.cuda_archs.split(";")
    assert "sm_90" in archs and "sm_80" in archs
    for kernel in KERNELS:
        # The symbol table of every embedded cubin names the kernel.
        assert data.count(f".text.{kernel}".encode()) >= len(archs), kernel


def test_kernel_sources_are_shipped():
    """Without the fatbin, the GPU backend compiles these at run time."""
    from npool._cuda import kernel_source_dir
    names = {f.name for f in kernel_source_dir().iterdir()}
    assert {"npool_cuda.cuh", "windowed_softmax.cu", "global_pools.cu", "reductions.cu",
            "set_pools.cu"} <= names


def test_fatbin_is_built_when_nvcc_is_present():
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on this machine")
    assert _build_info.cuda_fatbin, "nvcc is on PATH but the build made no fatbin"


def test_demo_runs():
    out = subprocess.run([sys.executable, "-m", "npool"], capture_output=True, text=True,
                         check=True, timeout=300)
    for section in ("Ops (NumPy core", "1. What pooling keeps", "2. Exact where",
                    "3. Speed", "More:"):
        assert section in out.stdout, section
    assert "faster" in out.stdout
    assert "through XLA's FFI (handler built for XLA FFI API " in out.stdout
    psnr = {line.split()[0]: float(line.split()[-2]) for line in out.stdout.splitlines()
            if line.strip().endswith(" dB")}
    assert psnr["SoftPool"] > psnr["max"]  # SoftPool keeps more of the image than max pooling
    assert "nan" in out.stdout and "499.731049   (exact" in out.stdout  # npool: correctly rounded


def test_public_api():
    for nd in (1, 2, 3):
        for kind in ("forward", "backward"):
            fn = getattr(npool, f"soft_pool{nd}d_{kind}")
            assert fn.__name__ == f"soft_pool{nd}d_{kind}" and fn.__doc__
    assert callable(npool.set_num_threads) and callable(npool.get_num_threads)
    assert callable(npool.cuda_available)


def _configure(tmp_path, *defines):
    """Run only CMake's configure step of npool's build, in a scratch folder."""
    from pathlib import Path

    cmake = shutil.which("cmake")
    source = Path(__file__).resolve().parents[1]
    if cmake is None or not (source / "CMakeLists.txt").is_file():
        pytest.skip("needs cmake and the source tree")
    return subprocess.run(
        [cmake, "-S", str(source), "-B", str(tmp_path / "build"),
         f"-DPython_EXECUTABLE={sys.executable}", *defines],
        capture_output=True, text=True, timeout=300)


def test_cuda_on_without_nvcc_fails_clearly(tmp_path):
    result = _configure(tmp_path, "-DNPOOL_CUDA=ON", "-DNPOOL_NVCC=/nonexistent/nvcc")
    assert result.returncode != 0
    assert "NPOOL_CUDA=ON but nvcc was not found" in result.stderr


def test_cuda_auto_without_nvcc_builds_without_the_fatbin(tmp_path):
    result = _configure(tmp_path, "-DNPOOL_CUDA=AUTO", "-DNPOOL_NVCC=/nonexistent/nvcc")
    assert result.returncode == 0, result.stderr
    assert "nvcc not found, building without the CUDA fatbin" in result.stdout
    info = (tmp_path / "build" / "_build_info.py").read_text()
    assert "cuda_fatbin = False" in info and 'cuda_report = "not built: nvcc not found' in info
    assert "npool build: CUDA fatbin not built: nvcc not found" in result.stdout


def test_the_build_says_what_it_built():
    """_build_info's reports (which the build prints and ``python -m npool --version``
    repeats): the CPU kernel builds, and the fatbin's architectures or why there is none."""
    assert _build_info.cpu_report.startswith("baseline")
    assert ("x86-64-v4" in _build_info.cpu_report) == _build_info.x86_64_v4_kernels
    if _build_info.cuda_fatbin:
        assert _build_info.cuda_report.startswith(_build_info.cuda_archs)
    else:
        assert _build_info.cuda_report.startswith("not built: ")
    out = subprocess.run([sys.executable, "-m", "npool", "--version"], capture_output=True,
                         text=True, check=True, timeout=60).stdout.splitlines()
    assert out == [f"npool {npool.__version__} (Python {sys.version.split()[0]})",
                   f"CPU kernels: {_build_info.cpu_report}",
                   f"CUDA fatbin: {_build_info.cuda_report}"]


def test_a_cached_fatbin_is_reused_instead_of_running_nvcc(tmp_path):
    """NPOOL_CUDA_CACHE: the first configure names the cache file nvcc would fill; with that
    file present, the next one copies it (the wheels of every Python share one fatbin)."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(nvcc):
        pytest.skip("no nvcc on this machine")
    cache = tmp_path / "cache"
    first = _configure(tmp_path, "-DNPOOL_CUDA=ON", f"-DNPOOL_NVCC={nvcc}",
                       f"-DNPOOL_CUDA_CACHE={cache}")
    assert first.returncode == 0, first.stderr
    cached = first.stdout.split("nvcc builds it into: ")[1].splitlines()[0].strip()
    os.makedirs(cache, exist_ok=True)
    with open(cached, "wb") as f:
        f.write(b"a fatbin built before")
    second = _configure(tmp_path, "-DNPOOL_CUDA=ON", f"-DNPOOL_NVCC={nvcc}",
                        f"-DNPOOL_CUDA_CACHE={cache}")
    assert second.returncode == 0, second.stderr
    assert f"reused from the cache: {cached}" in second.stdout
    assert (tmp_path / "build" / "npool_kernels.fatbin").read_bytes() == b"a fatbin built before"
    assert "from NPOOL_CUDA_CACHE" in (tmp_path / "build" / "_build_info.py").read_text()


def test_bad_npool_cuda_value_is_refused(tmp_path):
    result = _configure(tmp_path, "-DNPOOL_CUDA=MAYBE")
    assert result.returncode != 0 and "NPOOL_CUDA must be AUTO, ON or OFF" in result.stderr


def test_one_version_everywhere():
    """npool.__version__ is the version: the installed metadata, the CHANGELOG's newest entry
    and CITATION.cff agree with it."""
    import importlib.metadata
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parents[1]
    assert importlib.metadata.version("npool") == npool.__version__
    changelog = (root / "CHANGELOG.md").read_text()
    assert re.search(r"^## (\S+)", changelog, re.M).group(1) == npool.__version__
    citation = (root / "CITATION.cff").read_text()
    assert re.search(r"^version: (\S+)", citation, re.M).group(1) == npool.__version__


IMPORT_WITHOUT_ML_DTYPES = """
import sys, time
start = time.perf_counter()
import numpy as np
import npool
assert "ml_dtypes" not in sys.modules, "import npool imported ml_dtypes"
x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
npool.soft_pool2d_forward(x, 2)
npool.global_kmax_pool_backward(np.ones((2, 3), np.float32), x, k=2)
for bad in (x.astype(np.int32), x.astype(np.complex64), x.astype(np.float16)):
    try:
        npool.soft_pool2d_forward(bad, 2)
    except TypeError:
        assert bad.dtype != np.float16
assert "ml_dtypes" not in sys.modules, "float32, float16 and bad dtypes imported ml_dtypes"
import ml_dtypes
y = npool.soft_pool2d_forward(x.astype(ml_dtypes.bfloat16), 2)
assert y.dtype == ml_dtypes.bfloat16
print("ok")
"""


def test_ml_dtypes_is_imported_only_when_bfloat16_is_met():
    """Importing ml_dtypes takes about a second: ``import npool`` and float16/32/64 work (and the
    dtype errors) leave it alone; a bfloat16 array still works once its user has made one."""
    result = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_ML_DTYPES],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
