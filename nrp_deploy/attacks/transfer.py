"""The paper's transfer attacks, crafted on the attacker's own networks: MI-FGSM, DI-FGSM and TI-DIM.

They come from torchattacks (``MIFGSM``, ``DIFGSM``, ``TIFGSM``) rather than being written again here.
An attacker in the black-box threat model knows neither the defence nor the judged network, so the
adversaries are crafted on *source* networks only and then shown to the target: with several sources the
attack climbs their cross-entropy averaged over the sources (``LossEnsemble``).

- ``mi-fgsm``: momentum iterative FGSM (Dong et al., 2018), decay 1.0;
- ``di-fgsm``: diverse inputs (Xie et al., 2019): each step sees a random resize-and-pad of the image with
  probability 0.5 (torchattacks' resize rate 0.9), no momentum;
- ``ti-dim``: translation-invariant (Dong et al., 2019) on top of momentum and diverse inputs, the paper's
  strongest black-box attack: the gradient is smoothed with a 15x15 Gaussian kernel (sigma 3 kernel
  radii), diverse inputs with probability 0.7 as in the TI paper.

All at the published budget (eps 16/255), 10 iterations of step eps / iterations, untargeted. The labels
are the sources' own consensus on the clean image (the attacker does not see the target's prediction).
torchattacks draws its randomness from torch's global generator; each call runs inside
``torch.random.fork_rng`` seeded from the caller's generator, so a run is replayable and the caller's
global random state is left alone.

torchattacks is not a requirement of the ``attacks`` extra: its package metadata asks for torchvision (which
it never imports) and an old ``requests`` that would downgrade urllib3. Install it alone, ``pip install
--no-deps torchattacks==3.5.1`` (``scripts/setup.sh`` does); it is imported only when an attack runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nrp_deploy.attacks.pgd import PGD_EPS
from nrp_deploy.attacks.ssp import check_budget, check_images
from nrp_deploy.errors import BackendUnavailableError, InputError

TRANSFER_ATTACKS = ("mi-fgsm", "di-fgsm", "ti-dim")
TRANSFER_ITERATIONS = 10
MOMENTUM_DECAY = 1.0
DI_RESIZE_RATE = 0.9
DI_PROBABILITY = 0.5
TI_DIM_PROBABILITY = 0.7
TI_KERNEL = 15
TI_NSIG = 3
TORCHATTACKS_INSTALL = "pip install --no-deps torchattacks==3.5.1"


def import_torchattacks():  # -> the torchattacks module
    """torchattacks, or ``BackendUnavailableError`` saying how to install it."""
    try:
        import torchattacks
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the transfer attacks ({', '.join(TRANSFER_ATTACKS)}) and the torchattacks interop need "
            f"torchattacks, which is not installed: {TORCHATTACKS_INSTALL} (--no-deps: its metadata asks for "
            "torchvision and requests~=2.25, neither of which it uses; scripts/setup.sh installs it so)"
        ) from exc
    return torchattacks


class LossEnsemble(nn.Module):
    """Several classifiers as one module whose cross-entropy is the mean of theirs, for attack libraries.

    Attack libraries take the cross-entropy of whatever the module returns. The output here is the mean
    over sources of each one's log-softmax, for the C classes, plus one slack class holding the rest of
    the probability mass, ``log(1 - sum_c exp(mean log p_c))`` (at most 1 by the AM-GM inequality). The
    C + 1 outputs then are log-probabilities that sum to one, so ``cross_entropy(output, y)`` is exactly
    ``mean_k cross_entropy(source_k(x), y)`` for every label y < C, and so is its gradient. (Averaging the
    logits instead would be another attack: the logit ensemble of Dong et al.) The slack class is never a
    label; read predictions from the first C outputs. One source is returned as it is.
    """

    def __init__(self, sources: Sequence[nn.Module]) -> None:
        super().__init__()
        if not sources:
            raise InputError("a transfer attack needs at least one source classifier")
        self.sources = nn.ModuleList(sources)
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        super().train(False)

    def train(self, mode: bool = True) -> LossEnsemble:
        """Does nothing: the sources stay in eval mode whatever an attack library asks."""
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if len(self.sources) == 1:
            return self.sources[0](images)
        mean_log_p = torch.stack([F.log_softmax(s(images), dim=1) for s in self.sources]).mean(0)
        total = torch.logsumexp(mean_log_p, dim=1, keepdim=True).clamp(max=-1e-6)  # <= 0 (AM-GM)
        slack = torch.log(-torch.expm1(total))  # log(1 - sum exp)
        return torch.cat([mean_log_p, slack], dim=1)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The sources' consensus class per image (argmax of the mean log-probability)."""
        with torch.no_grad():
            out = self(images)
        return (out if len(self.sources) == 1 else out[:, :-1]).argmax(1)


def transfer_attack(
    name: str,
    images: torch.Tensor,
    sources: Sequence[nn.Module] | LossEnsemble,
    labels: torch.Tensor | None = None,
    eps: float = PGD_EPS,
    iterations: int = TRANSFER_ITERATIONS,
    step: float | None = None,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    ti_kernel: int = TI_KERNEL,
) -> torch.Tensor:
    """Adversaries of ``images`` (float NCHW in [0, 1]) crafted by torchattacks' ``name`` on ``sources``.

    ``labels``: untargeted, the classes to move away from (default: the sources' consensus); targeted,
    the targets (required). ``step`` defaults to eps / iterations. ``generator`` seeds torchattacks'
    random draws (diverse inputs). ``ti_kernel``: TI-DIM's gradient-smoothing kernel in pixels.
    """
    if name not in TRANSFER_ATTACKS:
        raise InputError(f"unknown transfer attack {name!r}; choose one of {', '.join(TRANSFER_ATTACKS)}")
    if iterations < 1:
        raise InputError(f"a transfer attack needs iterations >= 1, got {iterations}")
    if ti_kernel < 1:
        raise InputError(f"TI-DIM's kernel must be at least 1 px, got {ti_kernel}")
    step = eps / iterations if step is None else step
    check_budget(eps, step, iterations)
    check_images(images)
    ta = import_torchattacks()
    model = sources if isinstance(sources, LossEnsemble) else LossEnsemble(sources)
    model = model.to(images.device)
    if labels is None:
        if targeted:
            raise InputError("a targeted transfer attack needs its target labels")
        labels = model.predict(images)
    common = {"eps": eps, "alpha": step, "steps": iterations}
    if name == "mi-fgsm":
        attack = ta.MIFGSM(model, decay=MOMENTUM_DECAY, **common)
    elif name == "di-fgsm":
        attack = ta.DIFGSM(
            model, decay=0.0, resize_rate=DI_RESIZE_RATE, diversity_prob=DI_PROBABILITY, **common
        )
    else:
        attack = ta.TIFGSM(
            model,
            decay=MOMENTUM_DECAY,
            kernel_name="gaussian",
            len_kernel=ti_kernel,
            nsig=TI_NSIG,
            resize_rate=DI_RESIZE_RATE,
            diversity_prob=TI_DIM_PROBABILITY,
            **common,
        )
    attack.set_device(images.device)
    if targeted:
        attack.set_mode_targeted_by_label(quiet=True)
    seed = int(
        torch.randint(0, 2**62, (), generator=generator, device=generator.device if generator else "cpu")
    )
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        adversarial = attack(images.detach(), labels)
    return adversarial.detach()
