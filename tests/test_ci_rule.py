"""The one skip rule (tests/ci_rule.py): a missing prerequisite skips locally and fails under CI=true."""

from __future__ import annotations

import pytest
from ci_rule import unavailable


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_a_missing_prerequisite_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=r"no index here.*CI must run this test"):
        unavailable("no index here")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_a_missing_prerequisite_skips_elsewhere(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no index here"):
        unavailable("no index here")
