"""PGD through a tiny purifier to a tiny classifier: objectives, gradient modes, reproducibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nrp_deploy.attacks.pgd import attack_gradient, pgd_attack, random_targets
from nrp_deploy.errors import InputError
from nrp_deploy.models.eager import dynamic_input

EPS = 16 / 255
NUM_CLASSES = 10


class TinyPurifier(nn.Module):
    """x + a small learned correction: differentiable, not the identity, output may leave [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * self.conv2(torch.tanh(self.conv1(x)))


def _models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    classifier = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, NUM_CLASSES),
    )
    return classifier.eval().requires_grad_(False), TinyPurifier().eval().requires_grad_(False)


def _images(n: int = 4, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _defended_probs(classifier, purifier, x):
    with torch.no_grad():
        return classifier(purifier(x).clamp(0, 1)).softmax(1)


@pytest.mark.parametrize("mode", ["full", "bpda", "eot"])
def test_targeted_pgd_raises_the_target_probability(mode):
    classifier, purifier = _models()
    x = _images()
    result = pgd_attack(
        x,
        classifier,
        purifier,
        mode=mode,
        targeted=True,
        eot_samples=2,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        clean_pred = classifier(x).argmax(1)
    assert result.targeted and torch.all(result.labels != clean_pred)
    idx = torch.arange(len(x))
    before = _defended_probs(classifier, purifier, x)[idx, result.labels]
    after = _defended_probs(classifier, purifier, result.adversarial)[idx, result.labels]
    assert torch.all(after > before)
    assert (result.adversarial - x).abs().max() <= EPS + 1e-6
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1


def test_untargeted_pgd_lowers_the_clean_label_probability():
    classifier, purifier = _models()
    x = _images()
    result = pgd_attack(x, classifier, purifier, mode="full", targeted=False)
    with torch.no_grad():
        assert torch.equal(result.labels, classifier(x).argmax(1))
    idx = torch.arange(len(x))
    before = _defended_probs(classifier, purifier, x)[idx, result.labels]
    after = _defended_probs(classifier, purifier, result.adversarial)[idx, result.labels]
    assert torch.all(after < before)


def test_bpda_gradient_is_the_classifier_gradient_at_the_purified_image():
    classifier, purifier = _models()
    x = _images()
    labels = torch.tensor([1, 2, 3, 4])
    got = attack_gradient(x, labels, classifier, purifier, mode="bpda")
    z = purifier(x).clamp(0, 1).detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.cross_entropy(classifier(z), labels, reduction="sum"), z)
    assert torch.allclose(got, expected, atol=1e-7)
    full = attack_gradient(x, labels, classifier, purifier, mode="full")
    assert not torch.allclose(full, got, atol=1e-4)  # the purifier's Jacobian is not the identity


def test_full_gradient_matches_autograd_through_the_pipeline():
    classifier, purifier = _models()
    x = _images().requires_grad_(True)
    labels = torch.tensor([0, 5, 9, 2])
    loss = F.cross_entropy(classifier(purifier(x).clamp(0, 1)), labels, reduction="sum")
    (expected,) = torch.autograd.grad(loss, x)
    assert torch.allclose(attack_gradient(x.detach(), labels, classifier, purifier, mode="full"), expected)


def test_eot_gradient_averages_n_noise_draws():
    classifier, purifier = _models()
    x = _images()
    labels = torch.tensor([3, 3, 7, 1])
    n = 4
    got = attack_gradient(
        x,
        labels,
        classifier,
        purifier,
        mode="eot",
        eot_samples=n,
        generator=torch.Generator().manual_seed(11),
    )
    gen = torch.Generator().manual_seed(11)
    draws = []
    for _ in range(n):
        xr = x.clone().requires_grad_(True)
        noisy = dynamic_input(xr, generator=gen)
        loss = F.cross_entropy(classifier(purifier(noisy).clamp(0, 1)), labels, reduction="sum")
        draws.append(torch.autograd.grad(loss, xr)[0])
    assert torch.allclose(got, torch.stack(draws).mean(0), atol=1e-6)
    assert not torch.allclose(got, draws[0], atol=1e-4)  # really more than one draw
    again = attack_gradient(
        x,
        labels,
        classifier,
        purifier,
        mode="eot",
        eot_samples=n,
        generator=torch.Generator().manual_seed(11),
    )
    assert torch.equal(got, again)


def test_random_targets_differ_from_labels_and_cover_the_other_classes():
    labels = torch.full((4000,), 3)
    targets = random_targets(labels, NUM_CLASSES, torch.Generator().manual_seed(0))
    assert not torch.any(targets == 3)
    assert set(targets.tolist()) == set(range(NUM_CLASSES)) - {3}
    again = random_targets(labels, NUM_CLASSES, torch.Generator().manual_seed(0))
    assert torch.equal(targets, again)


def test_pgd_is_reproducible_and_leaves_no_gradients_behind():
    classifier, purifier = _models()
    for p in list(classifier.parameters()) + list(purifier.parameters()):
        p.requires_grad_(True)
    x = _images()
    a = pgd_attack(
        x, classifier, purifier, mode="eot", eot_samples=2, generator=torch.Generator().manual_seed(4)
    )
    b = pgd_attack(
        x, classifier, purifier, mode="eot", eot_samples=2, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.labels, b.labels)
    assert all(p.grad is None for p in list(classifier.parameters()) + list(purifier.parameters()))
    assert x.grad is None and not a.adversarial.requires_grad


def test_pgd_rejects_bad_arguments():
    classifier, purifier = _models()
    x = _images()
    with pytest.raises(InputError, match="gradient mode"):
        pgd_attack(x, classifier, purifier, mode="straight")
    with pytest.raises(InputError, match="labels"):
        pgd_attack(x, classifier, purifier, labels=torch.tensor([1, 2]))
    with pytest.raises(InputError, match="noise sample"):
        pgd_attack(x, classifier, purifier, mode="eot", eot_samples=0)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        pgd_attack(x * 2, classifier, purifier)


@pytest.mark.gpu
def test_attacks_run_on_cuda_tensors_with_a_cuda_generator():
    from nrp_deploy.attacks import ssp_attack

    classifier, purifier = (m.to("cuda") for m in _models())
    x = _images().to("cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    result = pgd_attack(x, classifier, purifier, mode="eot", eot_samples=2, iterations=2, generator=gen)
    adv = ssp_attack(x, classifier[:2], iterations=2, generator=gen)
    for out in (result.adversarial, adv):
        assert out.is_cuda and (out - x).abs().max() <= EPS + 1e-6
    assert result.labels.is_cuda


def test_bpda_eot_gradient_is_the_mean_straight_through_gradient_over_noise_draws():
    classifier, purifier = _models()
    x = _images()
    labels = torch.tensor([3, 3, 7, 1])
    got = attack_gradient(
        x,
        labels,
        classifier,
        purifier,
        mode="bpda-eot",
        eot_samples=3,
        generator=torch.Generator().manual_seed(5),
    )
    gen = torch.Generator().manual_seed(5)
    draws = []
    for _ in range(3):
        z = purifier(dynamic_input(x, generator=gen)).clamp(0, 1).detach().requires_grad_(True)
        draws.append(torch.autograd.grad(F.cross_entropy(classifier(z), labels, reduction="sum"), z)[0])
    assert torch.allclose(got, torch.stack(draws).mean(0), atol=1e-6)


def test_random_start_uses_the_seed_and_reaches_eps_when_steps_alone_cannot():
    classifier, _ = _models()
    x = _images()
    eps, step = 8 / 255, 1 / 255  # 2 steps of 1/255 from the clean image reach at most 2/255
    plain = pgd_attack(x, classifier, nn.Identity(), targeted=False, eps=eps, step=step, iterations=2)
    assert (plain.adversarial - x).abs().max() <= 2 / 255 + 1e-6
    runs = [
        pgd_attack(
            x,
            classifier,
            nn.Identity(),
            targeted=False,
            eps=eps,
            step=step,
            iterations=2,
            random_start=True,
            generator=torch.Generator().manual_seed(seed),
        ).adversarial
        for seed in (0, 0, 1)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])  # the seed matters now
    assert (runs[0] - x).abs().max() > 2 / 255 and (runs[0] - x).abs().max() <= eps + 1e-6


def _sensitive_classifier() -> nn.Module:
    """Logits from every pixel (no pooling): random images get varied classes that a small eps can flip."""
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, NUM_CLASSES)
    )
    return net.eval().requires_grad_(False)


