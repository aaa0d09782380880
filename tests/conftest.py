"""Shared fixtures: where the real CamVid lives, and whether its absence is a failure."""

import os
from pathlib import Path

import pytest

# The shared data sits next to the repository, never inside it.
CAMVID_ROOT = Path(__file__).resolve().parents[1].parent / "shared/datasets/camvid"


@pytest.fixture
def camvid_root() -> Path:
    """The CamVid folder; skip when absent, fail instead when AUTODEEPLAB_REQUIRE_DATA=1."""
    if not CAMVID_ROOT.is_dir():
        reason = f"CamVid not found at {CAMVID_ROOT}"
        if os.environ.get("AUTODEEPLAB_REQUIRE_DATA") == "1":
            pytest.fail(f"{reason} and AUTODEEPLAB_REQUIRE_DATA=1")
        pytest.skip(reason)
    return CAMVID_ROOT
