"""FP16 / INT8 export options: one dataclass each, also reachable through their names as keywords."""

from __future__ import annotations

import pytest

from nrp_deploy.errors import ExportError
from nrp_deploy.export.calibration import CalibrationOptions, options_from_keywords
from nrp_deploy.export.fp16 import Fp16Options
from nrp_deploy.export.int8 import Int8Options


def test_keywords_build_the_same_options_as_the_dataclasses():
    keywords = {"crop_size": 64, "count": 3, "keep_io_types": False, "opset": 19}
    made = options_from_keywords(Fp16Options, None, "photos/", dict(keywords))
    assert made == Fp16Options(
        CalibrationOptions("photos/", crop_size=64, count=3), keep_io_types=False, opset=19
    )
    int8 = options_from_keywords(Int8Options, None, None, {"method": "ort", "seed": 5, "target_cpu": "vnni"})
    assert int8 == Int8Options(method="ort", calibration=CalibrationOptions(seed=5), target_cpu="vnni")
    assert options_from_keywords(Int8Options, None, None, {}) == Int8Options()


def test_options_and_keywords_together_are_refused_and_unknown_names_are_type_errors():
    with pytest.raises(ExportError, match="not both"):
        options_from_keywords(Fp16Options, Fp16Options(), None, {"crop_size": 64})
    with pytest.raises(ExportError, match="not both"):
        options_from_keywords(Fp16Options, Fp16Options(), "photos/", {})
    with pytest.raises(TypeError, match="crop_sise"):
        options_from_keywords(Fp16Options, None, None, {"crop_sise": 64})
