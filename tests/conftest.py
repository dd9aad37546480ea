import os
import sys

import pytest
from hypothesis import HealthCheck, settings

# "ci" is Hypothesis's own profile name: it is loaded by default when CI is set in the
# environment. Both profiles keep the suite within a few minutes on two cores. Every profile
# draws at random (no fixed seed): the tolerances follow each problem's conditioning, so no
# draw can fail a correct implementation, and a failure prints the seed that reproduces it
# (pytest --hypothesis-seed=N).
# The tests' shared modules (helpers.py, gpu_backends.py, cuda_emulation.py, ...) import by
# name also under --import-mode=importlib, which puts no test folder on the path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

settings.register_profile("ci", max_examples=150, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def emulation_library(tmp_path_factory):
    """npool's CUDA kernels compiled for the host (tests/cuda_emulation.py), as a ctypes
    library; the test is skipped without nvcc."""
    import cuda_emulation

    library = cuda_emulation.build(tmp_path_factory.mktemp("cuda_host"))
    if library is None:
        pytest.skip("no nvcc: the CUDA kernels cannot be compiled for the host")
    return library


@pytest.fixture(scope="module", params=["emulated", "cuda"])
def gpu(request):
    """The GPU backend a CUDA test runs on: the emulated kernels (wherever nvcc is), then a
    real GPU (PyCUDA and a GPU); see gpu_backends.py."""
    from gpu_backends import Cuda, Emulated

    if request.param == "emulated":
        backend = Emulated(request.getfixturevalue("emulation_library"))
    else:
        backend = Cuda()
    with backend:
        yield backend


@pytest.fixture(autouse=True)
def _restore_threads():
    """Tests that change npool's thread count leave it as they found it."""
    import npool

    yield
    npool.set_num_threads(None)