def test_restarts_keep_per_image_the_best_adversary():
    classifier = _sensitive_classifier()
    x = _images(8)
    eps, step = 4 / 255, 1 / 255
    with torch.no_grad():
        labels = classifier(x).argmax(1)

    def loss(adv):
        with torch.no_grad():
            return F.cross_entropy(classifier(adv), labels, reduction="none")

    gen = torch.Generator().manual_seed(0)
    best = pgd_attack(
        x,
        classifier,
        nn.Identity(),
        targeted=False,
        eps=eps,
        step=step,
        iterations=2,
        restarts=3,
        generator=gen,
    ).adversarial
    gen = torch.Generator().manual_seed(0)
    singles = [
        pgd_attack(
            x,
            classifier,
            nn.Identity(),
            targeted=False,
            eps=eps,
            step=step,
            iterations=2,
            random_start=True,
            generator=gen,
        ).adversarial
        for _ in range(3)
    ]
    with torch.no_grad():
        fooled = [classifier(a).argmax(1) != labels for a in singles]
    best_fooled = classifier(best).argmax(1) != labels
    assert torch.equal(best_fooled, torch.stack(fooled).any(0))  # an image fooled by any restart stays fooled
    never = ~torch.stack(fooled).any(0)
    top = torch.stack([loss(a) for a in singles]).max(0).values
    assert torch.allclose(loss(best)[never], top[never])  # else the highest loss
    with pytest.raises(InputError, match="restarts"):
        pgd_attack(x, classifier, nn.Identity(), restarts=0)


