"""Every command that runs the dynamic defence takes its noise level as --noise-sigma / --noise-eps: a bad
value is refused while parsing, a value that cannot apply is refused before any work, and the level given
reaches the defence each command builds (purify in process and on Ray, eval, serve, export, attack)."""

from __future__ import annotations

import pytest

from nrp_deploy.cli import build_parser, main
from nrp_deploy.cli.common import dynamic_defense
from nrp_deploy.errors import InputError
from nrp_deploy.kernels.philox import PUBLISHED_EPS, PUBLISHED_SIGMA
from nrp_deploy.runtime import DynamicDefense

COMMANDS = {
    "purify": ["purify", "in.png", "-o", "out", "--dynamic"],
    "eval": ["eval", "in.png"],
    "serve": ["serve"],
    "export triton": ["export", "triton", "-o", "repo"],
    "attack pgd": ["attack", "pgd", "in.png", "-o", "out", "--mode", "eot"],
}
LEVEL = ["--noise-sigma", "0.02", "--noise-eps", "0.0314"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("option", ["--noise-sigma", "--noise-eps"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-0.01", "the noise level must be a finite number >= 0, got -0.01"),
        ("nan", "the noise level must be a finite number >= 0, got nan"),
        ("inf", "the noise level must be a finite number >= 0, got inf"),
        ("16/255", "not a number: '16/255'"),
    ],
)
def test_a_bad_level_is_refused_while_parsing(command, option, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*COMMANDS[command], f"{option}={value}"])
    assert exit_info.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_published_level_unless_given(command):
    parser = build_parser()
    assert dynamic_defense(parser.parse_args(COMMANDS[command])) == DynamicDefense()
    assert DynamicDefense() == DynamicDefense(PUBLISHED_SIGMA, PUBLISHED_EPS)
    chosen = dynamic_defense(parser.parse_args([*COMMANDS[command], *LEVEL]), seed=7)
    assert chosen == DynamicDefense(sigma=0.02, eps=0.0314, seed=7)
    only_sigma = dynamic_defense(parser.parse_args([*COMMANDS[command], "--noise-sigma", "0"]))
    assert only_sigma == DynamicDefense(sigma=0.0, eps=PUBLISHED_EPS)


def test_purify_refuses_a_level_without_dynamic_or_with_a_server(tmp_path, capsys):
    base = ["purify", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")]
    assert main([*base, "--noise-eps", "0.03"]) == 2
    assert "--noise-eps set the --dynamic noise; add --dynamic or drop them" in capsys.readouterr().err
    # the published value given explicitly is refused too: a server's level may be another
    server = [*base, "--server", "http://127.0.0.1:9", "--noise-sigma", str(PUBLISHED_SIGMA)]
    for extra in ([], ["--dynamic"]):
        assert main([*server, *extra]) == 2
        err = capsys.readouterr().err
        assert "--noise-sigma: a server's noise level is set when it is served (nrp serve) or exported" in err
    assert not (tmp_path / "out").exists()


def test_purify_hands_the_level_to_the_in_process_and_the_ray_purifier():
    from nrp_deploy.cli.purify import _purifier_settings

    parser = build_parser()
    args = parser.parse_args(["purify", "in.png", "-o", "out", "--dynamic", "--seed", "3", *LEVEL])
    assert _purifier_settings(args).dynamic == DynamicDefense(sigma=0.02, eps=0.0314, seed=3)
    published = parser.parse_args(["purify", "in.png", "-o", "out", "--dynamic"])
    assert _purifier_settings(published).dynamic == DynamicDefense()
    assert _purifier_settings(parser.parse_args(["purify", "in.png", "-o", "out"])).dynamic is None


def test_eval_options_carry_the_level_and_refuse_a_bad_one():
    from nrp_deploy.cli.evaluate import options_from_args
    from nrp_deploy.evaluation.options import EvalOptions

    options = options_from_args(build_parser().parse_args(["eval", "in.png", *LEVEL]))
    assert (options.noise_sigma, options.noise_eps) == (0.02, 0.0314)
    published = options_from_args(build_parser().parse_args(["eval", "in.png"]))
    assert (published.noise_sigma, published.noise_eps) == (PUBLISHED_SIGMA, PUBLISHED_EPS)
    with pytest.raises(InputError, match="noise_sigma must be a finite number >= 0, got -1"):
        EvalOptions(noise_sigma=-1)


def test_serve_starts_the_server_at_the_level_given(monkeypatch):
    import nrp_deploy.serving
    from nrp_deploy.serving import ServeSettings

    served = []
    monkeypatch.setattr(
        nrp_deploy.serving, "serve", lambda settings, *args, **kwargs: served.append(settings)
    )
    main(["serve", "--model", "tiny.onnx", "--dynamic", *LEVEL])
    main(["serve", "--model", "tiny.onnx"])
    assert [(s.noise_sigma, s.noise_eps) for s in served] == [
        (0.02, 0.0314),
        (PUBLISHED_SIGMA, PUBLISHED_EPS),
    ]
    with pytest.raises(InputError, match="noise_eps must be a finite number >= 0"):
        ServeSettings(noise_eps=float("nan"))


def test_attack_pgd_takes_the_level_for_its_eot_modes_only(tmp_path, monkeypatch, capsys):
    import nrp_deploy.attacks.files
    from nrp_deploy.batch import BatchReport

    calls = []

    def pgd_files(*args, **kwargs):
        calls.append(kwargs)
        return BatchReport()

    monkeypatch.setattr(nrp_deploy.attacks.files, "pgd_files", pgd_files)
    base = ["attack", "pgd", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--no-progress"]
    assert main([*base, "--mode", "bpda-eot", *LEVEL]) == 0
    assert main([*base, "--mode", "eot"]) == 0
    assert [(c["sigma"], c["dynamic_eps"]) for c in calls] == [
        (0.02, 0.0314),
        (PUBLISHED_SIGMA, PUBLISHED_EPS),
    ]
    assert main([*base, "--mode", "bpda", "--noise-sigma", "0.02"]) == 2
    assert "--mode bpda sees none: choose an EOT mode or drop them" in capsys.readouterr().err
    assert len(calls) == 2
