"""Check an ``nrp eval`` report against the default purifier's release goals, goal by goal.

The goals a default purifier must meet before it ships (judged classifier and photos it never trained on;
black-box attacks crafted on other networks):

- clean photos: agreement >= 95 % static and >= 90 % with the dynamic defence, PSNR >= 35 dB static;
- every black-box attack: the purifier recovers >= 70 % of the agreement the attack took, and beats the
  better of the blur and JPEG baselines by >= 15 points;
- the dynamic defence at least as robust as the static purifier under every attack.

The dynamic defence counts at its weaker of the two noise draws the report holds (fixed and fresh noise),
so one lucky draw does not pass a goal. The goals are set at the published noise level (sigma 0.05 within
16/255); the header names the level the report ran at and says so when it is another one. Prints one row per goal (measured, goal, met) as Markdown; the
exit status is 0 when every goal is met, 1 when any is not, 2 when the report lacks what a goal needs
(run ``nrp eval ... --threat-model black-box --attacks none --baselines blur,jpeg``).

Usage: python scripts/purifier_goals.py REPORT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

CLEAN_STATIC, CLEAN_DYNAMIC, CLEAN_PSNR_DB = 0.95, 0.90, 35.0
RECOVERED_SHARE, BASELINE_MARGIN = 0.70, 0.15
BLACK_BOX = ("ssp", "mi-fgsm", "di-fgsm", "ti-dim")
BASELINES = ("blur", "jpeg")
DYNAMIC = ("dynamic", "dynamic-fresh")
PUBLISHED_SIGMA, PUBLISHED_EPS = 0.05, 16 / 255


@dataclass(frozen=True)
class Goal:
    name: str
    measured: str
    goal: str
    met: bool


class ReportError(ValueError):
    """The report lacks an attack, defence or figure that a goal needs."""


def _rows(report: dict) -> dict[str, dict]:
    rows = {row["attack"]: row for row in report.get("attacks", [])}
    missing = [a for a in ("none", *BLACK_BOX) if a not in rows]
    if missing:
        raise ReportError(f"the report has no {', '.join(missing)} rows")
    for attack, row in rows.items():
        lacking = [d for d in ("undefended", "purified", *DYNAMIC, *BASELINES) if d not in row["agreement"]]
        if lacking:
            raise ReportError(f"the {attack} row has no agreement for {', '.join(lacking)}")
    return rows


def _pct(rate: float) -> str:
    return f"{100 * rate:.1f} %"


def check(report: dict) -> list[Goal]:
    """Every goal's measured figure and whether it is met."""
    rows = _rows(report)
    clean = rows["none"]["agreement"]
    dynamic_clean = min(clean[d] for d in DYNAMIC)
    psnr = rows["none"].get("psnr_purified_db")
    if psnr is None:
        raise ReportError("the none row has no psnr_purified_db")
    goals = [
        Goal(
            "clean agreement, static", _pct(clean["purified"]), ">= 95 %", clean["purified"] >= CLEAN_STATIC
        ),
        Goal(
            "clean agreement, dynamic defence", _pct(dynamic_clean), ">= 90 %", dynamic_clean >= CLEAN_DYNAMIC
        ),
        Goal("clean PSNR, static", f"{psnr:.2f} dB", ">= 35 dB", psnr >= CLEAN_PSNR_DB),
    ]
    for attack in BLACK_BOX:
        rates = rows[attack]["agreement"]
        taken = 1.0 - rates["undefended"]
        share = (rates["purified"] - rates["undefended"]) / taken if taken > 0 else 1.0
        best_baseline = max(rates[b] for b in BASELINES)
        margin = rates["purified"] - best_baseline
        dynamic = min(rates[d] for d in DYNAMIC)
        goals += [
            Goal(f"{attack}: agreement recovered", _pct(share), ">= 70 %", share >= RECOVERED_SHARE),
            Goal(
                f"{attack}: over the best of blur / JPEG",
                f"{100 * margin:+.1f} points",
                ">= +15 points",
                margin >= BASELINE_MARGIN,
            ),
            Goal(
                f"{attack}: dynamic defence vs static",
                f"{_pct(dynamic)} vs {_pct(rates['purified'])}",
                "dynamic >= static",
                dynamic >= rates["purified"],
            ),
        ]
    return goals


def noise_level(report: dict) -> str:
    """The dynamic defence's level in ``report`` (reports written before it was recorded: the published)."""
    dynamic = report.get("settings", {}).get("dynamic", {})
    sigma, eps = dynamic.get("sigma", PUBLISHED_SIGMA), dynamic.get("eps", PUBLISHED_EPS)
    level = f"dynamic defence at sigma {sigma:g}, eps {eps * 255:.4g}/255"
    if abs(sigma - PUBLISHED_SIGMA) > 1e-9 or abs(eps - PUBLISHED_EPS) > 1e-9:
        level += " (not the published level the goals are set at)"
    return level


def markdown(goals: list[Goal], images: int, level: str) -> str:
    lines = [
        f"Goals on {images} images, {level}:",
        "",
        "| goal | measured | target | met |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {g.name} | {g.measured} | {g.goal} | {'yes' if g.met else '**no**'} |" for g in goals]
    met = sum(g.met for g in goals)
    lines += ["", f"{met} of {len(goals)} goals met."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report.json written by nrp eval --out")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text(encoding="utf-8"))
        goals = check(report)
    except (OSError, json.JSONDecodeError, ReportError, KeyError, TypeError) as exc:
        print(f"{args.report}: cannot check the goals: {exc}", file=sys.stderr)
        return 2
    images = next(row["images"] for row in report["attacks"] if row["attack"] == "none")
    print(markdown(goals, images, noise_level(report)))
    return 0 if all(g.met for g in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
