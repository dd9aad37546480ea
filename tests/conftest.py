import os

import pytest
from hypothesis import HealthCheck, settings

# "ci" is Hypothesis's own profile name: it is loaded by default when CI is set in the
# environment. Both profiles keep the suite within a few minutes on two cores.
settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(autouse=True)
def _restore_threads():
    """Tests that change npool's thread count leave it as they found it."""
    import npool

    yield
    npool.set_num_threads(None)
