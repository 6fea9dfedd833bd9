"""The self-supervised NRP training loop (Naseer et al., CVPR 2020, section 3), sized for small budgets.

Each step draws random augmented crops, turns most of them into SSP adversaries against the feature
extractor (a few signed-gradient iterations with a large step and a random budget eps_t in
[eps_min_fraction * eps, eps], so one run covers weak and full-strength perturbations), adds the dynamic
defence's noise to some (so the purifier also cleans what the dynamic defence feeds it), leaves a few clean
(so clean photos pass through unharmed), and trains the purifier to map them back: the features of the
purified crop to the clean crop's features, and its pixels to the clean pixels.

Optionally some adversaries are PGD on an ImageNet classifier's logits instead (labels from its own clean
prediction, so still no ground truth), or transfer attacks (MI-FGSM, DI-FGSM, TI-DIM) on the ensemble of
the classifiers, and a logit term asks the classifier to read the purified crop as it reads the clean one.
SSP perturbations are generic; an attacker aiming at a classifier's decision makes different ones, and a
purifier that has never seen that kind does not remove them. Some clean crops may get the dynamic
defence's noise and be trained back to the clean crop: the dynamic defence relies on the purifier removing
the noise it adds, and a purifier trained to be the identity on clean inputs passes it through.

A run lives in one directory: ``checkpoint.pt`` (everything needed to resume exactly), ``log.jsonl`` (the
losses), ``snapshots/`` (the weights every ``snapshot_every`` steps, for selection on validation photos),
and at the end ``purifier.safetensors`` (the weights alone, loadable by ``load_model``) and
``run.json`` (configuration and final losses).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nrp_deploy.attacks.pgd import pgd_attack
from nrp_deploy.attacks.ssp import ssp_attack
from nrp_deploy.attacks.transfer import TRANSFER_ATTACKS, LossEnsemble, transfer_attack
from nrp_deploy.errors import CheckpointError, InputError
from nrp_deploy.fileutil import sha256_file, write_bytes_atomic, write_json_atomic
from nrp_deploy.models.eager import dynamic_input
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.training.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from nrp_deploy.training.config import (
    CHECKPOINT_NAME,
    RESUMABLE_CHANGES,
    RUN_SUMMARY,
    SNAPSHOT_DIR,
    WEIGHTS_NAME,
    TrainConfig,
)
from nrp_deploy.training.data import Augment, CropSampler, load_training_images
from nrp_deploy.training.objective import (
    Discriminator,
    feature_loss,
    identity_init,
    lowfreq_loss,
    pixel_loss,
    relativistic_losses,
)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    losses: dict[str, float]
    weights: Path


class _Trainer:
    def __init__(self, config: TrainConfig, features: nn.Module, classifiers: list[nn.Module]) -> None:
        self.config = config
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.spec = ModelSpec(config.architecture, config.model_config)
        self.model = self.spec.build().to(self.device).train()
        if config.identity_init:
            identity_init(self.model)
        if config.init_weights is not None:
            self.model.load_state_dict(_init_state(config.init_weights, self.spec))
        self.features = features.to(self.device).eval().requires_grad_(False)
        self.classifiers = [c.to(self.device).eval().requires_grad_(False) for c in classifiers]
        # validate() guarantees classifiers wherever transfer adversaries are asked for
        self.transfer_sources = LossEnsemble(self.classifiers) if config.transfer_fraction > 0 else None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(0.9, 0.99))
        total, floor = config.steps, config.lr_min / config.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
        )
        self.discriminator: nn.Module | None = None
        if config.adv_weight > 0:
            self.discriminator = Discriminator().to(self.device).train()
            self.d_optimizer = torch.optim.Adam(
                self.discriminator.parameters(), lr=config.lr, betas=(0.9, 0.99)
            )
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.attack_generator = torch.Generator(self.device).manual_seed(config.seed + 1)
        images = load_training_images(config.data, min_side=config.crop)
        augment = Augment(max_zoom=config.max_zoom, jitter=config.jitter)
        self.sampler = CropSampler(images, config.crop, augment, self.data_generator)
        self.step = 0
        self.last_losses: dict[str, float] = {}

    def state(self) -> dict[str, Any]:
        state = {
            "config": asdict(self.config),
            "step": self.step,
            "last_losses": self.last_losses,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {**rng_states(self.data_generator), "attack": self.attack_generator.get_state()},
        }
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["d_optimizer"] = self.d_optimizer.state_dict()
        return state

    def restore(self, state: dict[str, Any], path: Path) -> None:
        saved = state["config"]
        current = asdict(self.config)
        # A setting added after the run was saved reads as its default, so older runs still resume.
        defaults = asdict(TrainConfig())
        saved = {**defaults, **saved}
        changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
            raise CheckpointError(f"cannot resume {path} under a different configuration ({detail})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        restore_rng_states(self.data_generator, state["rng"])
        self.attack_generator.set_state(state["rng"]["attack"])
        self.step = int(state["step"])
        self.last_losses = dict(state.get("last_losses", {}))

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.data_generator))

    def _draw_classifier(self) -> nn.Module | None:
        """The classifier of this step (PGD adversaries and logit term), or None when none is configured."""
        if not self.classifiers:
            return None
        return self.classifiers[int(torch.randint(len(self.classifiers), (), generator=self.data_generator))]

    def _inputs(self, clean: torch.Tensor, classifier: nn.Module | None) -> torch.Tensor:
        """Adversarial, noisy and clean purifier inputs for one batch of clean crops.

        First the clean crops (the last ``clean_noise_fraction`` of them with the dynamic defence's noise),
        then the classifier adversaries: on ``transfer_fraction`` of the steps a transfer attack drawn from
        TRANSFER_ATTACKS on the classifiers' ensemble, otherwise PGD on the step's classifier (untargeted or
        towards a random class, half the steps each, labels from the classifier's own clean prediction),
        then the SSP adversaries.
        """
        cfg = self.config
        n_clean = round(cfg.clean_fraction * len(clean))
        n_pgd = round(cfg.pgd_fraction * (len(clean) - n_clean)) if classifier is not None else 0
        eps = cfg.eps * (cfg.eps_min_fraction + (1 - cfg.eps_min_fraction) * self._uniform())
        inputs = clean.clone()
        transfer = self.transfer_sources is not None and self._uniform() < cfg.transfer_fraction
        if n_pgd and transfer:
            pgd = slice(n_clean, n_clean + n_pgd)
            attack = TRANSFER_ATTACKS[
                int(torch.randint(len(TRANSFER_ATTACKS), (), generator=self.data_generator))
            ]
            inputs[pgd] = transfer_attack(
                attack,
                clean[pgd],
                self.transfer_sources,
                eps=eps,
                iterations=cfg.transfer_iterations,
                generator=self.attack_generator,
                ti_kernel=cfg.transfer_ti_kernel,
            )
        elif n_pgd:
            pgd = slice(n_clean, n_clean + n_pgd)
            inputs[pgd] = pgd_attack(
                clean[pgd],
                classifier,
                nn.Identity(),
                targeted=self._uniform() < 0.5,
                eps=eps,
                step=cfg.pgd_step,
                iterations=cfg.pgd_iterations,
                generator=self.attack_generator,
            ).adversarial
        if n_clean + n_pgd < len(clean):
            inputs[n_clean + n_pgd :] = ssp_attack(
                clean[n_clean + n_pgd :],
                self.features,
                eps=eps,
                step=cfg.ssp_step,
                iterations=cfg.ssp_iterations,
                generator=self.attack_generator,
            )
        noisy = torch.rand(len(clean), generator=self.data_generator) < cfg.noise_fraction
        n_clean_noisy = round(cfg.clean_noise_fraction * n_clean)
        noisy[: n_clean - n_clean_noisy] = False
        noisy[n_clean - n_clean_noisy : n_clean] = True
        if noisy.any():
            mask = noisy.to(self.device).view(-1, 1, 1, 1)
            inputs = torch.where(mask, dynamic_input(inputs, generator=self.attack_generator), inputs)
        return inputs

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        clean = self.sampler.sample(cfg.batch_size).to(self.device)
        classifier = self._draw_classifier()
        inputs = self._inputs(clean, classifier)
        purified = self.model(inputs)
        with torch.no_grad():
            clean_features = self.features(clean)
        losses = {
            "feature": feature_loss(self.features(purified), clean_features),
            "pixel": pixel_loss(purified, clean),
        }
        total = cfg.feature_weight * losses["feature"] + cfg.pixel_weight * losses["pixel"]
        n_clean = round(cfg.clean_fraction * len(clean))
        if cfg.identity_weight > 0:
            losses["identity"] = pixel_loss(purified[:n_clean], clean[:n_clean])
            total = total + cfg.identity_weight * losses["identity"]
        if cfg.lowfreq_weight > 0:
            losses["lowfreq"] = lowfreq_loss(purified, clean, cfg.lowfreq_kernel)
            total = total + cfg.lowfreq_weight * losses["lowfreq"]
        if classifier is not None and cfg.logit_weight > 0:
            with torch.no_grad():
                clean_logits = classifier(clean)
            losses["logit"] = feature_loss(classifier(purified), clean_logits)
            total = total + cfg.logit_weight * losses["logit"]
        if self.discriminator is not None:
            _, losses["adv"] = relativistic_losses(self.discriminator(clean), self.discriminator(purified))
            total = total + cfg.adv_weight * losses["adv"]
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.discriminator is not None:
            d_loss, _ = relativistic_losses(self.discriminator(clean), self.discriminator(purified.detach()))
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_optimizer.step()
            losses["disc"] = d_loss
        self.step += 1
        return {"total": total.item(), **{k: v.item() for k, v in losses.items()}}


def _init_state(path: str, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The weights a fine-tuning run starts from, refused by name if they do not fit the architecture.

    NRP_resG weights with fewer residual blocks than ``spec`` asks for are deepened: the missing blocks are
    appended to the trunk as exact identities (fresh first convolution, zero second one), so the deeper
    purifier starts as the trained one and training grows its reach (receptive field) from there.
    """
    from nrp_deploy.models.checkpoint import read_state_dict

    state = read_state_dict(path)
    model = spec.build()
    if spec.architecture == "NRP_resG":
        state = _deepened(state, model)
    expected = model.state_dict()
    wrong = sorted(k for k in expected if k not in state or state[k].shape != expected[k].shape)
    if wrong or len(state) != len(expected):
        raise CheckpointError(
            f"--init-weights {path} does not hold {spec.architecture} {spec.config} weights "
            f"(missing or mis-shaped: {', '.join(wrong[:3]) or 'none'}; {len(state)} tensors vs {len(expected)})"
        )
    return state


def _deepened(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with the NRP_resG trunk blocks it lacks added as identity blocks of ``model``'s init."""
    prefix = "recon_trunk."
    have = {int(k.split(".")[1]) for k in state if k.startswith(prefix)}
    want = {int(k.split(".")[1]) for k in model.state_dict() if k.startswith(prefix)}
    if not have or have != set(range(len(have))) or not have < want:
        return state  # not a shallower trunk of the same kind: the shape check names what is wrong
    fresh = model.state_dict()
    added = {}
    for block in sorted(want - have):
        for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
            key = f"{prefix}{block}.{name}"
            tensor = fresh[key].clone()
            added[key] = tensor.zero_() if name.startswith("conv2") else tensor
    return {**state, **added}


def _classifiers(config: TrainConfig) -> list[nn.Module]:
    from nrp_deploy.attacks.classifiers import load_classifier

    return [load_classifier(name) for name in config.classifiers]


def _feature_extractor(config: TrainConfig) -> nn.Module:
    from nrp_deploy.attacks.features import build_feature_extractor

    if config.feature_layer is None:
        return build_feature_extractor(config.feature_model)
    return build_feature_extractor(config.feature_model, layer=config.feature_layer)


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike[str],
    resume: bool = False,
    progress: bool = True,
    features: nn.Module | None = None,
    classifiers: list[nn.Module] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a purifier into ``run_dir``; with ``resume``, continue from its checkpoint.

    ``features`` replaces the extractor named by ``config.feature_model`` and ``classifiers`` the networks
    named by ``config.classifiers`` (tests pass tiny modules).
    Without ``resume``, an existing checkpoint in ``run_dir`` is refused rather than overwritten.
    """
    config.validate()
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if ckpt_path.exists() and not resume:
        raise InputError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
    if resume and not ckpt_path.exists():
        raise InputError(f"nothing to resume: {ckpt_path} does not exist")
    trainer = _Trainer(
        config,
        features if features is not None else _feature_extractor(config),
        classifiers if classifiers is not None else _classifiers(config),
    )
    if resume:
        trainer.restore(load_checkpoint(ckpt_path), ckpt_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", asdict(config))

    from tqdm import tqdm

    bar = tqdm(
        total=config.steps, initial=trainer.step, disable=not progress, unit="step", dynamic_ncols=True
    )
    window: dict[str, list[float]] = {}
    started = time.monotonic()
    with bar, open(run_dir / "log.jsonl", "a", encoding="utf-8") as log:
        while trainer.step < config.steps:
            losses = trainer.train_step()
            for key, value in losses.items():
                window.setdefault(key, []).append(value)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
            if trainer.step % config.log_every == 0 or trainer.step == config.steps:
                trainer.last_losses = {k: sum(v) / len(v) for k, v in window.items()}
                record = {
                    "step": trainer.step,
                    "lr": trainer.scheduler.get_last_lr()[0],
                    "seconds": round(time.monotonic() - started, 1),
                    **trainer.last_losses,
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                if on_log is not None:
                    on_log(record)
                window.clear()
            if config.snapshot_every and trainer.step % config.snapshot_every == 0:
                save_weights(trainer.model, run_dir / SNAPSHOT_DIR / f"step_{trainer.step:06d}.safetensors")
            if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
                save_checkpoint(ckpt_path, trainer.state())
    weights = run_dir / WEIGHTS_NAME
    save_weights(trainer.model, weights)
    write_json_atomic(
        run_dir / RUN_SUMMARY,
        {
            "config": asdict(config),
            "spec": trainer.spec.to_dict(),
            "steps": trainer.step,
            "final_losses": trainer.last_losses,
            "weights_sha256": sha256_file(weights),
            "init_weights_sha256": None if config.init_weights is None else sha256_file(config.init_weights),
        },
    )
    return TrainResult(run_dir=run_dir, steps=trainer.step, losses=trainer.last_losses, weights=weights)


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """The purifier's float32 state dict as safetensors (data only), written atomically."""
    from safetensors.torch import save

    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    write_bytes_atomic(path, save(state))
