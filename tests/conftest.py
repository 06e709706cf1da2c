import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Every property test draws at least 200 examples. In CI the examples are derandomised (the same
# every run) and there is no deadline: the first call of a numba kernel compiles it.
settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


@pytest.fixture(scope="session")
def assets():
    """../shared/assets beside the checkout: always there in CI, absent on a user's machine."""
    if not ASSETS.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the real assets at {ASSETS}")
        pytest.skip(f"real assets not found at {ASSETS}")
    return ASSETS
