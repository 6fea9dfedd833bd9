"""Triton ``config.pbtxt`` text for the models this package writes (protobuf text format, by hand).

Small builders instead of a protobuf dependency: the writers run where tritonclient is not installed. The
tests parse every file they produce into Triton's ``ModelConfig`` message, so a typo cannot ship.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Triton's names of the numpy dtypes the purification models use.
TRITON_DTYPES = {
    "uint8": "TYPE_UINT8",
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "uint64": "TYPE_UINT64",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name, a key of TRITON_DTYPES
    dims: tuple[int, ...]  # without the batch dimension; -1 for a variable size
    optional: bool = False

    def text(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        optional = " optional: true" if self.optional else ""
        return (
            f'  {{ name: "{self.name}" data_type: {TRITON_DTYPES[self.dtype]} dims: [ {dims} ]{optional} }}'
        )


@dataclass(frozen=True)
class Batching:
    """``max_batch_size`` and the dynamic batcher (``delay_us`` None: no dynamic batching)."""

    max_batch_size: int = 8
    delay_us: int | None = 100


def _quote(text: str) -> str:
    return json.dumps(text)  # JSON string escapes are valid protobuf text-format escapes


def model_config(
    name: str,
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    batching: Batching,
    backend: str | None = None,
    platform: str | None = None,
    instances: int | None = None,
    gpu: bool = False,
    parameters: Mapping[str, str] | None = None,
    warmup: Sequence[tuple[str, TensorSpec]] = (),
    ensemble_steps: Sequence[tuple[str, Mapping[str, str], Mapping[str, str]]] = (),
) -> str:
    """One model's config.pbtxt. ``warmup``: (sample name, fully sized input spec) pairs, filled with
    zeros; ``ensemble_steps``: (model, {its input: ensemble tensor}, {its output: ensemble tensor})."""
    lines = [f"name: {_quote(name)}"]
    if backend:
        lines.append(f"backend: {_quote(backend)}")
    if platform:
        lines.append(f"platform: {_quote(platform)}")
    lines.append(f"max_batch_size: {batching.max_batch_size}")
    lines.append("input [\n" + ",\n".join(t.text() for t in inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(t.text() for t in outputs) + "\n]")
    if batching.delay_us is not None:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {batching.delay_us} }}")
    if instances is not None:
        kind = "KIND_GPU" if gpu else "KIND_CPU"
        lines.append(f"instance_group [ {{ count: {instances} kind: {kind} }} ]")
    for key, value in (parameters or {}).items():
        lines.append(f"parameters {{ key: {_quote(key)} value {{ string_value: {_quote(value)} }} }}")
    for sample, spec in warmup:
        dims = " ".join(f"dims: {d}" for d in spec.dims)
        lines.append(
            f"model_warmup [ {{ name: {_quote(sample)} batch_size: 1 inputs {{ key: {_quote(spec.name)} "
            f"value {{ data_type: {TRITON_DTYPES[spec.dtype]} {dims} zero_data: true }} }} }} ]"
        )
    if ensemble_steps:
        steps = []
        for model, step_inputs, step_outputs in ensemble_steps:
            maps = [
                f"input_map {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in step_inputs.items()
            ] + [f"output_map {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in step_outputs.items()]
            steps.append(f"  {{ model_name: {_quote(model)} model_version: -1 " + " ".join(maps) + " }")
        lines.append("ensemble_scheduling { step [\n" + ",\n".join(steps) + "\n] }")
    return "\n".join(lines) + "\n"
