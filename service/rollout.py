"""Model rollout without a restart: ``lrurec publish`` records an artifact as the current model
in Redis; every worker polls the record, loads and warms the new model off the request path
(in a thread; numba compiles there), then switches to it at once.

Key: ``<prefix>:model:current``, a JSON object ``{"path", "model_version", "published_at"}``.
The path must name the same artifact on every replica (a shared volume). The switch replaces
the worker's engine: a request holds the engine it started with, so requests in flight finish
on the old model and the next ones run on the new. A user's state of the old model is rebuilt
from the user's history on the user's next event. A model that fails to load leaves the old
one serving (an error in the log, ``lrurec_model_load_failures_total``), until something else
is published. Rolling back is publishing the previous artifact.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from redis.exceptions import RedisError

from model import Artifact, load_artifact
from service import telemetry
from service.engine.engine import Engine
from service.runtimes.protocol import Stepper
from service.runtimes.quantized import with_quantized_scoring
from service.runtimes.registry import build_backend
from service.settings import Settings
from service.store import RedisClient, UserStore
from service.store.event_log import EventLog

logger = logging.getLogger(__name__)


def current_key(prefix: str) -> str:
    return f"{prefix}:model:current"


@dataclass(frozen=True)
class Published:
    path: str
    model_version: str


async def read_published(client: RedisClient, prefix: str) -> Published | None:
    """The model recorded as current, or None if none was published."""
    raw = await client.get(current_key(prefix))
    if raw is None:
        return None
    record = orjson.loads(raw)
    return Published(str(record["path"]), str(record["model_version"]))


async def publish(client: RedisClient, prefix: str, path: Path, model_version: str) -> None:
    record = {"path": str(path), "model_version": model_version, "published_at": time.time()}
    await client.set(current_key(prefix), orjson.dumps(record))


def warm_up(stepper: Stepper) -> None:
    """One step and one top-k so the first request pays no lazy initialisation (numba's
    compilation included)."""
    hidden, _ = stepper.step(
        np.ones(1, dtype=np.int64), np.zeros((1, *stepper.state_shape), dtype=np.float32)
    )
    stepper.top_k(hidden, 10, [[]])


def load_model(path: Path, settings: Settings) -> tuple[Artifact, Stepper, str]:
    """Load, build the backend of and warm one artifact (blocking: run it in a thread)."""
    artifact = load_artifact(path, device=settings.device)
    backend, stepper = build_backend(settings.backend, artifact, settings.device)
    stepper = with_quantized_scoring(stepper, artifact, settings)  # large catalogues: exact int8
    warm_up(stepper)
    return artifact, stepper, backend


def engine_for(
    loaded: tuple[Artifact, Stepper, str],
    store: UserStore,
    settings: Settings,
    event_log: EventLog | None,
) -> Engine:
    artifact, stepper, backend = loaded
    engine = Engine(store, stepper, artifact, settings, event_log)
    logger.info("model backend: %s (LRUREC_BACKEND=%s)", backend, settings.backend)
    return engine


class ModelWatcher:
    """Polls the published model every ``settings.model_poll_seconds``; switches to it."""

    def __init__(
        self,
        client: RedisClient,
        settings: Settings,
        current: Callable[[], Engine],
        switch: Callable[[Engine, str], None],
    ) -> None:
        self._client = client
        self._settings = settings
        self._current = current
        self._switch = switch
        self._failed: Published | None = None

    async def run(self, stop: asyncio.Event) -> None:
        interval = self._settings.model_poll_seconds
        while not stop.is_set():
            await self.check()
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                continue

    async def check(self) -> bool:
        """Switch to the published model if it is another one; True if it switched."""
        try:
            published = await read_published(self._client, self._settings.key_prefix)
        except (RedisError, ValueError, KeyError) as error:
            logger.warning("model poll: cannot read the published model: %s", error)
            return False
        engine = self._current()
        if published is None or published.model_version == engine.model_version:
            return False
        if published == self._failed:
            return False  # already tried; waits for another publish
        logger.info("loading published model %s from %s", published.model_version, published.path)
        try:
            loaded = await asyncio.to_thread(load_model, Path(published.path), self._settings)
            if loaded[0].version != published.model_version:
                raise ValueError(
                    f"{published.path} holds model {loaded[0].version}, not the published "
                    f"{published.model_version}"
                )
        except Exception:
            logger.exception("model %s failed to load; serving %s still",
                             published.model_version, engine.model_version)  # fmt: skip
            telemetry.MODEL_LOAD_FAILURES.inc()
            self._failed = published
            return False
        new = engine_for(loaded, engine.store, self._settings, engine.event_log)
        self._switch(new, loaded[2])
        telemetry.switch_model(engine.model_version, new.model_version, new.model_type,
                               loaded[2], new.n_items)  # fmt: skip
        logger.info("switched from model %s to %s", engine.model_version, new.model_version)
        return True
