"""Attacks of the NRP paper (torch): SSP, PGD with full / straight-through (BPDA) / EOT gradients.

Also the pretrained networks they use: feature extractors for SSP and the ImageNet classifier PGD aims at.
"""

from nrp_deploy.attacks.classifiers import load_classifier
from nrp_deploy.attacks.features import FeatureExtractor, build_feature_extractor
from nrp_deploy.attacks.pgd import PGDResult, attack_gradient, pgd_attack, random_targets
from nrp_deploy.attacks.ssp import feature_distance, ssp_attack

__all__ = [
    "FeatureExtractor",
    "PGDResult",
    "attack_gradient",
    "build_feature_extractor",
    "feature_distance",
    "load_classifier",
    "pgd_attack",
    "random_targets",
    "ssp_attack",
]
