"""Names that moved still work from their old place, each with a DeprecationWarning naming the new one."""

from __future__ import annotations

import importlib

import pytest

# old module, name, new module
MOVED = [
    ("nrp_deploy.export.metadata", "read_metadata", "nrp_deploy.artifacts.metadata"),
    ("nrp_deploy.export.metadata", "PRECISIONS", "nrp_deploy.artifacts.metadata"),
    ("nrp_deploy.export.metadata", "psnr_db", "nrp_deploy.artifacts.metadata"),
    ("nrp_deploy.runtime.backends.base", "PRECISIONS", "nrp_deploy.artifacts.metadata"),
    ("nrp_deploy.runtime.backends.base", "ModelSource", "nrp_deploy.artifacts.sources"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_a_moved_name_still_works_and_warns(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_from_import_of_a_moved_name_warns():
    with pytest.warns(DeprecationWarning, match="nrp_deploy.artifacts.metadata"):
        from nrp_deploy.export.metadata import verify_artifact  # noqa: F401


def test_an_unknown_name_is_still_an_attribute_error():
    module = importlib.import_module("nrp_deploy.export.metadata")
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        module.nothing_here  # noqa: B018
