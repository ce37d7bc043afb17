"""Offline references the service is checked against: plain model calls, no service code."""

import numpy as np
import redis
import torch
from numpy.typing import NDArray
from redis.cluster import RedisCluster

from model import LRURec, load_artifact


def state_key(user_id: str, prefix: str = "lrurec") -> str:
    """The documented Redis layout: ``<prefix>:v1:{<user>}:state``."""
    return f"{prefix}:v1:{{{user_id}}}:state"


def stored_state(client: "redis.Redis | RedisCluster", user_id: str) -> NDArray[np.float32]:
    """The float32 state stored for ``user_id``, flattened (fails if there is none)."""
    raw = client.hget(state_key(user_id), "state")
    assert isinstance(raw, bytes), f"no state stored for {user_id!r}"
    return np.frombuffer(raw, dtype=np.float32)


def load_model(artifact: object) -> LRURec:
    model = load_artifact(str(artifact)).model
    assert isinstance(model, LRURec)
    return model


def stepped(model: LRURec, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden [d], state [*state_shape]) after stepping through ``indices`` from zero."""
    state = model.init_state(1)
    hidden = model.cold_start_hidden()[None]
    with torch.no_grad():
        for index in indices:
            hidden, state = model.step(torch.tensor([index]), state)
    return hidden[0], state[0]


def forward_last(model: LRURec, indices: list[int]) -> torch.Tensor:
    """The parallel forward's output at the last position of one sequence: ``[d]``."""
    with torch.no_grad():
        hidden: torch.Tensor = model(torch.tensor([indices]))
    return hidden[0, -1]


def top_k(
    model: LRURec, hidden: torch.Tensor, k: int, exclude: list[int]
) -> list[tuple[int, float]]:
    """Best ``k`` (index, score) of ``hidden [d]`` without padding and ``exclude``."""
    with torch.no_grad():
        scores = model.score(hidden).clone()
    scores[0] = -torch.inf
    if exclude:
        scores[torch.tensor(exclude)] = -torch.inf
    values, indices = torch.topk(scores, k)
    return list(zip(indices.tolist(), values.tolist(), strict=True))
