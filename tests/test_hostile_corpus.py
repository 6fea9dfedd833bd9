"""`nrp purify` over a generated corpus of a few hundred odd and malformed files (tests/hostile_inputs.py).

Invariants, checked file by file: no traceback; every bad file is named; every valid file is written at its
size; exit status 1 because something failed; nothing partial or temporary is left (stale temporaries of
killed runs are removed, those of live runs kept); no existing output is replaced without --overwrite; and
peak memory stays within a bound of a run over an empty folder, although the corpus holds decompression
bombs and headers declaring gigapixel images.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_inputs import EITHER, FAIL, OK, build_corpus, tiny_onnx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Runs the CLI and reports the process's own peak resident memory on its last stderr line.
RUNNER = (
    "import resource, sys\n"
    "from nrp_deploy.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(f'MAXRSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(rc)\n"
)
#: Growth of peak memory over an empty run that the corpus may cause (decoding one 8200 x 8200 bomb
#: would take 67 MB as grey, 200 MB as RGB, and 800 MB as float).
MEMORY_BOUND_MB = 60


def run_purify(inputs: list[Path], out: Path, model: Path, *extra: str) -> tuple[int, str, int]:
    """(exit status, stderr, peak RSS in KB) of `nrp purify` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    argv = ["purify", *map(str, inputs), "-o", str(out), "--model", str(model), "--backend", "onnxruntime"]
    argv += ["--threads", "1", "--no-progress", *extra]
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *argv], capture_output=True, text=True, timeout=60, env=env
    )
    peak = re.search(r"MAXRSS_KB (\d+)", done.stderr)
    return done.returncode, done.stderr, int(peak.group(1)) if peak else -1


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    model = tiny_onnx(base / "tiny.onnx")
    (base / "empty").mkdir()
    _, _, baseline_kb = run_purify([base / "empty"], base / "empty-out", model)
    corpus = build_corpus(base / "corpus", base / "out")
    rc, err, peak_kb = run_purify([corpus.root], base / "out", model)
    return corpus, base / "out", model, rc, err, peak_kb - baseline_kb


def failed_paths(stderr: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^  FAILED (.*?): ", stderr, flags=re.MULTILINE)}


def test_corpus_is_large_and_covers_every_class(corpus_run):
    corpus = corpus_run[0]
    assert len(corpus.expected) >= 300
    assert corpus.count(OK) >= 100 and corpus.count(FAIL) >= 100 and corpus.count(EITHER) >= 50
    tops = {rel.parts[0] for rel in corpus.expected}
    expected_classes = {"valid", "truncated", "wrong_suffix", "exif", "foreign", "garbage", "huge", "names"}
    assert expected_classes | {"collide", "special"} <= tops


def test_every_file_has_its_outcome(corpus_run):
    corpus, out, _, rc, err, _ = corpus_run
    assert rc == 1
    assert "Traceback" not in err
    named = failed_paths(err)
    written = 0
    for rel, expected in corpus.expected.items():
        source = str(corpus.root / rel)
        target = (out / rel).with_suffix(".png")
        if target in corpus.existing:
            assert target.read_bytes() == corpus.existing[target], f"{target} replaced without --overwrite"
            continue
        produced = target.is_file() and not target.is_symlink()
        if produced:
            written += 1
            with Image.open(target) as img:
                assert img.format == "PNG" and img.mode == "RGB", rel
                assert (img.height, img.width) == (expected.size or (16, 16)), rel
        if expected.outcome == OK:
            assert produced and source not in named, f"{rel}: valid but not written ({source in named})"
        elif expected.outcome == FAIL:
            assert source in named and not produced, f"{rel}: bad but not named, or written"
        else:
            assert produced != (source in named), f"{rel}: must be written or named, not both or neither"
    assert f"{written} written, {len(corpus.existing)} skipped (exist)" in err


def test_nothing_temporary_or_partial_is_left(corpus_run):
    corpus, out, *_ = corpus_run
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert sorted(leftovers) == sorted(corpus.live_temporaries)
    assert not any(p.exists() for p in corpus.stale_temporaries)
    for png in out.rglob("*.png"):
        if png.is_file() and png not in corpus.existing:
            with Image.open(png) as img:
                img.load()  # complete files only


def test_peak_memory_is_bounded(corpus_run):
    growth_kb = corpus_run[5]
    assert 0 <= growth_kb < MEMORY_BOUND_MB * 1024, f"peak memory grew by {growth_kb / 1024:.0f} MB"


def test_rerun_keeps_every_output_and_overwrite_replaces_them(corpus_run, tmp_path):
    corpus, out, model, *_ = corpus_run
    before = {p: p.read_bytes() for p in out.rglob("*.png") if p.is_file()}
    rc, err, _ = run_purify([corpus.root], out, model)
    assert rc == 1 and "Traceback" not in err
    assert re.search(r"^0 written, \d+ skipped", err, flags=re.MULTILINE)
    assert {p: p.read_bytes() for p in out.rglob("*.png") if p.is_file()} == before

    existing = next(iter(corpus.existing))
    rc, err, _ = run_purify([corpus.root / "valid" / "png"], out / "valid" / "png", model, "--overwrite")
    assert rc == 0, err
    with Image.open(existing) as img:
        assert img.size == (16, 16)


def test_named_fifo_does_not_block(corpus_run, tmp_path):
    corpus, _, model, *_ = corpus_run
    fifo, valid = corpus.root / "special" / "fifo.png", corpus.root / "names" / "with space1.png"
    rc, err, _ = run_purify([fifo, valid], tmp_path / "out", model)
    assert rc == 1 and f"FAILED {fifo}: not a regular file but a FIFO" in err
    assert (tmp_path / "out" / "with space1.png").is_file()