def test_our_pgd_matches_torchattacks_pgd_on_the_same_model_budget_and_seed():
    torchattacks = pytest.importorskip("torchattacks")
    classifier = _sensitive_classifier()
    x = torch.rand(48, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        labels = classifier(x).argmax(1)
    eps, step, iterations = 2 / 255, 0.5 / 255, 4
    ours = pgd_attack(x, classifier, nn.Identity(), targeted=False, eps=eps, step=step, iterations=iterations)
    theirs = torchattacks.PGD(classifier, eps=eps, alpha=step, steps=iterations, random_start=False)(
        x, labels
    )
    assert (ours.adversarial - theirs).abs().max() < 1e-6  # the same signed steps and projection

    def success(adv):
        with torch.no_grad():
            return (classifier(adv).argmax(1) != labels).float().mean().item()

    torch.manual_seed(0)  # torchattacks draws its random start from the global generator
    theirs_rs = torchattacks.PGD(classifier, eps=eps, alpha=step, steps=iterations, random_start=True)(
        x, labels
    )
    ours_rs = pgd_attack(
        x,
        classifier,
        nn.Identity(),
        targeted=False,
        eps=eps,
        step=step,
        iterations=iterations,
        random_start=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert 0.1 < success(ours.adversarial) < 1.0  # a budget where success is not a foregone conclusion
    assert abs(success(ours_rs.adversarial) - success(theirs_rs)) <= 0.1


def test_eot_without_noise_is_the_full_gradient_attack():
    """sigma 0 and eps 0 leave the input as it is, so EOT averages N equal full gradients: the static attack."""
    classifier, purifier = _models()
    x = _images()
    labels = torch.tensor([3, 3, 7, 1])
    static = pgd_attack(x, classifier, purifier, mode="full", labels=labels, iterations=3)
    eot = pgd_attack(
        x,
        classifier,
        purifier,
        mode="eot",
        labels=labels,
        iterations=3,
        eot_samples=2,
        sigma=0.0,
        dynamic_eps=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(eot.adversarial, static.adversarial)
    published = pgd_attack(
        x,
        classifier,
        purifier,
        mode="eot",
        labels=labels,
        iterations=3,
        eot_samples=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert not torch.equal(published.adversarial, static.adversarial)


@pytest.mark.parametrize("eot_samples", [1, 3])
@pytest.mark.parametrize("mode", ["eot", "bpda-eot"])
def test_every_noise_draw_of_an_eot_attack_has_the_level_asked_for(mode, eot_samples, monkeypatch):
    """The gradients and the restarts' scoring alike draw the noise at the given sigma and eps, one draw
    included: the scoring faces the randomised defence the gradients were taken through."""
    from nrp_deploy.attacks import pgd

    levels = []

    def recording(x, sigma, eps, generator=None):
        levels.append((sigma, eps))
        return dynamic_input(x, sigma, eps, generator=generator)

    monkeypatch.setattr(pgd, "dynamic_input", recording)
    classifier, purifier = _models()
    iterations, restarts = 2, 2
    pgd_attack(
        _images(),
        classifier,
        purifier,
        mode=mode,
        iterations=iterations,
        eot_samples=eot_samples,
        restarts=restarts,
        sigma=0.01,
        dynamic_eps=0.02,
        generator=torch.Generator().manual_seed(0),
    )
    scoring = restarts * eot_samples
    assert len(levels) == restarts * iterations * eot_samples + scoring
    assert set(levels) == {(0.01, 0.02)}


def test_pgd_refuses_a_noise_level_it_cannot_draw():
    classifier, purifier = _models()
    for kwargs, name in (({"sigma": -0.1}, "sigma"), ({"dynamic_eps": float("nan")}, "dynamic_eps")):
        with pytest.raises(InputError, match=f"^{name} must be a finite number >= 0"):
            pgd_attack(_images(), classifier, purifier, mode="eot", **kwargs)
