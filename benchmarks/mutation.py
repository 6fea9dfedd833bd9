"""Targeted mutation testing: plant a known bug in a copy of the package, run the tests that cover that
module, and see whether they notice.

Line coverage says which lines ran; this says which behaviours are asserted. The mutants are hand-written
bugs of the kinds whose silent failure would hurt users most: file safety and no-clobber writes, fidelity
verdicts and their refusal, the serving model's request handling, attack projections and budgets, the
Philox reference, and artifact and engine staleness. Each is applied to a fresh copy of the checkout (the
working tree is never touched) and run against its covering tests with ``-x``; a mutant is *killed* when
they fail, and *survives* when they pass. Every test selection first runs unmutated: a selection that
fails, or skips (the runs set CI=true, so a missing prerequisite fails), is reported, not scored.

Not part of CI (about 8 minutes on two cores). Run it from the checkout:

    python benchmarks/mutation.py                      # all mutants -> benchmarks/results/mutation.{md,json}
    python benchmarks/mutation.py --only serving       # the mutants whose id contains "serving"

The serving mutants need the serving environment (``.venv-serving``, or ``--serving-python``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
COPIED = ("nrp_deploy", "tests", "scripts", "pyproject.toml")
RUN_TIMEOUT_S = 900

SERVING = ("tests/test_serving.py", "-k", "test_serving_suite and test_serve")
FILES = ("tests/test_reliability.py",)
VERDICTS = ("tests/test_export_metadata.py", "tests/test_reliability.py", "tests/test_fidelity_refusal.py")
ATTACKS = ("tests/test_attacks_ssp.py", "tests/test_attacks_pgd.py")
PHILOX = ("tests/test_philox.py",)
ARTIFACT_STALENESS = ("tests/test_export_metadata.py", "tests/test_runtime.py", "tests/test_reliability.py")
ENGINE_STALENESS = ("tests/test_tensorrt_cache.py", "tests/test_tensorrt_backend.py")


@dataclass(frozen=True)
class Mutant:
    """One planted bug: ``original`` (which must occur exactly once in ``path``) becomes ``mutated``."""

    id: str
    path: str
    original: str
    mutated: str
    bug: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "files-clobber",
        "nrp_deploy/fileutil.py",
        "            _move_no_clobber(tmp, target)",
        "            os.replace(tmp, target)",
        "overwrite=False replaces a file that appeared meanwhile",
        FILES,
    ),
    Mutant(
        "files-temp-left",
        "nrp_deploy/fileutil.py",
        "        with contextlib.suppress(FileNotFoundError):\n            os.unlink(tmp)",
        "        pass",
        "a failed write leaves its temporary file behind",
        FILES,
    ),
    Mutant(
        "files-own-temps-removed",
        "nrp_deploy/fileutil.py",
        "    if pid == os.getpid():\n        return True",
        "    if pid == os.getpid():\n        return False",
        "the cleanup removes this process's own temporaries (writes in flight)",
        FILES,
    ),
    Mutant(
        "verdict-lenient-threshold",
        "nrp_deploy/artifacts/metadata.py",
        "fidelity.psnr_db >= min_psnr_db",
        "fidelity.psnr_db >= min_psnr_db - 20.0",
        "the verdict passes artifacts 20 dB below the threshold",
        VERDICTS,
    ),
    Mutant(
        "verdict-finite-unchecked",
        "nrp_deploy/artifacts/metadata.py",
        "passed = math.isfinite(fidelity.max_abs) and fidelity.psnr_db >= min_psnr_db",
        "passed = fidelity.psnr_db >= min_psnr_db",
        "the verdict no longer requires a finite max error",
        VERDICTS,
    ),
    Mutant(
        "verdict-refusal-inverted",
        "nrp_deploy/artifacts/metadata.py",
        "    if not allow_failed:\n        raise FidelityError(",
        "    if allow_failed:\n        raise FidelityError(",
        "a FAILed artifact is used without allow_failed",
        VERDICTS,
    ),
    Mutant(
        "verdict-cached-unchecked",
        "nrp_deploy/runtime/on_demand.py",
        "        check_verdict(found, read_metadata(found).verdict, source.allow_failed)\n",
        "",
        "a cached artifact's FAIL verdict is not checked",
        VERDICTS,
    ),
    Mutant(
        "verdict-wrong-reference",
        "nrp_deploy/export/fidelity.py",
        "        expected = reference(torch.from_numpy(batch).to(device)).cpu().numpy()",
        "        expected = run_session(session, batch)",
        "fidelity is measured against the artifact itself, not FP32 torch",
        VERDICTS,
    ),
    Mutant(
        "verdict-nan-dropped",
        "nrp_deploy/export/fidelity.py",
        'worst if np.isfinite(worst) else float("inf")',
        "float(np.nanmax(diff)) if diff.size else 0.0",
        "NaN outputs drop out of the max error",
        VERDICTS,
    ),
    Mutant(
        "artifact-sha-unchecked",
        "nrp_deploy/artifacts/metadata.py",
        "    if actual != metadata.artifact_sha256:",
        "    if actual != metadata.artifact_sha256 and not metadata.artifact_sha256:",
        "an artifact edited after export keeps its recorded verdict",
        ARTIFACT_STALENESS,
    ),
    Mutant(
        "artifact-cache-unverified",
        "nrp_deploy/artifacts/cache.py",
        "            metadata = verify_artifact(path)",
        '            metadata = verify_artifact.__globals__["read_metadata"](path)',
        "a cached artifact whose bytes changed is used",
        ARTIFACT_STALENESS,
    ),
    Mutant(
        "engine-onnx-change-ignored",
        "nrp_deploy/tensorrt/engine.py",
        "    if onnx_sha256 is not None and onnx_sha256 != metadata.onnx_sha256:",
        "    if onnx_sha256 is None and onnx_sha256 != metadata.onnx_sha256:",
        "an engine built from an older ONNX is not rebuilt",
        ENGINE_STALENESS,
    ),
    Mutant(
        "engine-platform-ignored",
        "nrp_deploy/tensorrt/engine.py",
        "    if metadata.platform != env.platform:",
        "    if metadata.platform != env.platform and metadata.version_compatible:",
        "an engine built on another platform runs",
        ENGINE_STALENESS,
    ),
    Mutant(
        "attack-ball-twice",
        "nrp_deploy/attacks/ssp.py",
        "torch.min(torch.max(adversarial, clean - eps), clean + eps)",
        "torch.min(torch.max(adversarial, clean - 2 * eps), clean + 2 * eps)",
        "the projection allows twice the L-inf budget",
        ATTACKS,
    ),
    Mutant(
        "attack-no-range-clamp",
        "nrp_deploy/attacks/ssp.py",
        "    return torch.clamp(torch.min(torch.max(adversarial, clean - eps), clean + eps), 0.0, 1.0)",
        "    return torch.min(torch.max(adversarial, clean - eps), clean + eps)",
        "adversarial images leave the [0, 1] range",
        ATTACKS,
    ),
    Mutant(
        "attack-zero-budget",
        "nrp_deploy/attacks/ssp.py",
        "    if not eps > 0 or not step > 0:",
        "    if eps < 0 or step < 0:",
        "a zero budget or step is accepted",
        ATTACKS,
    ),
    Mutant(
        "attack-pgd-direction",
        "nrp_deploy/attacks/pgd.py",
        "project(adversarial + direction * step * grad.sign(), clean, eps)",
        "project(adversarial + step * grad.sign(), clean, eps)",
        "targeted PGD climbs the loss instead of descending it",
        ATTACKS,
    ),
    Mutant(
        "philox-nine-rounds",
        "nrp_deploy/kernels/philox.py",
        "    for i in range(10):",
        "    for i in range(9):",
        "nine Philox rounds instead of ten",
        PHILOX,
    ),
    Mutant(
        "philox-key-bump",
        "nrp_deploy/kernels/philox.py",
        "            k1 = (k1 + W1) & _MASK32",
        "            k1 = (k1 + W0) & _MASK32",
        "the second key word is bumped by the first Weyl constant",
        PHILOX,
    ),
    Mutant(
        "serving-shared-error",
        "nrp_deploy/serving/triton_models/purifier_model.py",
        "            return [_error(exc) for _ in group]",
        "            return [_error(exc)] * len(group)",
        "one error response object repeated for every request of a failed batch",
        SERVING,
    ),
    Mutant(
        "serving-bad-request-fails-batch",
        "nrp_deploy/serving/triton_models/purifier_model.py",
        "                responses[k] = _error(exc)\n                continue",
        "                return [_error(exc) for _ in requests]",
        "one bad request fails its whole dynamic batch",
        SERVING,
    ),
    Mutant(
        "serving-start-index-dropped",
        "nrp_deploy/serving/triton_models/purifier_model.py",
        "self._respond([(k, images)], dynamic, options.start_index)",
        "self._respond([(k, images)], dynamic)",
        "a request's start_index is ignored (its noise does not replay)",
        SERVING,
    ),
]

#: Mutants that survived an earlier run, and the test added to kill them (the report lists them).
CLOSED = {
    "verdict-finite-unchecked": "tests/test_export_metadata.py::test_verdict_lines: a verdict with a "
    "non-finite max error FAILs whatever its PSNR (measured fidelities carry -inf PSNR with it, so only a "
    "direct check of judge() sees the difference)",
    "artifact-cache-unverified": "tests/test_reliability.py::"
    "test_cached_artifact_changed_after_export_is_not_used_but_exported_again (no test changed a cached "
    "artifact's bytes)",
}


@dataclass
class Outcome:
    id: str
    path: str
    bug: str
    tests: str
    result: str  # killed | survived | error
    seconds: float
    detail: str


def _copy_checkout(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)


def _pytest(copy: Path, tests: tuple[str, ...], env: dict[str, str]) -> tuple[int, str, float]:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return -1, "timed out", time.monotonic() - started
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else proc.stderr[-300:], time.monotonic() - started


def _mutate(copy: Path, mutant: Mutant) -> str:
    path = copy / mutant.path
    text = path.read_text(encoding="utf-8")
    if text.count(mutant.original) != 1:
        raise SystemExit(
            f"{mutant.id}: the original text occurs {text.count(mutant.original)} times in {path}"
        )
    path.write_text(text.replace(mutant.original, mutant.mutated), encoding="utf-8")
    return text


def run(mutants: list[Mutant], serving_python: Path) -> tuple[list[Outcome], dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="nrp-mutation-") as tmp:
        copy = Path(tmp) / "checkout"
        _copy_checkout(copy)
        env = {
            **os.environ,
            "PYTHONPATH": str(copy),
            "CI": "true",
            "NRP_SERVING_PYTHON": str(serving_python),
            "LEAD_QUIET": "1",
        }
        baselines: dict[str, str] = {}
        for tests in dict.fromkeys(m.tests for m in mutants):
            code, summary, seconds = _pytest(copy, tests, env)
            baselines[" ".join(tests)] = f"rc {code} in {seconds:.0f} s: {summary}"
            print(f"baseline {' '.join(tests)}: rc {code} ({seconds:.0f} s) {summary}", flush=True)
        outcomes = []
        for mutant in mutants:
            selection = " ".join(mutant.tests)
            if not baselines[selection].startswith("rc 0 "):
                result, summary, seconds = "error", "the unmutated selection does not pass", 0.0
            else:
                original = _mutate(copy, mutant)
                try:
                    code, summary, seconds = _pytest(copy, mutant.tests, env)
                finally:
                    (copy / mutant.path).write_text(original, encoding="utf-8")
                result = {0: "survived", 1: "killed"}.get(code, "error")
            outcomes.append(Outcome(mutant.id, mutant.path, mutant.bug, selection, result, seconds, summary))
            print(f"{mutant.id}: {result} ({seconds:.0f} s) {summary}", flush=True)
    return outcomes, baselines


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    model = fields.get("Model name", platform.processor() or "unknown CPU").strip()
    if "CPU family" in fields and "Model" in fields:  # family 25 (19h) is Zen 3 / Zen 4
        model += f" (family {fields['CPU family'].strip()}, model {fields['Model'].strip()})"
    return (
        f"{model}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, {platform.platform()}"
    )


def write_report(outcomes: list[Outcome], baselines: dict[str, str], stem: Path) -> None:
    killed = [o for o in outcomes if o.result == "killed"]
    survivors = [o for o in outcomes if o.result == "survived"]
    errors = [o for o in outcomes if o.result == "error"]
    doc = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tried": len(outcomes),
        "killed": len(killed),
        "survived": len(survivors),
        "errors": len(errors),
        "baselines": baselines,
        "mutants": [asdict(o) for o in outcomes],
    }
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Mutation testing: planted bugs against the tests that cover their module",
        "",
        f"Machine: {doc['machine']}. Run: {doc['date']}. Reproduce: `python benchmarks/mutation.py`.",
        "",
        f"**{len(outcomes)} mutants tried, {len(killed)} killed, {len(survivors)} survived, "
        f"{len(errors)} errors.**",
        "",
        "| mutant | module | planted bug | tests | result | s |",
        "| --- | --- | --- | --- | --- | ---: |",
    ]
    lines += [
        f"| {o.id} | `{o.path}` | {o.bug} | `{o.tests}` | {o.result} | {o.seconds:.0f} |" for o in outcomes
    ]
    lines += ["", "Survivors:", ""]
    lines += [f"- {o.id}: {o.bug} (`{o.path}`); the tests still passed: {o.detail}" for o in survivors] or [
        "- none"
    ]
    lines += ["", "Survivors of earlier runs, now killed by:", ""]
    lines += [f"- {mutant}: {test}" for mutant, test in CLOSED.items()]
    lines += ["", "Unmutated test selections (each must pass before its mutants count):", ""]
    lines += [f"- `{selection}`: {summary}" for selection, summary in baselines.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the mutants whose id contains this text")
    parser.add_argument(
        "--serving-python",
        type=Path,
        default=Path(os.environ.get("NRP_SERVING_PYTHON", REPO / ".venv-serving" / "bin" / "python")),
        help="interpreter of the serving environment (default: $NRP_SERVING_PYTHON, else .venv-serving)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "mutation", help="report stem (.md and .json)")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.only in m.id]
    outcomes, baselines = run(chosen, args.serving_python)
    write_report(outcomes, baselines, args.out)
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0 if all(o.result == "killed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
