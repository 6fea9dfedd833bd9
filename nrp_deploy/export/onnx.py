"""PyTorch purifier -> FP32 ONNX with dynamic batch, height and width, checked against torch.

Export uses torch's ``torch.export``-based ONNX exporter (``dynamo=True``; the TorchScript exporter is
deprecated), which already folds constants with onnxscript's optimiser. The graph is then simplified with
**onnxslim**, chosen over the alternatives because it is pure Python (installs wherever onnx does, no
native build against a particular onnx version, as onnxsim needs), is actively released alongside new onnx
versions, keeps symbolic dimensions ("batch", "height", "width") intact, and folds / fuses / removes dead
nodes in one call; ONNX's own ``onnxoptimizer`` is a separate, rarely released package whose passes
onnxslim covers. On these all-convolution graphs the simplifier mostly removes the exporter's leftovers
(identity chains, unused value info); the check below guards that it never changes a number.

The exported graph has one float32 NCHW input named ``input`` and one output named ``output``, with
dimensions 0, 2 and 3 named ``batch``, ``height`` and ``width``. ``onnx.checker`` (full check, with shape
inference) must pass, and ONNX Runtime's CPU output must match the torch module within ``tolerance``
(max abs error) at every shape in ``check_shapes``: batch > 1 and odd sizes included by default, since a
fully convolutional export that only works at its example shape is the classic failure.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import torch

from nrp_deploy.artifacts.metadata import DEFAULT_MIN_PSNR_DB, DEFAULT_OPSET
from nrp_deploy.errors import ExportError
from nrp_deploy.export.fidelity import compare, cpu_session, pooled
from nrp_deploy.export.output import ExportResult, ModelLike, check_output, write_artifact
from nrp_deploy.models import LoadedModel, load_model

DEFAULT_CHECK_SHAPES: tuple[tuple[int, int, int, int], ...] = ((1, 3, 32, 32), (2, 3, 45, 37), (3, 3, 17, 64))
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "output"
DYNAMIC_DIMS = {0: "batch", 2: "height", 3: "width"}
# Example shape the exporter traces with: batch and sides > 1 and distinct, so none is specialised away.
_EXAMPLE_SHAPE = (2, 3, 24, 20)


def as_loaded(source: ModelLike) -> LoadedModel:
    """A registry name or checkpoint path loaded on the CPU; a ``LoadedModel`` is taken as is."""
    return source if isinstance(source, LoadedModel) else load_model(source, device="cpu")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings about optional packages (torchvision ops) and its deprecations."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def to_onnx_model(
    module: torch.nn.Module, opset: int = DEFAULT_OPSET, simplify: bool = True
) -> onnx.ModelProto:
    """Export ``module`` (float32, CPU) to an in-memory ONNX model with named, dynamic I/O."""
    if next(module.parameters()).device.type != "cpu":
        module = copy.deepcopy(module).cpu()
    module = module.float().eval()
    example = torch.rand(_EXAMPLE_SHAPE, generator=torch.Generator().manual_seed(0))
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=(DYNAMIC_DIMS,),
                external_data=False,
                verbose=False,
            )
        model = program.model_proto
    except Exception as exc:  # the exporter raises many types; all mean the same to the user
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    if simplify:
        import onnxslim

        model = onnxslim.slim(model)
    _check_io(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported ONNX fails onnx.checker: {exc}") from exc
    return model


def _check_io(model: onnx.ModelProto) -> None:
    inputs, outputs = list(model.graph.input), list(model.graph.output)
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ExportError(
            f"exported graph has inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}, "
            f"expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    named = {i: d.dim_param for i, d in enumerate(dims) if d.dim_param}
    if named != DYNAMIC_DIMS:
        raise ExportError(f"exported input dims {named} are not the dynamic dims {DYNAMIC_DIMS}")


def opset_of(model: onnx.ModelProto) -> int:
    return next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def export_onnx(
    source: ModelLike,
    output: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    check_shapes: Sequence[Sequence[int]] = DEFAULT_CHECK_SHAPES,
    tolerance: float = DEFAULT_TOLERANCE,
    min_psnr_db: float = DEFAULT_MIN_PSNR_DB["fp32"],
    overwrite: bool = False,
    seed: int = 0,
) -> ExportResult:
    """Export a purifier (registry name, checkpoint path or ``LoadedModel``) to FP32 ONNX at ``output``.

    Writes ``output`` and its metadata ``output + '.json'``. Raises ``ExportError`` if the export fails,
    ``onnx.checker`` rejects it, or ONNX Runtime differs from torch by more than ``tolerance`` (max abs
    error) at any of ``check_shapes`` (seeded uniform random images, which are also the fidelity images).
    """
    out = check_output(output, overwrite)
    if not check_shapes:
        raise ExportError("check_shapes must name at least one (N, 3, H, W) shape")
    loaded = as_loaded(source)
    model = to_onnx_model(loaded.module, opset, simplify)
    model_bytes = model.SerializeToString()

    rng = np.random.default_rng(seed)
    batches = [rng.random(tuple(shape), dtype=np.float32) for shape in check_shapes]
    stats = compare(cpu_session(model_bytes), loaded.module, batches)
    worst = {
        tuple(b.shape): s.max_abs for b, s in zip(batches, stats, strict=True) if not s.max_abs <= tolerance
    }
    if worst:
        raise ExportError(
            f"ONNX Runtime output differs from torch by more than {tolerance:g} (max abs) at "
            + ", ".join(f"{'x'.join(map(str, k))}: {v:.3g}" for k, v in worst.items())
        )
    shapes = ["x".join(map(str, b.shape)) for b in batches]
    images = {
        "description": f"{len(batches)} random batches ({', '.join(shapes)})",
        "kind": "uniform random",
        "shapes": shapes,
        "seed": seed,
        "max_abs_per_shape": {s: st.max_abs for s, st in zip(shapes, stats, strict=True)},
    }
    return write_artifact(
        out,
        model_bytes,
        precision="fp32",
        io_dtype="float32",
        opset=opset_of(model),
        loaded=loaded,
        fidelity=pooled(stats),
        fidelity_images=images,
        min_psnr_db=min_psnr_db,
    )
