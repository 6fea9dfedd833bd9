"""The ``nrp`` command line: argument parsing only, one module per command.

Each sub-command's handler imports its API function lazily (so ``nrp --help`` and the torch-free commands
start fast and work without torch) and maps ``NRPDeployError`` to a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from nrp_deploy import __version__
from nrp_deploy.cli import attack, bench, build, demo, evaluate, export, info, purify, serve, train
from nrp_deploy.errors import NRPDeployError

# In the order `nrp --help` lists them.
COMMANDS = (purify, serve, attack, evaluate, train, demo, bench, export, build, info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrp",
        description="Deploy NRP adversarial purifiers: purify, serve, attack, evaluate, export, build, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"nrp-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: temporary files are removed."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals can be set only there
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return int(args.handler(args) or 0)
    except NRPDeployError as exc:
        print(f"nrp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nrp {args.command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"nrp {args.command}: terminated (SIGTERM); complete outputs were kept", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
