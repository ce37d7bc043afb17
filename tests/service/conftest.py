"""Service fixtures: the real app (real lifespan) on the session's Redis and a tiny artifact."""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import TINY_N_ITEMS

ClientFactory = Callable[..., AbstractContextManager[TestClient]]


@pytest.fixture
def settings(tiny_artifact: Path, redis_url: str) -> Settings:
    return Settings(artifact=tiny_artifact, redis_url=redis_url)


@pytest.fixture
def make_client(settings: Settings) -> ClientFactory:
    """``with make_client(**setting_overrides) as client:`` runs a fresh app's lifespan."""

    @contextmanager
    def make(**overrides: Any) -> Iterator[TestClient]:
        updated = Settings.model_validate({**settings.model_dump(), **overrides})
        with TestClient(create_app(updated)) as client:
            yield client

    return make


@pytest.fixture
def client(make_client: ClientFactory) -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


@pytest.fixture(scope="module")
def histories() -> np.ndarray:
    """Left-padded histories ``[6, 12]`` over the tiny catalogue, the last one empty."""
    generator = np.random.default_rng(0)
    items = generator.integers(1, TINY_N_ITEMS + 1, size=(6, 12))
    items[:, :4] = 0  # left padding, as the engine sends it
    items[5] = 0  # an empty history
    return items.astype(np.int64)
