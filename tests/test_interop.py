"""Attack libraries against the deployed defence: torchattacks on ``PurifiedClassifier`` and ART's
ProjectedGradientDescent through ``NRPPreprocessor``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nrp_deploy.errors import InputError
from nrp_deploy.interop import PurifiedClassifier
from nrp_deploy.models import NRP_resG

EPS = 8 / 255


class TinyPurifier(nn.Module):
    """x + a small learned correction: differentiable, close to the identity, not equal to it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * self.conv2(torch.tanh(self.conv1(x)))


def _classifier() -> nn.Module:
    """Batch norm inside, to see that an attack never puts it into training mode."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10)
    )


class Deployed:
    """A purifier that runs outside torch, as an ONNX / TensorRT artifact does: numpy in, numpy out."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval()
        self.calls = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        assert isinstance(images, np.ndarray) and images.dtype == np.float32
        with torch.no_grad():
            return self.module(torch.from_numpy(images)).clamp(0, 1).numpy()


def _images(n: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(7))


def _fooled(model: nn.Module, adversarial: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(adversarial).argmax(1) != labels).float().mean().item()


@pytest.mark.parametrize("gradient", ["bpda", "full", "eot"])
def test_torchattacks_attacks_the_purified_classifier_and_leaves_it_in_eval_mode(gradient):
    torchattacks = pytest.importorskip("torchattacks")
    purifier = TinyPurifier()
    deployed = Deployed(purifier)
    classifier = _classifier()
    running_mean = classifier[1].running_mean.clone()
    model = PurifiedClassifier(classifier, deployed, gradient, attack_model=purifier, eot_samples=2)
    model.train()  # as a training loop or an attack library might
    assert not any(m.training for m in model.modules())
    x = _images()
    with torch.no_grad():
        labels = model(x).argmax(1)
    calls = deployed.calls
    adversarial = torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=4)(x, labels)
    assert deployed.calls > calls  # every step ran the deployed purifier forward
    assert (adversarial - x).abs().max() <= EPS + 1e-6
    assert _fooled(model, adversarial, labels) >= 0.5
    assert not any(m.training for m in model.modules())
    assert torch.equal(classifier[1].running_mean, running_mean)  # batch-norm statistics never moved


def test_the_values_are_the_deployed_ones_and_the_gradient_the_chosen_one():
    purifier = TinyPurifier()
    shifted = Deployed(
        nn.Sequential(purifier, nn.Hardtanh(0.0, 0.9))
    )  # the artifact differs from its checkpoint
    classifier = _classifier()
    x = _images(4).requires_grad_(True)
    for gradient in ("bpda", "full"):
        model = PurifiedClassifier(classifier, shifted, gradient, attack_model=purifier)
        out = model.purify(x)
        assert torch.allclose(out, torch.from_numpy(shifted(x.detach().numpy())), atol=1e-6)
        (grad,) = torch.autograd.grad(out.sum(), x)
        if gradient == "bpda":
            assert torch.allclose(grad, torch.ones_like(grad))  # straight through
        else:
            y = purifier(x).clamp(0, 1)
            (expected,) = torch.autograd.grad(y.sum(), x)
            assert torch.allclose(grad, expected, atol=1e-6)  # the checkpoint's Jacobian


def test_eot_averages_noise_draws_and_torchattacks_eotpgd_runs_on_fresh_noise():
    torchattacks = pytest.importorskip("torchattacks")
    purifier = TinyPurifier()
    classifier = _classifier()
    x = _images(8)
    model = PurifiedClassifier(
        classifier, purifier, "eot", eot_samples=3, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.equal(a, b)  # fresh noise each call
    dynamic = PurifiedClassifier(classifier, purifier, "full", dynamic=True)
    with torch.no_grad():
        labels = dynamic(x).argmax(1)
    adversarial = torchattacks.EOTPGD(dynamic, eps=EPS, alpha=2 / 255, steps=3, eot_iter=2)(x, labels)
    assert (adversarial - x).abs().max() <= EPS + 1e-6


def test_a_runtime_purifier_from_a_checkpoint_path(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(NRP_resG(nf=8, nb=1).state_dict(), path)
    model = PurifiedClassifier(_classifier(), path, "full", backend="torch")
    x = _images(2).requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert out.shape == (2, 10) and torch.isfinite(grad).all() and "torch" in repr(model.purifier.purify)


def test_bad_requests_are_named():
    with pytest.raises(InputError, match="unknown gradient"):
        PurifiedClassifier(_classifier(), TinyPurifier(), "straight")
    with pytest.raises(InputError, match="attack_model"):
        PurifiedClassifier(_classifier(), Deployed(TinyPurifier()), "full")
    with pytest.raises(InputError, match="dynamic must be"):
        PurifiedClassifier(_classifier(), TinyPurifier(), dynamic="yes")


@pytest.mark.parametrize("estimator", ["identity", "checkpoint"])
def test_art_projected_gradient_descent_runs_through_the_nrp_preprocessor(estimator):
    pytest.importorskip("art")
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    from nrp_deploy.interop.art import NRPPreprocessor

    purifier = TinyPurifier()
    deployed = Deployed(purifier)
    defence = NRPPreprocessor(deployed, estimator, attack_model=purifier, device_type="cpu")
    classifier = PyTorchClassifier(
        _classifier(),
        loss=nn.CrossEntropyLoss(),
        input_shape=(3, 16, 16),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        preprocessing_defences=[defence],
        device_type="cpu",
    )
    x = _images().numpy()
    clean = classifier.predict(x).argmax(1)
    calls = deployed.calls
    attack = ProjectedGradientDescent(classifier, eps=EPS, eps_step=2 / 255, max_iter=4, verbose=False)
    adversarial = attack.generate(x)
    assert deployed.calls > calls + 4  # predictions and gradients both ran the deployed purifier
    assert np.abs(adversarial - x).max() <= EPS + 1e-6
    assert (classifier.predict(adversarial).argmax(1) != clean).mean() >= 0.5
    with torch.no_grad():
        expected = _classifier().eval()(purifier(torch.from_numpy(x)).clamp(0, 1)).argmax(1).numpy()
    assert np.array_equal(clean, expected)  # ART classifies the deployed purifier's output
    stand_in = defence.estimate_forward(torch.from_numpy(x[:2]))
    if estimator == "identity":
        assert torch.equal(stand_in, torch.from_numpy(x[:2]))
    else:
        assert torch.allclose(stand_in, purifier(torch.from_numpy(x[:2])).clamp(0, 1), atol=1e-6)
