"""Online/offline parity on ML-1M: events replayed one by one through ``POST /events`` end in
the same top-10 as the offline parallel forward over each full sequence."""

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from service.app import create_app
from service.settings import Settings
from tests.service.offline import forward_last, load_model, top_k

N_USERS = 50
SCORE_TOLERANCE = 1e-4

pytestmark = [pytest.mark.data, pytest.mark.slow]


def read_ml1m(directory: Path) -> tuple[list[str], list[list[int]]]:
    """(external ids by index - 1, the first ``N_USERS`` users' index sequences)."""
    rows = (directory / "item_map.tsv").read_text().splitlines()[1:]
    raw_of_index = {int(index): raw for raw, index in (row.split("\t") for row in rows)}
    item_ids = [raw_of_index[index] for index in range(1, len(raw_of_index) + 1)]
    with (directory / "sequences.txt").open() as lines:
        sequences = [[int(x) for x in next(lines).split()[1:]] for _ in range(N_USERS)]
    return item_ids, sequences


async def replay(
    settings: Settings, item_ids: list[str], sequences: list[list[int]]
) -> list[dict[str, object]]:
    """Every user's events in order (users concurrently), then each user's top-10."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://parity") as client,
    ):

        async def run_user(user: int, sequence: list[int]) -> dict[str, object]:
            for position, index in enumerate(sequence):
                event = {"user_id": f"ml-{user}", "item_id": item_ids[index - 1]}
                k = 10 if position == len(sequence) - 1 else 0
                response = await client.post("/events", json=event, params={"k": k})
                assert response.status_code == 200, response.text
            final = await client.get(f"/recommendations/ml-{user}", params={"k": 10})
            body: dict[str, object] = final.json()
            return body

        return await asyncio.gather(*(run_user(u, s) for u, s in enumerate(sequences)))


def test_replayed_events_match_the_offline_forward(
    ml1m_dir: Path, make_artifact: Callable[..., Path], redis_url: str
) -> None:
    item_ids, sequences = read_ml1m(ml1m_dir)
    longest = max(len(sequence) for sequence in sequences)
    # max_len >= every replayed sequence: the service keeps (and masks) the whole history.
    artifact = make_artifact(seed=7, item_ids=item_ids, d_model=64, n_layers=2, max_len=longest)
    settings = Settings(artifact=artifact, redis_url=redis_url, batch_concurrency=8)
    results = asyncio.run(replay(settings, item_ids, sequences))
    model = load_model(artifact)
    torch.set_num_threads(1)
    for sequence, body in zip(sequences, results, strict=True):
        assert body["source"] == "model"
        expected = top_k(model, forward_last(model, sequence), 10, exclude=sorted(set(sequence)))
        served = body["items"]
        assert isinstance(served, list)
        assert [item["item_id"] for item in served] == [item_ids[i - 1] for i, _ in expected]
        np.testing.assert_allclose(
            [item["score"] for item in served], [s for _, s in expected], atol=SCORE_TOLERANCE
        )
