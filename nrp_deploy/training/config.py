"""Training configuration (torch-free, so the CLI can show its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nrp_deploy.errors import InputError
from nrp_deploy.models.spec import ModelSpec

SKIMAGE = "skimage"
# Files of a run directory.
CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "purifier.safetensors"
RUN_SUMMARY = "run.json"
# Settings that may change when a run is resumed: they do not alter what has been trained so far. Changing
# ``steps`` stretches or shortens the rest of the cosine learning-rate schedule.
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "log_every", "device", "snapshot_every"})
SNAPSHOT_DIR = "snapshots"  # step_NNNNNN.safetensors: intermediate weights kept for selection


@dataclass
class TrainConfig:
    data: str = SKIMAGE
    architecture: str = "NRP_resG"
    model_config: dict[str, int] = field(default_factory=lambda: {"nf": 64, "nb": 6})
    identity_init: bool = True
    init_weights: str | None = None  # start from these weights (fine-tuning) instead of a fresh init
    feature_model: str = "efficientnet_lite0"
    feature_layer: str | None = None  # None: the extractor's default layer
    steps: int = 1000
    batch_size: int = 8
    crop: int = 64
    lr: float = 3e-4
    lr_min: float = 1e-5  # cosine decay from lr to lr_min over `steps`
    eps: float = 16 / 255
    eps_min_fraction: float = 0.5
    ssp_iterations: int = 4
    ssp_step: float = 0.02
    clean_fraction: float = 0.2
    # Share of the clean crops given the dynamic defence's input (published noise and projection) and trained
    # back to the clean crop, so that the purifier removes the noise the dynamic defence adds.
    clean_noise_fraction: float = 0.0
    noise_fraction: float = 0.25
    feature_weight: float = 1.0
    pixel_weight: float = 5.0
    identity_weight: float = 0.0  # extra L1 on the clean crops: clean photos must pass through unchanged
    lowfreq_weight: float = 0.0  # L1 of lowfreq_kernel-pooled images: colour and brightness kept
    lowfreq_kernel: int = 8
    adv_weight: float = 0.0
    # Classifiers whose logits the purifier must keep (logit term) and that PGD adversaries are crafted on;
    # each step draws one of them. Empty: neither.
    classifiers: list[str] = field(default_factory=list)
    pgd_fraction: float = 0.0  # share of the adversarial crops made by PGD on the classifier, not SSP
    pgd_iterations: int = 5
    pgd_step: float = 0.02
    logit_weight: float = 0.0  # relative L1 of the classifier's logits, purified vs clean
    # Share of the steps whose classifier adversaries are transfer attacks (MI-FGSM, DI-FGSM or TI-DIM, one
    # drawn per step) on the ensemble of all the classifiers instead of PGD on the drawn one.
    transfer_fraction: float = 0.0
    transfer_iterations: int = 10
    transfer_ti_kernel: int = 15  # TI-DIM's gradient-smoothing kernel, pixels
    max_zoom: float = 2.0
    jitter: float = 0.1
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 50
    log_every: int = 10
    snapshot_every: int = 0  # keep the weights every N steps in snapshots/ (0: only the final weights)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.ssp_iterations < 1:
            raise InputError("steps, batch size and SSP iterations must be at least 1")
        if not self.lr > 0 or not 0 <= self.lr_min <= self.lr:
            raise InputError(f"need lr > 0 and 0 <= lr_min <= lr, got lr={self.lr}, lr_min={self.lr_min}")
        if not 0 < self.eps_min_fraction <= 1:
            raise InputError(f"eps_min_fraction must be in (0, 1], got {self.eps_min_fraction}")
        if self.identity_weight > 0 and round(self.clean_fraction * self.batch_size) < 1:
            raise InputError("an identity weight needs clean crops: raise clean_fraction or batch_size")
        if self.lowfreq_kernel < 1 or self.lowfreq_kernel > self.crop:
            raise InputError(f"lowfreq_kernel must be in [1, crop], got {self.lowfreq_kernel}")
        if (self.pgd_fraction > 0 or self.logit_weight > 0) and not self.classifiers:
            raise InputError(
                "PGD adversaries and the logit term need at least one classifier (--classifiers)"
            )
        if self.pgd_iterations < 1 or not self.pgd_step > 0:
            raise InputError("PGD needs at least one iteration and a positive step")
        if self.transfer_fraction > 0 and not self.classifiers:
            raise InputError("transfer adversaries need at least one classifier (--classifiers)")
        if self.transfer_iterations < 1 or self.transfer_ti_kernel < 1:
            raise InputError("transfer attacks need at least one iteration and a TI kernel of at least 1 px")
        if self.snapshot_every < 0:
            raise InputError(f"--snapshot-every must be >= 0 (0: no snapshots), got {self.snapshot_every}")
        if self.clean_noise_fraction > 0 and round(self.clean_fraction * self.batch_size) < 1:
            raise InputError("noisy clean crops need clean crops: raise clean_fraction or batch_size")
        for name in (
            "clean_fraction",
            "clean_noise_fraction",
            "noise_fraction",
            "pgd_fraction",
            "transfer_fraction",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.init_weights is not None and self.identity_init:
            raise InputError(
                "starting from --init-weights replaces the identity initialisation: "
                "pass --no-identity-init with it"
            )
        if self.identity_init and self.architecture != "NRP_resG":
            raise InputError("identity initialisation is defined for NRP_resG only; pass --no-identity-init")
        try:
            ModelSpec(self.architecture, self.model_config)
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    def command(self, out: str) -> str:
        """The ``nrp train`` command line that trains this configuration into ``out`` (for provenance)."""
        parts = ["nrp train", f"--out {out}"]
        for name, value in self.__dict__.items():
            if name in ("checkpoint_every", "log_every", "device", "snapshot_every") or value is None:
                continue
            if name == "classifiers":
                parts += [f"--classifiers {','.join(value)}"] if value else []
            elif name == "model_config":
                parts += [f"--{key} {val}" for key, val in value.items()]
            elif name == "identity_init":
                parts += [] if value else ["--no-identity-init"]
            else:
                parts.append(f"--{name.replace('_', '-')} {value}")
        return " ".join(parts)
