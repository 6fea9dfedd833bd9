"""Evaluation outputs: the terminal / Markdown tables, the JSON report and one picture grid per attack.

The main table has one row per defence (none, the purifier, the dynamic defence with fixed and with fresh
noise, the baselines): its clean agreement and PSNR, then each threat model's attacks and its worst case,
with the points of agreement the defence recovers over no defence and the share of the lost agreement
that is. Three more read the same records other ways: per attack (agreement behind each defence, target
hits, the purified adversary's fidelity), each defence's fidelity on clean images, and each image's class
per attack and defence.

Classes are shown as their ImageNet name and index, ``tabby cat (281)`` (``nrp_deploy.assets.class_label``).
The grid shows, per image, clean | adversarial | purified | amplified difference (adversarial - clean,
scaled so that -eps..+eps spans black..white around mid-grey), with the classifier's class under each
picture and whether it agrees with the clean prediction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nrp_deploy.assets import class_label
from nrp_deploy.evaluation.robustness import DEFENCES, AttackResult, EvalReport
from nrp_deploy.evaluation.threats import CATALOGUE
from nrp_deploy.fileutil import atomic_output, write_bytes_atomic, write_json_atomic

_TILE = 224  # pictures are scaled to this height in the grid
_GAP = 6
_LINE = 15  # one caption line at the caption font's size
_CAPTION = 2 * _LINE + 4
_HEADER = 44


def format_table(report: EvalReport) -> str:
    """A Markdown table (readable as plain text), one row per attack: agreement with the clean prediction
    behind each defence, target hits of a targeted PGD, the purified adversary's fidelity, the time."""
    defences = report.defences
    targeted = any(r.target_hits("undefended") is not None for r in report.results)
    head = ["attack", "threat model", *(f"agree {d}" for d in defences)]
    if targeted:
        head += [f"target hit {d}" for d in DEFENCES]
    head += ["PSNR purified", "SSIM purified", "PSNR adv", "time"]
    rows = [head, ["---"] * len(head)]
    for result in report.results:
        n = len(result.records)
        row = [result.name, CATALOGUE[result.name].threat_model or "clean"]
        row += [_fraction(result.agreement(d), n) for d in defences]
        if targeted:
            hits = [result.target_hits(d) for d in DEFENCES]
            row += ["-" if h is None else _fraction(h, n) for h in hits]
        row += [
            _number(result.mean("psnr_purified"), "{:.2f} dB"),
            _number(result.mean("ssim_purified"), "{:.4f}"),
            _number(result.mean("psnr_adversarial"), "{:.2f} dB"),
            f"{result.seconds:.1f} s",
        ]
        rows.append(row)
    s = report.settings
    title = (
        f"per attack: {s['images']} images; defence: {s['defence']}; target {s['classifier']}; "
        f"local copy {s['attack_model']}; PGD {s['pgd']}; eps {_levels(s['eps'])}; iterations "
        f"{s['iterations'] or 'as published'}; {_noise_level(s)}"
    )
    failed = [f"failed: {f}: {e}" for f, e in report.failed]
    return "\n".join([title, "", *_markdown_rows(rows), *failed])


