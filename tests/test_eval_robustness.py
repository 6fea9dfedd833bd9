"""`evaluate` / `nrp eval` end to end on tiny images, a tiny purifier checkpoint and tiny classifiers from a
user's own .py file: threat models, the worst case per threat model, aliases, fresh noise, ONNX targets."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from nrp_deploy.assets import class_label, imagenet_class_names
from nrp_deploy.cli import main
from nrp_deploy.errors import InputError
from nrp_deploy.evaluation.options import EvalOptions
from nrp_deploy.evaluation.report import (
    _fitted,
    format_defence_table,
    format_fidelity_table,
    format_predictions,
    format_table,
    write_report,
)
from nrp_deploy.evaluation.robustness import ATTACKS, DEFENCES, evaluate
from nrp_deploy.evaluation.threats import THREAT_MODEL_ATTACKS, resolve_attacks
from nrp_deploy.images import write_png
from nrp_deploy.models import NRP_resG
from nrp_deploy.runtime import DynamicDefense


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name, shape in {"a.png": (32, 32, 3), "b.png": (32, 32, 3), "c.png": (24, 40, 3)}.items():
        write_png(root / name, rng.integers(0, 256, shape, dtype=np.uint8))
    return root


NETS = """
import torch
from torch import nn


def _net(seed, width):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(width * 16, 10),
    )


def target():
    return _net(0, 6)


def source_a():
    return _net(1, 4)


def source_b():
    return _net(2, 5)
