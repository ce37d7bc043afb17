"""ONNX graph editing for :mod:`model.export`: default inputs, the rank graph, node fusion.

These work on the serialised ONNX model with the ``onnx`` package, imported lazily: ``model/``
otherwise depends on torch alone, and only exporting needs it.
"""

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

MICROSOFT_DOMAIN = "com.microsoft"


def add_default_inputs(onnx_bytes: bytes, defaults: dict[str, Tensor]) -> bytes:
    """Store ``defaults`` as initializers named like graph inputs: overridable default values."""
    import onnx
    from onnx import numpy_helper

    graph_model = onnx.load_from_string(onnx_bytes)
    for name, value in defaults.items():
        array = value.detach().cpu().contiguous().numpy()
        graph_model.graph.initializer.append(numpy_helper.from_array(array, name=name))
    return bytes(graph_model.SerializeToString())


def rank_graph(table: Tensor, bias: Tensor, opset: int) -> bytes:
    """The rank graph of the module docstring of :mod:`model.export`.

    Args:
        table: item embeddings ``[v, d]``.
        bias: score bias ``[v]``; column 0 (padding) is replaced by -inf.
        opset: ONNX opset of the graph.

    Returns:
        ``hidden [b, d], exclude int64 [b, m], k int64 [1] → top_scores [b, k], top_items [b, k]``:
        scores ``hidden @ tableᵀ + bias``, the excluded columns set to -inf by ScatterElements,
        then TopK (sorted, largest first; ONNX breaks ties by the lower index).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width = table.shape[1]
    masked_bias = torch.cat([torch.full_like(bias[:1], -torch.inf), bias[1:]])
    nodes = [
        helper.make_node("Gemm", ["hidden", "item_embedding", "item_bias"], ["scores"], transB=1),
        helper.make_node("Shape", ["exclude"], ["exclude_shape"]),
        helper.make_node(
            "ConstantOfShape",
            ["exclude_shape"],
            ["minus_inf"],
            value=helper.make_tensor("value", TensorProto.FLOAT, [1], [-float("inf")]),
        ),
        helper.make_node("ScatterElements", ["scores", "exclude", "minus_inf"], ["masked"], axis=1),
        helper.make_node("TopK", ["masked", "k"], ["top_scores", "top_items"], axis=1),
    ]
    initializers = [
        numpy_helper.from_array(t.detach().cpu().float().contiguous().numpy(), name=name)
        for name, t in (("item_embedding", table), ("item_bias", masked_bias))
    ]
    graph = helper.make_graph(
        nodes,
        "lrurec_rank",
        [
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("exclude", TensorProto.INT64, ["batch", "excluded"]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, ["batch", "k"]),
            helper.make_tensor_value_info("top_items", TensorProto.INT64, ["batch", "k"]),
        ],
        initializers,
    )
    graph_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(graph_model)
    return bytes(graph_model.SerializeToString())


def fuse_skip_layer_norm(onnx_bytes: bytes) -> bytes:
    """Rewrite each ``LayerNormalization(Add(a, b))`` as ``SkipLayerNormalization(a, b)``.

    ``com.microsoft.SkipLayerNormalization`` is ONNX Runtime's fused residual + LayerNorm (its
    own optimiser only fuses 3-D inputs; the step graph's are 2-D). Only an Add whose sole use is
    the LayerNorm is fused; the graph then needs ONNX Runtime.
    """
    import onnx

    graph_model = onnx.load_from_string(onnx_bytes)
    nodes = list(graph_model.graph.node)
    producer = {name: node for node in nodes for name in node.output}
    uses: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    outputs = {value.name for value in graph_model.graph.output}
    fused: dict[int, NodeProto] = {}
    dropped: set[int] = set()
    for node in nodes:
        add = producer.get(node.input[0]) if node.op_type == "LayerNormalization" else None
        if add is None or add.op_type != "Add" or len(node.input) != 3:
            continue
        if uses[add.output[0]] != 1 or add.output[0] in outputs:
            continue
        fused[id(node)] = _skip_layer_norm(node, add)
        dropped.add(id(add))
    if not fused:
        return onnx_bytes
    kept = [fused.get(id(node), node) for node in nodes if id(node) not in dropped]
    del graph_model.graph.node[:]
    graph_model.graph.node.extend(kept)
    _import_microsoft_domain(graph_model)
    return bytes(graph_model.SerializeToString())


def _skip_layer_norm(norm: "NodeProto", add: "NodeProto") -> "NodeProto":
    from onnx import helper

    epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
    axis = next((a.i for a in norm.attribute if a.name == "axis"), -1)
    if axis != -1:
        raise ValueError(f"SkipLayerNormalization normalises the last axis; {norm.name} has {axis}")
    return helper.make_node(
        "SkipLayerNormalization",
        [add.input[0], add.input[1], norm.input[1], norm.input[2]],
        [norm.output[0]],
        name=f"{norm.name}_skip",
        domain=MICROSOFT_DOMAIN,
        epsilon=epsilon,
    )


def _import_microsoft_domain(graph_model: "ModelProto") -> None:
    from onnx import helper

    if all(entry.domain != MICROSOFT_DOMAIN for entry in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid(MICROSOFT_DOMAIN, 1))
