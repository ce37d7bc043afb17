"""Service fixtures: the real app (real lifespan) on the session's Redis and a tiny artifact."""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings

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
