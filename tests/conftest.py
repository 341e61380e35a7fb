"""Shared fixtures: simulated dither sets written once per test session."""

import pytest

from calimage3.simulate import simulate_dither


@pytest.fixture(scope="session")
def small_dither(tmp_path_factory):
    """Four 256x256 exposures with truth (fast; for I/O and step tests)."""
    out = tmp_path_factory.mktemp("small_dither")
    return simulate_dither(out, n_exposures=4, shape=(256, 256), seed=3)
