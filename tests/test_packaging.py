"""What the wheel carries, checked from the source tree (scripts/check_wheel.sh builds and installs it in CI).

Every non-Python file inside the package must be named by setup.py's ``package_data``, or a wheel would
ship without it; the version has one source; the packaged class names are complete.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

import nrp_deploy
from nrp_deploy.assets import class_label, imagenet_class_names
from nrp_deploy.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _setup_keyword(name: str):
    """The literal value of a keyword argument of ``setup(...)`` in setup.py, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for keyword in node.keywords:
                if keyword.arg == name:
                    return ast.literal_eval(keyword.value)
    raise AssertionError(f"setup.py passes no {name}=")


def test_every_data_file_of_the_package_is_in_package_data():
    package_data = _setup_keyword("package_data")
    missing = []
    for path in (ROOT / "nrp_deploy").rglob("*"):
        if not path.is_file() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(ROOT)
        covered = False
        for package, patterns in package_data.items():
            folder = Path(*package.split("."))
            if folder in relative.parents:
                inside = relative.relative_to(folder).as_posix()
                covered |= any(fnmatch.fnmatchcase(inside, pattern) for pattern in patterns)
        if not covered:
            missing.append(relative.as_posix())
    assert missing == []
    assert (ROOT / "nrp_deploy" / "py.typed").is_file()


def test_nrp_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"nrp-deploy {nrp_deploy.__version__}"
    assert "version=VERSION" in (ROOT / "setup.py").read_text(encoding="utf-8")  # read from __init__.py


def test_imagenet_class_names_are_complete_and_labelled():
    names = imagenet_class_names()
    assert len(names) == len(set(names)) == 1000 and all(n and n == n.strip() for n in names)
    assert class_label(281) == "tabby cat (281)"
    assert class_label(967) == "espresso (967)"
    assert class_label(-1) == "-1" and class_label(1000) == "1000"
