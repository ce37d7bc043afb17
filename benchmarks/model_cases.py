"""Timed "events" for the model-level benchmark: one event = step + exact top-10 for each user.

Every case is a closure over ready inputs, so the timed call does exactly the serving work:
LRURec advances its O(1) state; SASRec appends the item to its window of the last L items and
recomputes the whole window (:meth:`model.SASRec.step`); both then rank every item (column 0
excluded) and keep the best 10.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model import Artifact, LRURec, LRURecConfig, SASRec, SASRecConfig
from model.inference.export import export_onnx
from model.inference.folded import FoldedLRURec
from model.inference.topk import chunked_top_k
from service.runtimes.numba_runtime import NumbaStepper
from service.runtimes.onnx_runtime import BoundSession, OnnxStepper
from service.runtimes.protocol import Stepper

Event = Callable[[], object]
K = 10


def ort_session(data: bytes, threads: int) -> ort.InferenceSession:
    """The service's session settings (service/onnx_runtime.py): sequential, all optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def lrurec_model(n_items: int, seed: int = 0, d_model: int = 64) -> LRURec:
    torch.manual_seed(seed)
    return LRURec(LRURecConfig(n_items=n_items, d_model=d_model, n_layers=2)).eval()


def sasrec_model(n_items: int, max_len: int, seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    config = SASRecConfig(n_items=n_items, d_model=64, n_layers=2, n_heads=1, max_len=max_len)
    return SASRec(config).eval()


def random_items(n_items: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, n_items + 1, shape, generator=generator)


def lrurec_torch_event(model: LRURec, batch: int, chunk_size: int = 65_536) -> Event:
    """LRURec in torch: folded step + chunked exact top-10 (users pre-filled with 50 events)."""
    with torch.inference_mode():
        _, state = model.prefill(random_items(model.config.n_items, (batch, 50), seed=batch))
    items = random_items(model.config.n_items, (batch,), seed=batch + 1)
    table, bias = model.embedding.weight, model.item_bias
    folded = FoldedLRURec.from_model(model)

    def event() -> object:
        hidden, _ = folded.step(items, state)
        return chunked_top_k(hidden, table, bias, K, chunk_size=chunk_size)

    return event


def lrurec_onnx_event(model: LRURec, batch: int, session: ort.InferenceSession) -> Event:
    """LRURec in ONNX Runtime: the step graph with in-graph TopK, as the service runs graphs.

    :class:`service.runtimes.onnx_runtime.BoundSession` (IO binding up to batch 16,
    ``session.run`` above) returns copies of the outputs (hidden, new_state, top_scores,
    top_items).
    """
    with torch.inference_mode():
        _, state = model.prefill(random_items(model.config.n_items, (batch, 50), seed=batch))
    items = random_items(model.config.n_items, (batch,), seed=batch + 1).numpy()
    states = np.ascontiguousarray(state.numpy())
    bound = BoundSession(session)

    def event() -> object:
        return bound.run(items, states)

    return event


def lrurec_onnx_session(model: LRURec, threads: int) -> ort.InferenceSession:
    """The step graph with in-graph TopK (``top_k=10``)."""
    return ort_session(export_onnx(model, graph="step", top_k=K), threads)


def _artifact(model: LRURec) -> Artifact:
    n_items = model.config.n_items
    return Artifact(
        model=model,
        item_ids=[str(index) for index in range(1, n_items + 1)],
        popularity=torch.ones(n_items + 1),
        version="bench",
        config={},
        path=Path(),
    )


def service_stepper(model: LRURec, backend: str, threads: int) -> Stepper:
    """The service's ``onnx`` or ``numba`` backend for ``model``."""
    if backend == "onnx":
        return OnnxStepper(_artifact(model), "cpu", threads)
    return NumbaStepper(_artifact(model))


def lrurec_service_event(model: LRURec, batch: int, stepper: Stepper, seen: int = 50) -> Event:
    """A backend as the service calls it: ``step_top_k`` without ``seen`` history items.

    For onnx that is two graphs (the state graph, then the rank graph with the exclusions
    in-graph), for numba one compiled call (step, then scoring + top-k), as
    :class:`service.engine.Engine` calls it before its Redis write. ``seen=0`` ranks every
    item: the same work as the fused onnx case.
    """
    n_items = model.config.n_items
    history = random_items(n_items, (batch, 50), seed=batch)
    with torch.inference_mode():
        _, state = model.prefill(history)
    items = random_items(n_items, (batch,), seed=batch + 1).numpy()
    states = np.ascontiguousarray(state.numpy())
    exclude = history[:, :seen].tolist()

    def event() -> object:
        return stepper.step_top_k(items, states, K, exclude)

    return event


def sasrec_event(model: SASRec, batch: int) -> Event:
    """SASRec recompute: a full window of L real items per user, append one, recompute, top-10."""
    length = model.config.max_len
    state = random_items(model.config.n_items, (batch, length), seed=length).float()
    items = random_items(model.config.n_items, (batch,), seed=length + 1)
    table = model.embedding.weight

    def event() -> object:
        hidden, _ = model.step(items, state)
        return chunked_top_k(hidden, table, None, K)

    return event


def incremental_times(step_and_rank: Callable[[int], object], n_events: int) -> list[float]:
    """Seconds of each of ``n_events`` consecutive events of one user (Figure 1 right)."""
    import time

    times = []
    for index in range(n_events):
        start = time.perf_counter()
        step_and_rank(index)
        times.append(time.perf_counter() - start)
    return times


def lrurec_torch_user(model: LRURec, n_events: int) -> Callable[[int], object]:
    """One user's stream through torch LRURec (folded step); the state is carried along."""
    items = random_items(model.config.n_items, (n_events, 1), seed=7)
    folded = FoldedLRURec.from_model(model)
    state = [folded.init_state(1)]

    def event(index: int) -> object:
        hidden, state[0] = folded.step(items[index], state[0])
        return chunked_top_k(hidden, model.embedding.weight, model.item_bias, K)

    return event


def lrurec_onnx_user(
    model: LRURec, session: ort.InferenceSession, n_events: int
) -> Callable[[int], object]:
    items = random_items(model.config.n_items, (n_events, 1), seed=7).numpy()
    state: list[np.ndarray] = [np.zeros((1, *model.state_shape), dtype=np.float32)]
    bound = BoundSession(session)

    def event(index: int) -> object:
        _, state[0], scores, top = bound.run(items[index], state[0])
        return scores, top

    return event


def lrurec_numba_user(model: LRURec, stepper: Stepper, n_events: int) -> Callable[[int], object]:
    """One user's stream through the numba backend (step, then top-10 of every item, in one
    compiled call)."""
    items = random_items(model.config.n_items, (n_events, 1), seed=7).numpy()
    state: list[np.ndarray] = [np.zeros((1, *model.state_shape), dtype=np.float32)]

    def event(index: int) -> object:
        _, state[0], ranked = stepper.step_top_k(items[index], state[0], K, [[]])
        return ranked

    return event


def sasrec_user(model: SASRec, n_events: int) -> Callable[[int], object]:
    """One user's stream through SASRec recompute (the window fills, then slides)."""
    items = random_items(model.config.n_items, (n_events, 1), seed=7)
    state = [model.init_state(1)]

    def event(index: int) -> object:
        hidden, state[0] = model.step(items[index], state[0])
        return chunked_top_k(hidden, model.embedding.weight, None, K)

    return event
