"""Transfer adversaries for training: MI-FGSM, DI-FGSM and TI-DIM on an ensemble of classifiers' logits.

A black-box attacker crafts adversaries on networks of their own and hopes they transfer; the paper's
strongest such attack is translation-invariant with diverse inputs (TI-DIM) on an ensemble. A purifier
trained only on PGD against one known classifier sees perturbations shaped by that network's gradient;
these attacks smooth, rescale and accumulate gradients, so their perturbations are lower-frequency and
more generic. The attacks come from torchattacks; this module only wraps the ensemble and picks the attack.
"""

from __future__ import annotations

import torch
from torch import nn

from nrp_deploy.errors import InputError
from nrp_deploy.training.config import TRANSFER_ATTACKS

TORCHATTACKS_INSTALL = "pip install --no-deps torchattacks==3.5.1"


class LogitEnsemble(nn.Module):
    """The mean of several classifiers' logits, pinned in eval mode.

    Attack libraries switch the attacked module's mode (torchattacks calls ``train()`` after an attack when
    it found the model training); the wrapped classifiers' batch-norm statistics must never move.
    """

    def __init__(self, classifiers: list[nn.Module]) -> None:
        super().__init__()
        if not classifiers:
            raise InputError("a logit ensemble needs at least one classifier")
        self.members = nn.ModuleList(classifiers)
        self.eval()

    def train(self, mode: bool = True) -> LogitEnsemble:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def transfer_attack(
    images: torch.Tensor,
    ensemble: LogitEnsemble,
    attack: str,
    eps: float,
    iterations: int,
    seed: int,
    ti_kernel: int = 15,
) -> torch.Tensor:
    """Untargeted ``attack`` (one of TRANSFER_ATTACKS) on ``ensemble``, labels from its clean prediction.

    The step is eps / iterations (the attacks' usual choice, so the budget is reachable); the random
    resizing of DI and TI-DIM is drawn from torch's global generator, seeded here from ``seed`` and restored
    afterwards, so a training run stays reproducible. ``ti_kernel`` is TI's gradient-smoothing kernel in
    pixels; the purifier is fully convolutional and sees training crops at (or near) the photos' own
    resolution, so the kernel an attacker uses on full-size images (TI's usual 15 px) applies to crops too.
    """
    try:
        import torchattacks
    except ImportError as exc:
        raise InputError(f"transfer adversaries need torchattacks: {TORCHATTACKS_INSTALL}") from exc
    if attack not in TRANSFER_ATTACKS:
        raise InputError(f"unknown transfer attack {attack!r}; expected one of {', '.join(TRANSFER_ATTACKS)}")
    alpha = eps / iterations
    if attack == "mi-fgsm":
        runner = torchattacks.MIFGSM(ensemble, eps=eps, alpha=alpha, steps=iterations, decay=1.0)
    elif attack == "di-fgsm":
        runner = torchattacks.DIFGSM(ensemble, eps=eps, alpha=alpha, steps=iterations, decay=1.0)
    else:
        # Kernel 7 on the training crops: TI's 15 px kernel is sized for 299 px inputs.
        runner = torchattacks.TIFGSM(
            ensemble, eps=eps, alpha=alpha, steps=iterations, decay=1.0, len_kernel=7
        )
    with torch.no_grad():
        labels = ensemble(images).argmax(dim=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adversarial = runner(images, labels)
    return adversarial.detach().clamp(0.0, 1.0)
