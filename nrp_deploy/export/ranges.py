"""Activation ranges of an ONNX graph on calibration images, in bounded memory.

FP16 conversion needs the largest magnitude every intermediate tensor reaches on real images, and INT8
MinMax calibration the smallest and largest value of each. The usual way (ModelOpt AutoCast's reference runner, Polygraphy) marks every tensor as a graph output and keeps all
of them for all calibration batches before reducing: for the full NRP that is about 15 GB per 224x224
image (73,600 feature planes of 200 KB), which no laptop or CI runner holds. Here the graph is cut into
consecutive segments of at most ``segment_nodes`` nodes, each run as its own ONNX Runtime session; a
segment's tensors are reduced to their minimum and maximum as soon as it has run, and only the tensors a
later segment still reads are kept. Peak memory is one segment's activations for one image (the
sessions run without ONNX Runtime's memory arena, which would otherwise keep each segment's peak); the
result is the same as running the whole graph. Works for any graph without sub-graphs (If / Loop / Scan).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from tqdm import tqdm

from nrp_deploy.errors import ExportError

DEFAULT_SEGMENT_NODES = 64


@dataclass(frozen=True)
class _Segment:
    session: ort.InferenceSession
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    keep: frozenset[str]  # outputs that a later segment or the graph output still needs
    release: frozenset[str]  # tensors no segment after this one reads


def _segments(model: onnx.ModelProto, segment_nodes: int) -> list[_Segment]:
    graph = model.graph
    subgraph_kinds = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    if any(attr.type in subgraph_kinds for node in graph.node for attr in node.attribute):
        raise ExportError("range collection does not support graphs with sub-graphs (If / Loop / Scan)")
    inferred = onnx.shape_inference.infer_shapes(model)
    elem_type = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    initializers = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)
    chunks = [nodes[i : i + segment_nodes] for i in range(0, len(nodes), segment_nodes)]
    last_chunk_reading: dict[str, int] = {}
    for index, chunk in enumerate(chunks):
        for node in chunk:
            for name in node.input:
                last_chunk_reading[name] = index
    for out in graph.output:
        last_chunk_reading[out.name] = len(chunks)

    def value_info(name: str) -> onnx.ValueInfoProto:  # rank and shape left open: they vary per image
        return helper.make_tensor_value_info(name, elem_type.get(name, onnx.TensorProto.FLOAT), None)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # sessions run in turn
    # Each session's arena would keep its peak allocation after a run, so together the segments would
    # hold every activation of the graph again: without the arena a segment's memory is freed as it ends.
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    segments = []
    for index, chunk in enumerate(chunks):
        produced = [name for node in chunk for name in node.output if name]
        produced_set = set(produced)
        reads = [name for node in chunk for name in node.input if name]
        inputs = list(dict.fromkeys(n for n in reads if n not in produced_set and n not in initializers))
        used_inits = [initializers[n] for n in dict.fromkeys(reads) if n in initializers]
        sub = helper.make_graph(
            chunk,
            f"segment_{index}",
            [value_info(n) for n in inputs],
            [value_info(n) for n in produced],
            used_inits,
        )
        sub_model = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
        session = ort.InferenceSession(
            sub_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        keep = frozenset(n for n in produced if last_chunk_reading.get(n, -1) > index)
        release = frozenset(n for n, last in last_chunk_reading.items() if last == index)
        segments.append(_Segment(session, tuple(inputs), tuple(produced), keep, release))
    return segments


def collect_ranges(
    model: onnx.ModelProto,
    batches: Iterable[np.ndarray],
    input_name: str = "input",
    segment_nodes: int = DEFAULT_SEGMENT_NODES,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, tuple[float, float]]:
    """(min, max) each floating-point tensor (graph input and every node output) reaches on ``batches``."""
    segments = _segments(model, segment_nodes)
    ranges: dict[str, tuple[float, float]] = {}

    def record(name: str, value: np.ndarray) -> None:
        if value.dtype.kind == "f" and value.size:
            low, high = float(np.min(value)), float(np.max(value))
            if name in ranges:
                low, high = min(low, ranges[name][0]), max(high, ranges[name][1])
            ranges[name] = (low, high)

    for batch in tqdm(batches, total=total, desc="calibration", unit="batch", disable=not progress):
        live = {input_name: batch}
        record(input_name, batch)
        for segment in segments:
            values = segment.session.run(list(segment.outputs), {n: live[n] for n in segment.inputs})
            for name, value in zip(segment.outputs, values, strict=True):
                record(name, value)
                if name in segment.keep:
                    live[name] = value
            for name in segment.release:
                live.pop(name, None)
    return ranges


def collect_absmax(
    model: onnx.ModelProto,
    batches: Iterable[np.ndarray],
    input_name: str = "input",
    segment_nodes: int = DEFAULT_SEGMENT_NODES,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, float]:
    """Largest |value| each floating-point tensor (graph input and every node output) reaches on ``batches``."""
    ranges = collect_ranges(model, batches, input_name, segment_nodes, progress, total)
    return {name: max(abs(low), abs(high)) for name, (low, high) in ranges.items()}
