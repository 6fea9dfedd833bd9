"""Metadata sidecars for test artifacts: what an export would have recorded, with the verdict judged from a
given PSNR, so a test can make a PASS or a FAIL artifact without exporting anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nrp_deploy.artifacts.metadata import ArtifactMetadata, Fidelity, Verdict, judge, write_metadata
from nrp_deploy.fileutil import sha256_file

TINY_MODEL = {"architecture": "NRP_resG", "config": {"in_nc": 3, "out_nc": 3, "nf": 4, "nb": 1}}


def write_sidecar(
    artifact: Path,
    *,
    psnr_db: float,
    precision: str = "fp32",
    min_psnr_db: float = 80.0,
    source_sha: str = "ab" * 32,
    model: dict[str, Any] | None = None,
) -> Verdict:
    """Write ``artifact``'s sidecar and return the verdict it records."""
    fidelity = Fidelity(max_abs=0.4, mean_abs=0.1, psnr_db=psnr_db)
    verdict = judge(precision, artifact.name, fidelity, min_psnr_db, "2 crops")
    write_metadata(
        artifact,
        ArtifactMetadata(
            artifact=artifact.name,
            artifact_sha256=sha256_file(artifact),
            precision=precision,
            io_dtype="float32",
            opset=17,
            source={"name": "tiny", "path": "/x/tiny.pth", "sha256": source_sha},
            model=model if model is not None else TINY_MODEL,
            fidelity=fidelity,
            fidelity_images={"description": "2 crops", "count": 2},
            min_psnr_db=min_psnr_db,
            verdict=verdict,
        ),
    )
    return verdict
