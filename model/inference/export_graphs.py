"""ONNX graph building for :mod:`model.inference.export`: overridable default inputs, rank graph.

These work on the serialised ONNX model with the ``onnx`` package, imported lazily: ``model/``
otherwise depends on torch alone, and only exporting needs it.
"""

import torch
from torch import Tensor


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
    """The rank graph of the module docstring of :mod:`model.inference.export`.

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
