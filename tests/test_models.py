"""Published checkpoint layouts load strictly into the inferred architecture; foreign files are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nrp_deploy.errors import CheckpointError
from nrp_deploy.models import ModelSpec, build_from_state, detect_spec, read_state_dict

# Every key and shape of the published NRP.pth / NRP_resG.pth, with their constructors and parameter counts.
REFERENCE = Path(__file__).resolve().parent / "data" / "original_checkpoint_keys.json"


def _reference() -> dict:
    return json.loads(REFERENCE.read_text())


def _published_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=gen) * 0.01 for key, shape in _reference()[name]["state_dict"]}


@pytest.fixture(scope="module", params=["NRP", "NRP_resG"])
def published(request):
    return request.param, _published_state(request.param)


def test_published_keys_load_strictly_with_published_param_counts(published):
    name, state = published
    ref = _reference()[name]
    module, spec = build_from_state(state)
    assert spec.architecture == name
    assert spec.config["nf"] == 64 and spec.config["nb"] == 23
    if name == "NRP":
        assert spec.config["gc"] == 32
    assert sum(p.numel() for p in module.parameters()) == ref["num_params"]
    assert list(module.state_dict()) == [k for k, _ in ref["state_dict"]]
    loaded = module.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize(
    "variant", ["plain", "params_ema", "state_dict", "model", "module_prefix", "safetensors"]
)
def test_checkpoint_variants_load(published, variant, tmp_path):
    name, state = published
    if variant == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "ckpt.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "ckpt.pth"
        if variant == "plain":
            obj = state
        elif variant == "module_prefix":
            obj = {f"module.{k}": v for k, v in state.items()}
        else:
            obj = {variant: state, "iter": 1000}
        torch.save(obj, path)
    module, spec = build_from_state(read_state_dict(path))
    assert spec.architecture == name
    assert torch.equal(module.state_dict()["conv_first.weight"], state["conv_first.weight"])


def test_tiny_configs_are_inferred_from_shapes():
    for spec in (ModelSpec("NRP", {"nf": 8, "nb": 2, "gc": 4}), ModelSpec("NRP_resG", {"nf": 6, "nb": 3})):
        assert detect_spec(spec.build().state_dict()) == spec


def test_foreign_checkpoint_is_refused_with_key_names(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, path)
    with pytest.raises(CheckpointError, match=r"missing key 'conv_first.weight'.*fc\.bias"):
        build_from_state(read_state_dict(path))


def test_truncated_nrp_checkpoint_names_missing_and_unexpected_keys():
    state = ModelSpec("NRP_resG", {"nf": 4, "nb": 2}).build().state_dict()
    del state["recon_trunk.1.conv2.bias"]
    state["recon_trunk.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): recon_trunk\.1\.conv2\.bias.*unexpected"):
        build_from_state(state)


def test_shape_mismatch_is_named():
    state = ModelSpec("NRP_resG", {"nf": 4, "nb": 1}).build().state_dict()
    state["recon_trunk.0.conv1.weight"] = torch.zeros(4, 4, 5, 5)
    with pytest.raises(CheckpointError, match=r"shape mismatches.*recon_trunk\.0\.conv1\.weight"):
        build_from_state(state)


def test_unreadable_and_pickled_code_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state_dict(garbage)
    pickled = tmp_path / "module.pth"
    torch.save(ModelSpec("NRP_resG", {"nf": 4, "nb": 1}).build(), pickled)  # a whole pickled module
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        read_state_dict(pickled)


@pytest.mark.parametrize(
    ("architecture", "config"),
    [
        ("NRP", {"nf": 8, "nb": 1, "gc": 8}),
        ("NRP", {"nf": 8, "nb": 2, "gc": 8}),
        ("NRP_resG", {"nf": 8, "nb": 1}),
        ("NRP_resG", {"nf": 8, "nb": 3}),
    ],
)
def test_receptive_field_is_the_measured_reach_of_one_output_pixel(architecture, config):
    """The figure the tile overlap is set from, against an independent oracle: the input pixels whose
    gradient reaches the centre output pixel of a random network span exactly ``receptive_field``."""
    spec = ModelSpec(architecture, config)
    torch.manual_seed(0)
    module = spec.build().double().eval()
    side = 2 * spec.receptive_field + 1
    x = torch.rand(1, 3, side, side, dtype=torch.float64, requires_grad=True)
    module(x)[0, :, side // 2, side // 2].sum().backward()
    reach = x.grad.abs().sum((0, 1)) > 0
    for axis in (0, 1):
        touched = torch.nonzero(reach.any(dim=1 - axis)).flatten()
        assert int(touched.max() - touched.min()) + 1 == spec.receptive_field


def test_spec_figures_match_the_published_architectures():
    nrp, resg = ModelSpec("NRP"), ModelSpec("NRP_resG")
    assert nrp.receptive_field == 695 and resg.receptive_field == 97
    # MACs per pixel = weights of all 3x3 convolutions (every conv runs at full resolution).
    for spec, params in ((nrp, 16_550_275), (resg, 1_702_211)):
        module = spec.build()
        biases = sum(m.bias.numel() for m in module.modules() if isinstance(m, torch.nn.Conv2d))
        assert spec.macs_per_pixel == params - biases


def test_one_record_per_architecture_answers_for_the_spec():
    from nrp_deploy.models.spec import ARCHITECTURES

    for name, record in ARCHITECTURES.items():
        spec = ModelSpec(name, {"nb": 2})
        assert spec.record is record and spec.config == {**record.defaults, "nb": 2}
        assert spec.num_convs == record.convs(spec.config)
        assert spec.macs_per_pixel == record.macs(spec.config)
        state = spec.build().state_dict()
        assert any(key in state for key in record.markers)
        assert detect_spec(state) == spec


def test_one_set_of_published_defence_constants():
    from nrp_deploy.kernels.philox import PUBLISHED_EPS, PUBLISHED_SIGMA
    from nrp_deploy.models.eager import dynamic_input
    from nrp_deploy.runtime import DynamicDefense

    assert (
        (DynamicDefense().sigma, DynamicDefense().eps) == (PUBLISHED_SIGMA, PUBLISHED_EPS) == (0.05, 16 / 255)
    )
    defaults = dynamic_input.__defaults__
    assert defaults is not None and defaults[:2] == (PUBLISHED_SIGMA, PUBLISHED_EPS)