def format_defence_table(report: EvalReport) -> str:
    """The report's main table: one row per defence; its clean agreement and PSNR (from the ``none``
    attack), then per threat model each attack's agreement, the worst case (an image counts only if it
    keeps its class under every attack of the threat model) and what the defence recovers of it over no
    defence: points of agreement, and the share of the agreement the attacks took."""
    if not report.results:
        return ""
    clean = next((r for r in report.results if r.name == "none"), None)
    summaries = {t.name: t for t in report.threat_models()}
    groups: list[tuple[str | None, list[AttackResult]]] = []
    for result in report.results:
        if result.name == "none":
            continue
        model = CATALOGUE[result.name].threat_model
        if groups and groups[-1][0] == model:
            groups[-1][1].append(result)
        else:
            groups.append((model, [result]))
    head = ["defence"]
    if clean is not None:
        head += ["clean agree", "PSNR"]
    for model, results in groups:
        head += [r.name for r in results]
        if model in summaries:
            head += [f"{model} worst", "recovered"]
    rows = [head, ["---"] * len(head)]
    for defence in report.defences:
        row = [defence]
        if clean is not None:
            row += [
                _fraction(clean.agreement(defence), len(clean.records)),
                _number(clean.mean(f"psnr_{defence}"), "{:.2f} dB"),
            ]
        for model, results in groups:
            for result in results:
                cell = _fraction(result.agreement(defence), len(result.records), short=True)
                hits = result.target_hits(defence)
                row.append(cell if hits is None else f"{cell}, hit {round(hits * len(result.records))}")
            if model in summaries:
                summary = summaries[model]
                row.append(_fraction(summary.worst[defence], summary.images))
                row.append(_recovered(summary, defence))
        rows.append(row)
    s = report.settings
    sources = ", ".join(s.get("sources") or []) or "-"
    title = (
        f"{s['images']} images; target {s['classifier']}; sources {sources}; SSP on {s.get('ssp_features')}; "
        f"PGD {s['pgd']}; eps {_levels(s['eps'])}; iterations {s['iterations'] or 'as published'}; "
        f"EOT {s['eot_samples']} draws; {_noise_level(s)}"
    )
    return "\n".join([title, "", *_markdown_rows(rows)])


def format_fidelity_table(report: EvalReport) -> str:
    """One row per defence: what it does to clean images (PSNR, SSIM, mean CIEDE2000, about 1 being just
    noticeable, and the mean shift per R, G, B channel in 0..255 units). Empty without the ``none`` attack."""
    clean = next((r for r in report.results if r.name == "none"), None)
    if clean is None:
        return ""
    head = ["defence", "clean agree", "PSNR", "SSIM", "CIEDE2000", "RGB shift"]
    rows = [head, ["---"] * len(head)]
    n = len(clean.records)
    for defence in clean.defences:
        shift = clean.mean_shift(defence)
        rows.append(
            [
                defence,
                _fraction(clean.agreement(defence), n),
                _number(clean.mean(f"psnr_{defence}"), "{:.2f} dB"),
                _number(clean.mean(f"ssim_{defence}"), "{:.4f}"),
                _number(clean.mean(f"delta_e_{defence}"), "{:.2f}"),
                "-" if shift is None else " ".join(f"{v:+.1f}" for v in shift),
            ]
        )
    return "\n".join(["fidelity on the clean images:", "", *_markdown_rows(rows)])


def _recovered(summary, defence: str) -> str:
    if defence == "undefended":
        return "-"
    points, share = summary.recovered(defence)
    return f"{points:+.0f} pt" + ("" if share is None else f", {100 * share:.0f}%")


def _noise_level(settings: dict) -> str:
    """The dynamic defence's noise level as the tables' titles name it: ``dynamic noise sigma 0.05, eps
    16/255`` (the dynamic rows run it, the EOT attacks average over it)."""
    dynamic = settings["dynamic"]
    return f"dynamic noise sigma {dynamic['sigma']:.4g}, eps {_levels(dynamic['eps'])}"


def _levels(eps: float) -> str:
    levels = eps * 255
    return f"{levels:.0f}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:.4g}"


def _markdown_rows(rows: list[list[str]]) -> list[str]:
    """Markdown table lines with every column padded to its widest cell (readable as plain text too)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) + " |" for r in rows]


def format_predictions(report: EvalReport) -> str:
    """Per attack, a Markdown table of each image's class: clean, under attack, behind each defence."""
    sections = []
    for result in report.results:
        targeted = bool(result.records) and result.records[0]["target"] is not None
        head = ["image", "clean", *result.defences, *(["target"] if targeted else [])]
        rows = [head, ["---"] * len(head)]
        for record in result.records:
            cells = [record["clean"], *(record[d] for d in result.defences)]
            marks = ["", *(" =" if record[d] == record["clean"] else " x" for d in result.defences)]
            row = [record["file"], *(class_label(c) + m for c, m in zip(cells, marks, strict=True))]
            rows.append(row + ([class_label(record["target"])] if targeted else []))
        title = f"{result.name} (= agrees with the clean class, x differs):"
        sections.append("\n".join([title, "", *_markdown_rows(rows)]))
    return "\n\n".join(sections)


