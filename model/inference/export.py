"""ONNX export of LRURec's serving graphs: one step (+ scores) with real tensors in and out.

ONNX Runtime has no complex type (onnx/onnx#6480), so the exported graph is the folded real-valued
step of :mod:`model.inference.folded` (same function, pinned by tests/model/test_export.py), on the
serving state layout. Fixed names (the contract with any runtime):

    step graph   inputs   items      int64   [batch]                 one item per user
                          state      float32 [batch, n_layers, 2, n] (Re h, Im h) per layer
                 outputs  hidden     float32 [batch, d]
                          new_state  float32 [batch, n_layers, 2, n]
                          scores     float32 [batch, v]              column 0 (padding) is -inf
    step graph with ``top_k=k``: ``scores`` replaced by top_scores float32 [batch, k] and
                 top_items int64 [batch, k] (the best k items, best first, by an in-graph TopK)
    state graph  the step graph without ``scores`` (ONNX Runtime computes every node of a
                 graph whatever outputs are requested, and scoring 1M items costs milliseconds)
    score graph  input    hidden     float32 [batch, d]
                 output   scores     float32 [batch, v]              column 0 is -inf
    rank graph   inputs   hidden     float32 [batch, d]
                          exclude    int64   [batch, m]              items never returned; pad
                                                                     rows with 0 (padding)
                          k          int64   [1]                     1 <= k <= v
                 outputs  top_scores float32 [batch, k], top_items int64 [batch, k], best first;
                          an excluded item (or column 0) can only appear with score -inf, when
                          fewer than k items are left: callers drop non-finite scores

The batch axis is dynamic. With ``table_inputs=True`` the item table and score bias become graph
inputs ``item_embedding`` ``[v, d]`` and ``item_bias`` ``[v]`` (``v`` dynamic; the state graph
only takes the table) whose defaults are stored as initializers of the same name, so a runtime
may feed a different catalogue or leave them out. ONNX Runtime does not constant-fold such
overridable inputs, which is why they are off by default.

At batch 1 ONNX Runtime's cost is mostly per node (about 4,000 instructions each, against about
20,000 for a whole ``run``), so the folded step is written for few nodes: the decay of every
layer's old state is one Mul + ReduceSum + Add at the start (it does not depend on the new
event), and each layer's input projection adds it as the Gemm's C operand. (Fusing each
residual Add + LayerNormalization into ONNX Runtime's SkipLayerNormalization removed 4 more nodes
and ~6% of the instructions at batch 1 but measured no faster, and slower at batch 8 and 64.)

The exporter is the TorchScript one (``dynamo=False``): the dynamo exporter needs ``onnxscript``,
which is not a dependency, and the classic one handles this small graph exactly. The rank graph
(five nodes, with a data-dependent TopK width) is written with ``onnx.helper`` directly.
"""

import io
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.inference.export_graphs import add_default_inputs, rank_graph
from model.inference.folded import fold, folded_step
from model.lrurec import LRURec
from model.shapes import Hidden, Items, Scores, State

OPSET = 17
STEP_INPUTS = ("items", "state")
TABLE_INPUTS = ("item_embedding", "item_bias")
STEP_OUTPUTS = ("hidden", "new_state", "scores")
STATE_OUTPUTS = ("hidden", "new_state")
TOP_K_OUTPUTS = ("top_scores", "top_items")
SCORE_INPUTS = ("hidden",)
SCORE_OUTPUTS = ("scores",)
RANK_INPUTS = ("hidden", "exclude", "k")
GRAPHS = ("step", "state", "score", "rank")


def masked_scores(hidden: Hidden, table: Tensor, bias: Tensor, padding: Tensor) -> Scores:
    """``hidden @ tableᵀ + bias`` with column 0 replaced by ``padding`` ``[1]`` (-inf).

    ``padding`` is a (persistent) buffer made outside the trace: the TorchScript exporter's shape
    inference fails on a -inf constant made inside it, or on a non-persistent buffer (inlined as a
    constant), with "value cannot be converted to type int64_t without overflow".
    """
    return F.linear(hidden, table, torch.cat([padding, bias[1:]]))


def _padding_score(model: LRURec) -> Tensor:
    return torch.full_like(model.item_bias.detach()[:1], -torch.inf)


