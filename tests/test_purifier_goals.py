"""scripts/purifier_goals.py: an nrp eval report checked against the default purifier's release goals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def goals_module(load_script):
    return load_script("purifier_goals")


def _row(attack: str, undefended: float, purified: float, dynamic: float, blur: float, jpeg: float) -> dict:
    agreement = {
        "undefended": undefended,
        "purified": purified,
        "dynamic": dynamic,
        "dynamic-fresh": dynamic,
        "blur": blur,
        "jpeg": jpeg,
    }
    return {"attack": attack, "images": 20, "agreement": agreement, "psnr_purified_db": 40.0}


def _report(**changes: tuple[float, ...]) -> dict:
    rows = {
        "none": (1.0, 1.0, 0.95, 0.7, 0.85),
        "ssp": (0.1, 0.9, 0.9, 0.6, 0.3),
        "mi-fgsm": (0.0, 0.8, 0.85, 0.4, 0.5),
        "di-fgsm": (0.0, 0.75, 0.8, 0.4, 0.5),
        "ti-dim": (0.2, 0.8, 0.8, 0.3, 0.3),
    }
    rows.update(changes)
    return {"attacks": [_row(name, *rates) for name, rates in rows.items()]}


def _failed(goals_module, report: dict) -> list[str]:
    return [g.name for g in goals_module.check(report) if not g.met]


def test_a_report_meeting_every_goal_passes(goals_module, tmp_path: Path, capsys) -> None:
    assert _failed(goals_module, _report()) == []
    path = tmp_path / "report.json"
    path.write_text(json.dumps(_report()))
    assert goals_module.main([str(path)]) == 0
    assert "15 of 15 goals met" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({"none": (1.0, 0.9, 0.95, 0.7, 0.85)}, ["clean agreement, static"]),
        ({"none": (1.0, 1.0, 0.85, 0.7, 0.85)}, ["clean agreement, dynamic defence"]),
        # 0.6 of the 0.9 taken back is 67 %, and only 10 points over JPEG
        (
            {"ssp": (0.1, 0.7, 0.7, 0.6, 0.3)},
            ["ssp: agreement recovered", "ssp: over the best of blur / JPEG"],
        ),
        ({"ti-dim": (0.2, 0.8, 0.8, 0.3, 0.7)}, ["ti-dim: over the best of blur / JPEG"]),
        ({"di-fgsm": (0.0, 0.75, 0.7, 0.4, 0.5)}, ["di-fgsm: dynamic defence vs static"]),
    ],
)
def test_each_goal_fails_on_its_own(goals_module, change: dict, failed: list[str]) -> None:
    assert _failed(goals_module, _report(**change)) == failed


def test_the_weaker_noise_draw_counts(goals_module) -> None:
    report = _report()
    clean = report["attacks"][0]["agreement"]
    clean["dynamic"], clean["dynamic-fresh"] = 0.95, 0.85
    assert _failed(goals_module, report) == ["clean agreement, dynamic defence"]


def test_low_psnr_fails(goals_module) -> None:
    report = _report()
    report["attacks"][0]["psnr_purified_db"] = 34.9
    assert _failed(goals_module, report) == ["clean PSNR, static"]


def test_a_missed_goal_exits_1(goals_module, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(_report(none=(1.0, 0.9, 0.95, 0.7, 0.85))))
    assert goals_module.main([str(path)]) == 1


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"attacks": [_row("none", 1, 1, 1, 1, 1)]}),  # no black-box attacks
        json.dumps(
            {
                "attacks": [
                    {"attack": a, "images": 1, "agreement": {"purified": 1}}
                    for a in ("none", "ssp", "mi-fgsm", "di-fgsm", "ti-dim")
                ]
            }
        ),  # no baselines
    ],
)
def test_an_incomplete_report_exits_2_naming_why(goals_module, tmp_path: Path, content: str, capsys) -> None:
    path = tmp_path / "report.json"
    path.write_text(content)
    assert goals_module.main([str(path)]) == 2
    assert "cannot check the goals" in capsys.readouterr().err


def test_the_header_names_the_noise_level_and_flags_another_one(goals_module, tmp_path: Path, capsys) -> None:
    path = tmp_path / "report.json"
    published = {**_report(), "settings": {"dynamic": {"sigma": 0.05, "eps": 16 / 255, "seed": 0}}}
    path.write_text(json.dumps(published))
    goals_module.main([str(path)])
    header = capsys.readouterr().out.splitlines()[0]
    assert "sigma 0.05, eps 16/255" in header and "not the published" not in header
    path.write_text(json.dumps({**_report(), "settings": {"dynamic": {"sigma": 0.02, "eps": 16 / 255}}}))
    goals_module.main([str(path)])
    header = capsys.readouterr().out.splitlines()[0]
    assert "sigma 0.02" in header and "not the published level" in header