def _fraction(value: float, n: int, short: bool = False) -> str:
    if short:
        return f"{round(value * n)}/{n}"
    return f"{round(value * n)}/{n} ({100 * value:.0f}%)"


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def write_report(report: EvalReport, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``report.json``, ``report.md`` (every table) and ``grid_<attack>.png`` into ``out_dir``;
    return the paths."""
    out = Path(out_dir)
    json_path, table_path = out / "report.json", out / "report.md"
    write_json_atomic(json_path, report.to_dict())
    tables = "\n\n".join(
        t
        for t in (
            format_defence_table(report),
            format_table(report),
            format_fidelity_table(report),
            f"## Classes per image\n\n{format_predictions(report)}\n",
        )
        if t
    )
    write_bytes_atomic(table_path, tables.encode("utf-8"))
    written = [json_path, table_path]
    for result in report.results:
        if result.examples:
            path = out / f"grid_{result.name}.png"
            with atomic_output(path) as fh:
                render_grid(result).save(fh, format="PNG")
            written.append(path)
    return written


def render_grid(result: AttackResult) -> Image.Image:
    """clean | adversarial | purified | amplified difference, one row per kept example."""
    font = _font(14)
    rows = []
    for ex in result.examples:
        diff = ex.adversarial.astype(np.float32) - ex.clean.astype(np.float32)
        scale = 127.5 / (result.eps * 255.0) if result.eps > 0 else 1.0
        amplified = np.clip(np.rint(127.5 + diff * scale), 0, 255).astype(np.uint8)
        mark = {d: "=" if ex.predictions[d] == ex.predictions["clean"] else "x" for d in DEFENCES}
        label = {k: class_label(v) for k, v in ex.predictions.items()}
        tiles = [
            (ex.clean, [ex.name, label["clean"]]),
            (ex.adversarial, [f"undefended {mark['undefended']}", label["undefended"]]),
            (
                ex.purified,
                [
                    f"purified {mark['purified']} {label['purified']}",
                    f"dynamic {mark['dynamic']} {label['dynamic']}",
                ],
            ),
            (amplified, [f"adv - clean, +-{result.eps * 255:.0f}/255", "= black..white"]),
        ]
        rows.append([(_scaled(image), caption) for image, caption in tiles])
    col_width = max(tile.width for row in rows for tile, _ in row)
    width = 4 * col_width + 5 * _GAP
    height = _HEADER + sum(max(t.height for t, _ in row) + _CAPTION + _GAP for row in rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    titles = ["clean", "adversarial", "purified", "amplified difference"]
    draw.text(
        (_GAP, 4),
        f"attack: {result.name}   (= agrees with the clean class, x differs)",
        fill="black",
        font=font,
    )
    for c, title in enumerate(titles):
        draw.text((_GAP + c * (col_width + _GAP), 24), title, fill="black", font=font)
    y = _HEADER
    small = _font(12)
    for row in rows:
        for c, (tile, caption) in enumerate(row):
            x = _GAP + c * (col_width + _GAP)
            canvas.paste(tile, (x, y))
            for i, line in enumerate(caption):
                text = _fitted(draw, line, small, col_width)
                draw.text((x, y + tile.height + 2 + i * _LINE), text, fill="black", font=small)
        y += max(t.height for t, _ in row) + _CAPTION + _GAP
    return canvas


def _fitted(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int
) -> str:
    """``text``, cut short with an ellipsis where it would run into the next column."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _scaled(image: np.ndarray) -> Image.Image:
    picture = Image.fromarray(image, mode="RGB")
    if picture.height != _TILE:
        width = max(1, round(picture.width * _TILE / picture.height))
        resample = Image.Resampling.NEAREST if picture.height < _TILE else Image.Resampling.LANCZOS
        picture = picture.resize((width, _TILE), resample)
    return picture


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()