class StepModule(nn.Module):
    """LRURec step and scores with real tensors only; the λ, γ, B, C folding is a snapshot.

    The step is :func:`model.inference.folded.folded_step`, written for few ONNX nodes (module
    docstring).

    Args:
        model: the LRURec to serve (its weights at construction time are folded in).
        with_scores: also return the scores (the step graph); ``False`` gives the state graph.
        top_k: with scores, return the best ``top_k`` (scores, item indices) instead of them.
    """

    padding: Tensor

    def __init__(self, model: LRURec, with_scores: bool = True, top_k: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, LRURec):
            raise TypeError(f"ONNX export supports LRURec, got {type(model).__name__}")
        self.model = model
        self.with_scores = with_scores
        self.top_k = top_k
        self.folded = fold(model)
        self.register_buffer("padding", _padding_score(model))

    def forward(
        self,
        items: Items,
        state: State,
        item_embedding: Tensor | None = None,
        item_bias: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """``items [b]``, ``state [b, k, 2, n]`` → ``(hidden [b, d], new_state, scores [b, v])``.

        Without ``with_scores`` only ``(hidden, new_state)``; with ``top_k``
        ``(hidden, new_state, top_scores [b, k], top_items [b, k])``.
        """
        table = self.model.embedding.weight if item_embedding is None else item_embedding
        hidden, new_state = folded_step(self.model, self.folded, items, state, table)
        if not self.with_scores:
            return hidden, new_state
        bias = self.model.item_bias if item_bias is None else item_bias
        scores = masked_scores(hidden, table, bias, self.padding)
        if self.top_k is None:
            return hidden, new_state, scores
        top_scores, top_items = torch.topk(scores, self.top_k, dim=1)
        return hidden, new_state, top_scores, top_items


class ScoreModule(nn.Module):
    """Scores of hidden vectors (the cold start, or a stored hidden): ``[b, d] → [b, v]``."""

    padding: Tensor

    def __init__(self, model: LRURec) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("padding", _padding_score(model))

    def forward(
        self, hidden: Hidden, item_embedding: Tensor | None = None, item_bias: Tensor | None = None
    ) -> Scores:
        table = self.model.embedding.weight if item_embedding is None else item_embedding
        bias = self.model.item_bias if item_bias is None else item_bias
        return masked_scores(hidden, table, bias, self.padding)


def _export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]],
) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated; see the module docstring.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(  # the TorchScript exporter accepts a file object (the stub says path)
            module,
            args,
            buffer,  # type: ignore[arg-type]
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def export_onnx(
    model: LRURec,
    path: Path | str | None = None,
    *,
    graph: str = "step",
    table_inputs: bool = False,
    top_k: int | None = None,
) -> bytes:
    """Export one serving graph of ``model`` to ONNX.

    Args:
        model: an LRURec; exported in eval mode, its own mode is left as it was.
        path: where to write the ``.onnx`` file; ``None`` only returns the bytes.
        graph: ``"step"`` (items, state → hidden, new_state, scores), ``"state"`` (the same
            without scores), ``"score"`` (hidden → scores) or ``"rank"`` (hidden, exclude, k →
            top-k); see the module docstring.
        table_inputs: make ``item_embedding`` (and ``item_bias``) overridable graph inputs
            (not for the rank graph).
        top_k: step graph only: replace ``scores`` by ``top_scores``/``top_items`` for this k.

    Returns:
        The serialised ONNX model.
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    if top_k is not None and not (graph == "step" and 1 <= top_k < model.config.vocab_size):
        raise ValueError(f"top_k needs the step graph and 1 <= k <= n_items, got {top_k}")
    if graph == "rank" and table_inputs:
        raise ValueError("the rank graph has no table inputs")
    was_training = model.training
    try:
        if graph == "rank":
            data = rank_graph(model.embedding.weight, model.item_bias, OPSET)
        else:
            data = _export_graph(model.eval(), graph, table_inputs, top_k)
    finally:
        model.train(was_training)
    if path is not None:
        Path(path).write_bytes(data)
    return data


def _export_graph(model: LRURec, graph: str, table_inputs: bool, top_k: int | None) -> bytes:
    batch = {0: "batch"}
    axes = dict.fromkeys(("items", "state", "hidden", "new_state", *TOP_K_OUTPUTS), batch)
    axes |= {"scores": {0: "batch", 1: "vocab"}}
    axes |= {"item_embedding": {0: "vocab"}, "item_bias": {0: "vocab"}}
    table_names = TABLE_INPUTS[: 1 if graph == "state" else 2] if table_inputs else ()
    tables = (model.embedding.weight.detach(), model.item_bias.detach())[: len(table_names)]
    module: nn.Module
    names: tuple[str, ...]
    outputs: tuple[str, ...]
    if graph == "score":
        args = (model.cold_start_hidden().detach().expand(2, -1).contiguous(), *tables)
        names, outputs, module = SCORE_INPUTS, SCORE_OUTPUTS, ScoreModule(model)
    else:
        args = (torch.ones(2, dtype=torch.long), model.init_state(2), *tables)
        names = STEP_INPUTS
        if graph == "state":
            outputs = STATE_OUTPUTS
        else:
            outputs = STATE_OUTPUTS + (TOP_K_OUTPUTS if top_k is not None else SCORE_OUTPUTS)
        module = StepModule(model, with_scores=graph == "step", top_k=top_k)
    used = set(names + table_names + outputs)
    # eval() also matters after the export: the exporter restores the wrapper's training flag,
    # which would otherwise switch the wrapped model to training mode.
    data = _export(
        module.eval(),
        args,
        names + table_names,
        outputs,
        {name: axis for name, axis in axes.items() if name in used},
    )
    if table_inputs:
        data = add_default_inputs(data, dict(zip(table_names, tables, strict=True)))
    return data
