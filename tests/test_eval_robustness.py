"""`evaluate` / `nrp eval` end to end on tiny images and a tiny purifier checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from nrp_deploy.assets import class_label, imagenet_class_names
from nrp_deploy.cli import main
from nrp_deploy.errors import InputError
from nrp_deploy.evaluation.report import (
    _fitted,
    format_defence_table,
    format_predictions,
    format_table,
    write_report,
)
from nrp_deploy.evaluation.robustness import ATTACKS, DEFENCES, evaluate
from nrp_deploy.images import write_png
from nrp_deploy.models import NRP_resG


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name, shape in {"a.png": (32, 32, 3), "b.png": (32, 32, 3), "c.png": (24, 40, 3)}.items():
        write_png(root / name, rng.integers(0, 256, shape, dtype=np.uint8))
    return root


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(NRP_resG(nf=8, nb=1).state_dict(), path)
    return path


def _identity(images: np.ndarray, dynamic: bool) -> np.ndarray:
    return images


def test_evaluate_all_attacks_through_the_runtime(images, checkpoint, tmp_path):
    report = evaluate(
        [images],
        checkpoint,
        ATTACKS,
        backend="torch",
        iterations=1,
        eot_samples=1,
        progress=False,
        grid_images=2,
    )
    assert [r.name for r in report.results] == list(ATTACKS)
    assert report.settings["images"] == 3 and "torch" in report.settings["defence"]
    for result in report.results:
        assert len(result.records) == 3 and len(result.examples) == 2
        assert {r["file"] for r in result.records} == {"a.png", "b.png", "c.png"}
        for record in result.records:
            assert all(isinstance(record[d], int) for d in ("clean", *DEFENCES))
            assert 0 < record["ssim_purified"] <= 1
    none = report.results[0]
    assert none.agreement("undefended") == 1.0  # no attack: the classifier sees the clean image
    assert none.mean("psnr_adversarial") is None  # identical images: infinite PSNR, recorded as None
    for result in report.results[1:]:
        assert result.mean("psnr_adversarial") >= 20 * np.log10(255 / 16) - 1e-6  # within 16/255 L-inf
    by_name = {r.name: r for r in report.results}
    for name in ("pgd-full", "pgd-transfer-targeted"):
        pgd = by_name[name]
        assert all(r["target"] is not None and r["target"] != r["clean"] for r in pgd.records)
        assert pgd.target_hits("undefended") is not None
    assert by_name["ssp"].target_hits("purified") is None
    assert by_name["pgd-transfer"].target_hits("undefended") is None  # untargeted
    # Transfer PGD is crafted on the classifier alone: undefended, it beats the clean prediction more
    # often than chance would, whatever the purifier does.
    assert by_name["pgd-transfer"].agreement("undefended") < 1.0
    json.dumps(report.to_dict(), allow_nan=False)

    written = write_report(report, tmp_path / "out")
    names = {p.name for p in written}
    assert names == {"report.json", "report.md"} | {f"grid_{a}.png" for a in ATTACKS}
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["settings"]["images"] == 3
    clean = pgd.records[0]["clean"]
    assert saved["class_names"][str(clean)] == imagenet_class_names()[clean]
    assert f"{class_label(pgd.records[0]['target'])} |" in (tmp_path / "out" / "report.md").read_text()
    with Image.open(tmp_path / "out" / "grid_ssp.png") as grid:
        assert grid.width > 4 * 224 and grid.height > 2 * 224  # 4 columns, 2 example rows


def test_a_custom_purify_function_replaces_the_runtime(images):
    report = evaluate([images], "unused", ["none", "ssp"], purify=_identity, iterations=2, progress=False)
    assert report.settings["defence"] == "custom purify function"
    for result in report.results:
        for record in result.records:  # identity defence: defended predictions are the undefended ones
            assert record["purified"] == record["undefended"] == record["dynamic"]
            assert record["psnr_purified"] == record["psnr_adversarial"]


def test_dynamic_flag_reaches_the_purify_function(images):
    seen = []

    def purify(x: np.ndarray, dynamic: bool) -> np.ndarray:
        seen.append(dynamic)
        return np.zeros_like(x) if dynamic else x

    report = evaluate([images], "unused", ["none"], purify=purify, progress=False)
    assert sorted(set(seen)) == [False, True]
    result = report.results[0]
    assert result.agreement("purified") == 1.0
    assert all(r["dynamic"] == result.records[0]["dynamic"] for r in result.records)  # all-black inputs


def test_table_lists_every_attack(images):
    report = evaluate([images], "unused", ["none", "ssp"], purify=_identity, iterations=1, progress=False)
    table = format_table(report)
    assert "| none" in table and "| ssp" in table and "3/3 (100%)" in table
    assert "target hit" not in table  # no targeted PGD in this run


def test_an_unreadable_file_is_named_once(images):
    bad = images / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = evaluate([images], "unused", ["none"], purify=_identity, progress=False)
    assert [path for path, _ in report.failed] == [str(bad)]
    line = format_table(report).splitlines()[-1]
    assert line.startswith(f"failed: {bad}: ") and line.count(str(bad)) == 1


def test_predictions_table_names_the_classes(images):
    report = evaluate([images], "unused", ["none", "ssp"], purify=_identity, iterations=1, progress=False)
    table = format_predictions(report)
    record = report.results[1].records[0]
    name = imagenet_class_names()[record["clean"]]
    assert f"| {record['file']} | {name} ({record['clean']})" in table
    assert table.startswith("none (= agrees") and "\nssp (= agrees" in table and "target" not in table


def test_grid_captions_are_cut_to_their_column():
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = ImageFont.load_default()
    long = "purified = " + "very long class name " * 10
    cut = _fitted(draw, long, font, 120)
    assert cut.endswith("...") and draw.textlength(cut, font=font) <= 120
    assert _fitted(draw, "tabby cat (281)", font, 500) == "tabby cat (281)"


def test_evaluate_rejects_bad_requests(images, tmp_path):
    with pytest.raises(InputError, match="pgd-magic"):
        evaluate([images], "unused", ["none", "pgd-magic"], purify=_identity)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        evaluate([tmp_path / "empty"], "unused", ["none"], purify=_identity)
    (tmp_path / "empty" / "bad.png").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"no readable images.*bad\.png"):
        evaluate([tmp_path / "empty"], "unused", ["none"], purify=_identity)


def test_nrp_eval_cli_writes_table_json_and_grids(images, checkpoint, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            str(images),
            "--model",
            str(checkpoint),
            "--backend",
            "torch",
            "--attacks",
            "none,pgd-bpda",
            "--iterations",
            "1",
            "--untargeted",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 1  # the broken file is reported
    printed = capsys.readouterr().out
    assert "| pgd-bpda" in printed and "broken.png" in printed
    data = json.loads((out / "report.json").read_text())
    assert [a["attack"] for a in data["attacks"]] == ["none", "pgd-bpda"]
    assert data["attacks"][1]["target_hits"] is None and data["settings"]["pgd"] == "untargeted"
    assert (out / "grid_pgd-bpda.png").is_file() and (out / "report.md").read_text().startswith("3 images")


def test_baselines_join_the_comparison_with_fidelity_and_a_defence_table(images):
    report = evaluate(
        [images],
        attacks=["none", "pgd-transfer"],
        purify=_identity,
        baselines=["blur", "jpeg"],
        iterations=1,
        progress=False,
        grid_images=0,
    )
    none, transfer = report.results
    assert none.defences == ("undefended", "purified", "dynamic", "blur", "jpeg")
    assert report.settings["baselines"] == ["blur", "jpeg"]
    for record in none.records:
        assert record["psnr_purified"] is None and record["delta_e_purified"] == 0.0  # identity defence
        assert record["rgb_shift_purified"] == [0.0, 0.0, 0.0]
        assert record["psnr_blur"] < 40 and record["delta_e_blur"] > 0  # random images lose a lot to blur
    fidelity = none.to_dict()["fidelity"]
    assert set(fidelity) == {"purified", "dynamic", "blur", "jpeg"}
    assert fidelity["jpeg"]["ciede2000"] > 0 and len(fidelity["jpeg"]["rgb_shift"]) == 3
    assert transfer.agreement("undefended") == transfer.agreement("purified")  # identity: no defence
    table = format_defence_table(report)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[2:]] == list(none.defences)
    assert "agree pgd-transfer" in rows[0] and "CIEDE2000" in rows[0]
    json.dumps(report.to_dict(), allow_nan=False)
