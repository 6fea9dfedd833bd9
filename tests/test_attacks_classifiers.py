"""Classifier specs: a user's .py file, a module path, TorchScript, ONNX, timm / torchvision names, options,
and the one clear error for each unusable spec."""

from __future__ import annotations

import sys
import textwrap
import types

import numpy as np
import pytest
import torch
from torch import nn

from nrp_deploy.attacks.classifiers import (
    NORMALISATIONS,
    Classifier,
    ClassifierSpec,
    load_classifier,
    parse_channels,
    parse_size,
    split_specs,
)
from nrp_deploy.errors import BackendUnavailableError, InputError

NET_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10)
        )

    INSTANCE = build()
    NOT_A_NETWORK = 3

    def returns_a_string():
        return "resnet"

    def raises():
        raise RuntimeError("no weights here")
    """
)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10)
    )


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(NET_SOURCE)
    return path


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def _logits_with_imagenet_norm(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(NORMALISATIONS["imagenet"][0]).view(1, 3, 1, 1)
    std = torch.tensor(NORMALISATIONS["imagenet"][1]).view(1, 3, 1, 1)
    with torch.no_grad():
        return net.eval()((x - mean) / std)


def test_a_python_file_callable_is_built_normalised_and_pinned_to_eval(net_file):
    classifier = load_classifier(f"{net_file}:build")
    assert isinstance(classifier, Classifier) and classifier.differentiable
    x = _images()
    with torch.no_grad():
        got = classifier(x)
    assert torch.allclose(got, _logits_with_imagenet_norm(tiny_net(), x), atol=1e-5)
    classifier.train()  # what attack libraries do after an attack
    assert not any(m.training for m in classifier.modules())
    assert all(not p.requires_grad for p in classifier.parameters())
    assert "Python file" in classifier.describe() and "imagenet normalisation" in classifier.describe()


def test_a_module_instance_in_a_file_and_a_package_module_callable(net_file, monkeypatch):
    x = _images()
    from_instance = load_classifier(f"{net_file}:INSTANCE")
    monkeypatch.syspath_prepend(str(net_file.parent))
    from_module = load_classifier("my_net:build")
    with torch.no_grad():
        assert torch.allclose(from_instance(x), from_module(x), atol=1e-6)
    assert "Python module" in from_module.describe()


def test_spec_options_set_normalisation_size_and_weights(net_file, tmp_path):
    weights = tmp_path / "w.pth"
    other = tiny_net()
    with torch.no_grad():
        other[0].weight.mul_(-1)
    torch.save(other.state_dict(), weights)
    spec = f"{net_file}:build?norm=none&size=16&weights={weights}"
    classifier = load_classifier(spec)
    x = torch.rand(2, 3, 24, 20)
    resized = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True)
    with torch.no_grad():
        assert torch.allclose(classifier(x), other.eval()(resized), atol=1e-5)
    assert "resized to 16x16" in classifier.describe() and "none normalisation" in classifier.describe()
    explicit = ClassifierSpec.parse(f"{net_file}:build?mean=0.5:0.4:0.3&std=0.2")
    assert explicit.mean == (0.5, 0.4, 0.3) and explicit.std == (0.2, 0.2, 0.2)
    overridden = explicit.overridden(mean=(0.1, 0.1, 0.1), size=(8, 8))
    assert (
        overridden.mean == (0.1, 0.1, 0.1) and overridden.std == (0.2, 0.2, 0.2) and overridden.size == (8, 8)
    )


def test_a_torch_module_or_callable_from_python_is_used_as_it_is():
    net = tiny_net()
    x = _images()
    with torch.no_grad():
        expected = net.eval()(x)
        assert torch.allclose(load_classifier(net)(x), expected)
        wrapped = load_classifier(lambda t: net(t))
        assert torch.allclose(wrapped(x), expected)
        normalised = load_classifier(
            ClassifierSpec(net, mean=NORMALISATIONS["imagenet"][0], std=NORMALISATIONS["imagenet"][1])
        )
        assert torch.allclose(normalised(x), _logits_with_imagenet_norm(net, x), atol=1e-5)
    assert len(list(wrapped.parameters())) > 0  # a device anchor for libraries that probe parameters()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates TorchScript, still reads it
def test_a_torchscript_target_and_a_state_dict_is_named_as_such(tmp_path):
    net = tiny_net().eval()
    scripted = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(net, _images(1)), scripted)
    classifier = load_classifier(str(scripted))
    x = _images()
    with torch.no_grad():
        assert torch.allclose(classifier(x), _logits_with_imagenet_norm(net, x), atol=1e-5)
    state = tmp_path / "state.pth"
    torch.save(net.state_dict(), state)
    with pytest.raises(InputError, match=r"state\.pth.*torch\.save\(\) file.*expected a TorchScript file"):
        load_classifier(str(state))


def test_a_torch_export_program_is_a_differentiable_classifier(tmp_path):
    net = tiny_net().eval()
    path = tmp_path / "net.pt2"
    program = torch.export.export(net, (_images(2),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    classifier = load_classifier(str(path), role="source")
    x = _images().requires_grad_(True)
    assert torch.allclose(classifier(x), _logits_with_imagenet_norm(net, x.detach()), atol=1e-5)
    (grad,) = torch.autograd.grad(classifier(x).sum(), x)
    assert grad.abs().sum() > 0 and "torch.export program" in classifier.describe()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter: fixed shapes
def test_an_onnx_target_is_judged_through_onnx_runtime_but_refused_as_a_source(tmp_path):
    pytest.importorskip("onnxruntime")
    net = tiny_net().eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (_images(1),), str(path), input_names=["images"], dynamo=False)
    classifier = load_classifier(str(path))
    assert not classifier.differentiable and classifier.size == (16, 16)  # its fixed input size
    assert classifier.net.batch == 1  # exported with a fixed batch: fed image by image
    x = _images()
    with torch.no_grad():
        assert torch.allclose(classifier(x), _logits_with_imagenet_norm(net, x), atol=1e-4)
    bigger = torch.rand(2, 3, 32, 32)
    assert classifier(bigger).shape == (2, 10)  # resized to the model's input first
    with pytest.raises(InputError, match=r"net\.onnx.*no gradients.*--source"):
        load_classifier(str(path), role="source")


def test_timm_and_torchvision_names_need_the_library_and_a_local_weights_file(tmp_path, monkeypatch):
    weights = tmp_path / "w.pth"
    torch.save(tiny_net().state_dict(), weights)
    fake_timm = types.ModuleType("timm")
    built = []

    def create_model(name, pretrained=False):
        assert not pretrained  # never a download
        built.append(name)
        return tiny_net()

    fake_timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", fake_timm)
    classifier = load_classifier(f"timm:resnet_tiny?weights={weights}")
    assert built == ["resnet_tiny"] and "timm architecture" in classifier.describe()
    with pytest.raises(InputError, match=r"timm:resnet_tiny.*local file.*nothing is downloaded"):
        load_classifier("timm:resnet_tiny")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not installed
    with pytest.raises(BackendUnavailableError, match=r"torchvision:resnet18.*cannot be imported"):
        load_classifier(ClassifierSpec("torchvision:resnet18", weights=weights))


@pytest.mark.parametrize(
    ("spec", "found"),
    [
        (
            "resnet50",
            r"no registry network of that name \(a timm or torchvision architecture is named timm:resnet50",
        ),
        ("missing/net.pt", "no such file"),
        ("{file}", "needs the callable that builds the network"),
        ("{file}:nope", r"has no 'nope' \(callables there: .*build"),
        ("{file}:NOT_A_NETWORK", "is a int; expected a torch module"),
        ("{file}:returns_a_string", "returned a str; expected a torch module"),
        ("{file}:raises", r"calling raises\(\).*RuntimeError: no weights here"),
        ("no_such_package.sub:build", "cannot be imported"),
        ("{file}:build?depth=3", "option 'depth=3' is not key=value with a key of"),
        ("{file}:build?norm=caffe", "unknown normalisation 'caffe'"),
        ("{file}:build?size=0", "size '0' is not N or HxW"),
        ("efficientnet_lite0?weights=x.pth", "a registry network carries its own weights"),
    ],
)
def test_an_unusable_spec_gets_one_clear_error(net_file, spec, found):
    spec = spec.format(file=net_file)
    with pytest.raises(InputError, match=found) as info:
        load_classifier(spec)
    message = str(info.value)
    assert message.startswith("classifier spec '") or "classifier spec" in message


def test_weights_that_do_not_fit_are_named(net_file, tmp_path):
    weights = tmp_path / "other.pth"
    torch.save(nn.Linear(3, 3).state_dict(), weights)
    with pytest.raises(InputError, match=r"other\.pth does not fit the network"):
        load_classifier(f"{net_file}:build?weights={weights}")


def test_parsers_and_spec_lists():
    assert parse_channels("0.485,0.456,0.406") == (0.485, 0.456, 0.406)
    assert parse_channels("0.5") == (0.5, 0.5, 0.5)
    with pytest.raises(InputError, match="std"):
        parse_channels("0,1,1", "std")
    assert parse_size("224") == (224, 224) and parse_size("240x320") == (240, 320)
    assert split_specs(" a.py:f , efficientnet_lite1,,") == ["a.py:f", "efficientnet_lite1"]
    with pytest.raises(InputError, match="role"):
        load_classifier(tiny_net(), role="victim")


def test_the_registry_classifier_keeps_its_tflite_scaling():
    classifier = load_classifier("efficientnet_lite0")
    assert "tflite normalisation" in classifier.describe()
    mean = classifier.normalize.mean.flatten().numpy()
    assert np.allclose(mean, 127 / 255)
