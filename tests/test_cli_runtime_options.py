"""Every command that runs a purifier takes the same --backend / --precision choices, from the registry."""

from __future__ import annotations

import pytest

from nrp_deploy.artifacts.metadata import PRECISIONS
from nrp_deploy.cli import build_parser
from nrp_deploy.runtime import BACKENDS

COMMANDS = {
    "purify": ["purify", "in.png", "-o", "out"],
    "serve": ["serve"],
    "eval": ["eval", "in.png"],
    "demo": ["demo"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_every_registered_backend_is_accepted(command: str, backend: str) -> None:
    args = build_parser().parse_args([*COMMANDS[command], "--backend", backend])
    assert args.backend == backend


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_backend_is_refused_by_name(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*COMMANDS[command], "--backend", "tensorflow"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tensorflow'" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "default"), [("purify", "auto"), ("serve", "auto"), ("eval", None)])
def test_precision_choices_and_defaults(command: str, default: str | None) -> None:
    parser = build_parser()
    assert parser.parse_args(COMMANDS[command]).precision == default
    for precision in ("auto", *PRECISIONS):
        assert parser.parse_args([*COMMANDS[command], "--precision", precision]).precision == precision
    with pytest.raises(SystemExit):
        parser.parse_args([*COMMANDS[command], "--precision", "fp64"])


def test_demo_takes_no_precision() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--precision", "fp32"])
