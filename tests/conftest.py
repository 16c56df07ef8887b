"""Shared fixtures. Integration tests use the real SmolLM2 prepared once per session.

The real data sets live outside the project: $EVOL_TESTSET / $EVOL_SEED_TASKS, or ../shared/data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pipeline  # noqa: F401  (offline environment)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_file(env: str, name: str) -> Path | None:
    path = Path(os.environ.get(env) or SHARED_DATA / name)
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def real_testset() -> Path:
    path = shared_file("EVOL_TESTSET", "evol_instruct_testset.jsonl")
    if path is None:
        pytest.skip("the real test set is not beside the project (../shared/data) nor in $EVOL_TESTSET")
    return path


@pytest.fixture(scope="session")
def real_seed_tasks() -> Path:
    path = shared_file("EVOL_SEED_TASKS", "self_instruct_seed_tasks.jsonl")
    if path is None:
        pytest.skip("the real seed tasks are not beside the project (../shared/data) nor in $EVOL_SEED_TASKS")
    return path


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """SmolLM2-135M-Instruct as a plain HF directory in the project's model store (prepared once)."""
    from pipeline.core.models import prepare_alias

    return prepare_alias("smollm2-135m", os.environ.get("EVOL_MODELS_DIR") or ROOT / "models").path