"""


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "user_nets.py"
    path.write_text(NETS)
    return path


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(NRP_resG(nf=8, nb=1).state_dict(), path)
    return path


def _identity(images: np.ndarray, dynamic: DynamicDefense | None) -> np.ndarray:
    return images


def _options(**kwargs) -> EvalOptions:
    return EvalOptions(**{"iterations": 1, "eot_samples": 1, **kwargs})


def test_the_paper_protocol_through_the_runtime_with_a_user_classifier_as_target_and_sources(
    images, checkpoint, nets, tmp_path
):
    options = _options(
        model=checkpoint,
        backend="torch",
        protocol="paper",
        attacks=("pgd-transfer-targeted", "pgd-full"),  # a former name and an attack beyond the protocol's
        classifier=f"{nets}:target",
        sources=(f"{nets}:source_a", f"{nets}:source_b"),
        eot_samples=2,
        grid_images=2,
    )
    report = evaluate([images], options, progress=False)
    assert [r.name for r in report.results] == list(ATTACKS)  # every attack, in catalogue order
    assert report.settings["images"] == 3 and "torch" in report.settings["defence"]
    assert report.settings["aliases"] == {"pgd-transfer-targeted": "pgd-target-targeted"}
    assert len(report.settings["sources"]) == 2 and "user_nets.py:target" in report.settings["classifier"]
    assert report.defences == DEFENCES
    for result in report.results:
        assert len(result.records) == 3 and len(result.examples) == 2
        assert {r["file"] for r in result.records} == {"a.png", "b.png", "c.png"}
        for record in result.records:
            assert all(isinstance(record[d], int) for d in ("clean", *DEFENCES))
            assert 0 < record["ssim_purified"] <= 1
    by_name = {r.name: r for r in report.results}
    assert by_name["none"].agreement("undefended") == 1.0  # no attack: the classifier sees the clean image
    assert (
        by_name["none"].mean("psnr_adversarial") is None
    )  # identical images: infinite PSNR, recorded as None
    for result in report.results[1:]:
        assert result.mean("psnr_adversarial") >= 20 * np.log10(255 / 16) - 1e-6  # within 16/255 L-inf
    for name in ("pgd-full", "pgd-target-targeted", "bpda", "bpda-eot", "pgd-eot"):
        assert all(r["target"] is not None and r["target"] != r["clean"] for r in by_name[name].records)
    for name in ("ssp", "mi-fgsm", "di-fgsm", "ti-dim", "pgd-target"):
        assert by_name[name].target_hits("undefended") is None  # untargeted
    # PGD on the target alone beats the clean prediction undefended more often than chance would
    assert by_name["pgd-target"].agreement("undefended") < 1.0

    summaries = {t.name: t for t in report.threat_models()}
    assert list(summaries) == ["black-box", "gray-box", "white-box"]
    assert summaries["black-box"].attacks == ["ssp", "mi-fgsm", "di-fgsm", "ti-dim"]
    assert summaries["gray-box"].attacks == ["pgd-target", "pgd-target-targeted", "pgd-bpda", "pgd-full"]
    for summary in summaries.values():
        for defence in DEFENCES:
            worst = summary.worst[defence]
            assert worst <= summary.minimum[defence] <= 1.0  # per image is at least as strict as per attack
            members = [by_name[a] for a in summary.attacks]
            expected = np.mean(
                [all(m.records[i][defence] == m.records[i]["clean"] for m in members) for i in range(3)]
            )
            assert worst == pytest.approx(expected)
        points, share = summary.recovered("purified")
        assert points == pytest.approx(100 * (summary.worst["purified"] - summary.worst["undefended"]))
        lost = 1 - summary.worst["undefended"]
        assert share == (None if lost == 0 else pytest.approx(points / 100 / lost))
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    assert set(data["threat_models"]) == {"black-box", "gray-box", "white-box"}
    assert data["attacks"][1]["threat_model"] == "black-box"

    table = format_defence_table(report)
    head = table.splitlines()[2]
    for column in ("clean agree", "PSNR", "ti-dim", "black-box worst", "gray-box worst", "white-box worst"):
        assert column in head
    rows = [line for line in table.splitlines() if line.startswith("| ")][2:]
    assert [r.split("|")[1].strip() for r in rows] == list(DEFENCES)
    assert " pt" in rows[1] and rows[0].count("| -") >= 3  # nothing to recover for no defence

    written = write_report(report, tmp_path / "out")
    names = {p.name for p in written}
    assert names == {"report.json", "report.md"} | {f"grid_{a}.png" for a in ATTACKS}
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["settings"]["images"] == 3
    pgd = by_name["pgd-full"]
    clean = pgd.records[0]["clean"]
    assert saved["class_names"][str(clean)] == imagenet_class_names()[clean]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert re.search(re.escape(class_label(pgd.records[0]["target"])) + r" *\|\n", markdown)
    assert "black-box worst" in markdown
    with Image.open(tmp_path / "out" / "grid_ssp.png") as grid:
        assert grid.width > 4 * 224 and grid.height > 2 * 224  # 4 columns, 2 example rows


def test_worst_case_counts_an_image_only_if_it_survives_every_attack(images, nets):
    seen = []

    def purify(x: np.ndarray, dynamic: DynamicDefense | None) -> np.ndarray:
        seen.append(dynamic)
        return x

    report = evaluate(
        [images],
        _options(attacks=("pgd-target", "pgd-target-targeted"), classifier=f"{nets}:target"),
        purify=purify,
        progress=False,
    )
    (gray,) = report.threat_models()
    untargeted, targeted = report.results
    per_image = [
        a["undefended"] == a["clean"] and b["undefended"] == b["clean"]
        for a, b in zip(untargeted.records, targeted.records, strict=True)
    ]
    assert gray.worst["undefended"] == pytest.approx(np.mean(per_image))
    assert gray.minimum["undefended"] == min(
        untargeted.agreement("undefended"), targeted.agreement("undefended")
    )
    fixed = [d for d in seen if d is not None and d.seed is not None]
    fresh = [d for d in seen if d is not None and d.seed is None]
    assert fixed and fresh and None in seen  # purifier alone, fixed-seed noise, fresh noise


def test_a_custom_purify_function_replaces_the_runtime(images):
    report = evaluate(
        [images], _options(attacks=("none", "ssp"), iterations=2), purify=_identity, progress=False
    )
    assert report.settings["defence"] == "custom purify function"
    for result in report.results:
        for record in result.records:  # identity defence: defended predictions are the undefended ones
            assert record["purified"] == record["undefended"] == record["dynamic"] == record["dynamic-fresh"]
            assert record["psnr_purified"] == record["psnr_adversarial"]


def test_a_bool_style_purify_function_still_sees_noise_as_truthy(images):
    seen = []

    def purify(x: np.ndarray, dynamic) -> np.ndarray:
        seen.append(bool(dynamic))
        return np.zeros_like(x) if dynamic else x

    report = evaluate([images], _options(attacks=("none",)), purify=purify, progress=False)
    assert sorted(set(seen)) == [False, True]
    result = report.results[0]
    assert result.agreement("purified") == 1.0
    for defence in ("dynamic", "dynamic-fresh"):  # all-black inputs: one class
        assert all(r[defence] == result.records[0][defence] for r in result.records)


def test_table_lists_every_attack(images):
    report = evaluate([images], _options(attacks=("none", "ssp")), purify=_identity, progress=False)
    table = format_table(report)
    assert "| none" in table and "| ssp" in table and "3/3 (100%)" in table and "black-box" in table
    assert "target hit" not in table  # no targeted PGD in this run


def test_an_unreadable_file_is_named_once(images):
    bad = images / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = evaluate([images], _options(attacks=("none",)), purify=_identity, progress=False)
    assert [path for path, _ in report.failed] == [str(bad)]
    line = format_table(report).splitlines()[-1]
    assert line.startswith(f"failed: {bad}: ") and line.count(str(bad)) == 1


def test_predictions_table_names_the_classes(images):
    report = evaluate([images], _options(attacks=("none", "ssp")), purify=_identity, progress=False)
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


def test_evaluate_rejects_bad_requests(images, tmp_path, nets):
    with pytest.raises(InputError, match="pgd-magic"):
        EvalOptions(attacks=("none", "pgd-magic"))
    with pytest.raises(InputError, match=r"threat model.*grey-box"):
        EvalOptions(threat_models=("grey-box",))
    with pytest.raises(InputError, match=r"transfer attacks \(mi-fgsm, di-fgsm, ti-dim\).*--source"):
        EvalOptions(protocol="paper")
    with pytest.raises(InputError, match="restarts"):
        EvalOptions(restarts=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        evaluate([tmp_path / "empty"], _options(attacks=("none",)), purify=_identity)
    (tmp_path / "empty" / "bad.png").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"no readable images.*bad\.png"):
        evaluate([tmp_path / "empty"], _options(attacks=("none",)), purify=_identity)
    with pytest.raises(InputError, match=r"classifier spec 'nope\.py:f'.*does not exist"):
        evaluate([images], _options(attacks=("none",), classifier="nope.py:f"), purify=_identity)


def test_threat_models_choose_the_attacks():
    assert resolve_attacks() == ("none", "ssp", "pgd-bpda", "pgd-full", "pgd-eot")  # the former default
    assert resolve_attacks(threat_models=("gray-box",)) == ("none", *THREAT_MODEL_ATTACKS["gray-box"])
    paper = resolve_attacks(protocol="paper")
    assert paper[0] == "none" and set(paper) == {"none", *sum(THREAT_MODEL_ATTACKS.values(), ())}
    assert resolve_attacks(attacks=("pgd-transfer",)) == ("pgd-target",)


def test_an_onnx_target_is_judged_under_black_box_attacks_only(images, nets, tmp_path):
    pytest.importorskip("onnxruntime")
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_nets_for_onnx", nets)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "target.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(
            module.target().eval(),
            (torch.rand(1, 3, 32, 32),),
            str(path),
            dynamo=False,
            dynamic_axes={"input": {0: "n"}},  # a fixed 32x32 input: images are resized to it
            input_names=["input"],
        )
    options = _options(threat_models=("black-box",), classifier=str(path), sources=(f"{nets}:source_a",))
    report = evaluate([images], options, purify=_identity, progress=False)
    assert (
        "ONNX Runtime" in report.settings["classifier"] and report.results[0].agreement("undefended") == 1.0
    )
    with pytest.raises(InputError, match=r"no gradients.*black-box attacks only.*pgd-target"):
        evaluate(
            [images],
            _options(threat_models=("gray-box",), classifier=str(path)),
            purify=_identity,
            progress=False,
        )


def test_nrp_eval_cli_writes_table_json_and_grids(images, checkpoint, nets, tmp_path, capsys):
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
            "none,pgd-bpda,pgd-transfer",
            "--classifier",
            f"{nets}:target?norm=none",
            "--iterations",
            "1",
            "--untargeted",
            "--random-start",
            "--eps",
            "8/255",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 1  # the broken file is reported
    printed = capsys.readouterr().out
    assert "| pgd-bpda" in printed and "broken.png" in printed and "gray-box worst" in printed
    data = json.loads((out / "report.json").read_text())
    assert [a["attack"] for a in data["attacks"]] == ["none", "pgd-target", "pgd-bpda"]
    assert data["attacks"][2]["target_hits"] is None and data["settings"]["pgd"] == "untargeted"
    assert data["settings"]["random_start"] and data["settings"]["eps"] == pytest.approx(8 / 255)
    assert "none normalisation" in data["settings"]["classifier"]
    assert (out / "grid_pgd-bpda.png").is_file() and "gray-box worst" in (out / "report.md").read_text()


def test_nrp_eval_cli_paper_protocol_needs_sources(images, capsys):
    assert main(["eval", str(images), "--protocol", "paper", "--no-progress"]) == 2
    assert "--source" in capsys.readouterr().err


def test_baselines_join_the_comparison_with_fidelity_and_a_defence_table(images):
    report = evaluate(
        [images],
        _options(attacks=("none", "pgd-target"), baselines=("blur", "jpeg"), grid_images=0),
        purify=_identity,
        progress=False,
    )
    none, target = report.results
    assert none.defences == ("undefended", "purified", "dynamic", "dynamic-fresh", "blur", "jpeg")
    assert report.settings["baselines"] == ["blur", "jpeg"]
    for record in none.records:
        assert record["psnr_purified"] is None and record["delta_e_purified"] == 0.0  # identity defence
        assert record["rgb_shift_purified"] == [0.0, 0.0, 0.0]
        assert record["psnr_blur"] < 40 and record["delta_e_blur"] > 0  # random images lose a lot to blur
    fidelity = none.to_dict()["fidelity"]
    assert set(fidelity) == {"purified", "dynamic", "dynamic-fresh", "blur", "jpeg"}
    assert fidelity["jpeg"]["ciede2000"] > 0 and len(fidelity["jpeg"]["rgb_shift"]) == 3
    assert target.agreement("undefended") == target.agreement("purified")  # identity: no defence
    table = format_defence_table(report)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[2:]] == list(none.defences)
    assert "pgd-target" in rows[0] and "gray-box worst" in rows[0]
    fidelity_rows = [line for line in format_fidelity_table(report).splitlines() if line.startswith("| ")]
    assert "CIEDE2000" in fidelity_rows[0] and len(fidelity_rows) == 2 + len(none.defences)
    json.dumps(report.to_dict(), allow_nan=False)


def test_the_dynamic_rows_and_the_eot_attacks_run_the_noise_level_asked_for(images, nets, monkeypatch):
    from nrp_deploy.attacks import pgd

    seen, drawn = [], []

    def purify(x: np.ndarray, dynamic: DynamicDefense | None) -> np.ndarray:
        seen.append(dynamic)
        return x

    def recording(x, sigma, eps, generator=None):
        drawn.append((sigma, eps))
        return x

    monkeypatch.setattr(pgd, "dynamic_input", recording)
    options = _options(
        attacks=("none", "bpda-eot"), classifier=f"{nets}:target", noise_sigma=0.02, noise_eps=0.03
    )
    report = evaluate([images], options, purify=purify, progress=False)
    assert {(d.sigma, d.eps) for d in seen if d is not None} == {(0.02, 0.03)}
    assert {d.seed for d in seen if d is not None} == {None, options.seed}  # dynamic-fresh and dynamic
    assert drawn and set(drawn) == {(0.02, 0.03)}  # the white-box attacker averages over the same noise
    assert report.settings["dynamic"]["sigma"] == 0.02 and report.settings["dynamic"]["eps"] == 0.03
    for table in (format_defence_table(report), format_table(report)):
        assert "dynamic noise sigma 0.02, eps 0.03" in table.splitlines()[0]
    published = evaluate([images], _options(attacks=("none",)), purify=_identity, progress=False)
    assert published.settings["dynamic"]["sigma"] == 0.05
    assert published.settings["dynamic"]["eps"] == pytest.approx(16 / 255)
    assert "dynamic noise sigma 0.05, eps 16/255" in format_defence_table(published)


def test_nrp_eval_cli_measures_the_dynamic_defence_at_the_level_given(images, checkpoint, nets, tmp_path):
    """Without noise (sigma 0) the dynamic rows are the purifier's, image for image."""
    out = tmp_path / "eval"
    code = main(
        ["eval", str(images), "--model", str(checkpoint), "--backend", "torch", "--attacks", "none",
         "--classifier", f"{nets}:target?norm=none", "--noise-sigma", "0", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    data = json.loads((out / "report.json").read_text())
    assert data["settings"]["dynamic"]["sigma"] == 0 and data["settings"]["dynamic"]["seed"] == 0
    assert data["settings"]["dynamic"]["eps"] == pytest.approx(16 / 255)
    for record in data["attacks"][0]["per_image"]:
        for defence in ("dynamic", "dynamic-fresh"):
            assert record[defence] == record["purified"]
            assert record[f"psnr_{defence}"] == record["psnr_purified"]
    assert "dynamic noise sigma 0, eps 16/255" in (out / "report.md").read_text()
