"""Feature extractors and the ImageNet classifier: construction, contracts, the shipped weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nrp_deploy.assets import examples_dir
from nrp_deploy.attacks import build_feature_extractor, load_classifier
from nrp_deploy.attacks.backbones import efficientnet_lite
from nrp_deploy.attacks.features import LITE0_STAGE_ENDS, lite_stage_ends
from nrp_deploy.errors import CheckpointError, InputError, ModelNotFoundError
from nrp_deploy.images import read_image

EXAMPLES = examples_dir()
VGG16_CONVS = {
    0: (3, 64),
    2: (64, 64),
    5: (64, 128),
    7: (128, 128),
    10: (128, 256),
    12: (256, 256),
    14: (256, 256),
}


@pytest.fixture(scope="module")
def lite0_features():
    return build_feature_extractor("efficientnet_lite0")


def _fake_vgg16_state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, (cin, cout) in VGG16_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * 0.05
        state[f"features.{index}.bias"] = torch.randn(cout, generator=gen) * 0.05
    state["features.17.weight"] = torch.zeros(512, 256, 3, 3)  # beyond conv3_3: ignored
    state["classifier.0.weight"] = torch.zeros(4, 8)
    return state


def test_lite0_default_layer_is_stage3_at_one_eighth_resolution(lite0_features):
    out = lite0_features(torch.rand(2, 3, 40, 56))
    assert lite0_features.layer == "stage3"
    assert out.shape == (2, 40, 5, 7)


def test_lite0_odd_sizes_use_same_padding():
    stage1 = build_feature_extractor(layer="stage1")
    assert stage1(torch.rand(1, 3, 33, 35)).shape == (1, 16, 17, 18)  # ceil(n / 2), TensorFlow SAME


def test_feature_extractor_is_frozen_and_stays_in_eval_mode(lite0_features):
    assert not any(p.requires_grad for p in lite0_features.parameters())
    parent = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), lite0_features)
    parent.train()
    assert not lite0_features.training
    assert not any(m.training for m in lite0_features.modules())


def test_feature_extractor_normalises_inside(lite0_features):
    # The Lite0 weights expect (255 x - 127) / 128: a mid-grey image is almost zero after normalisation.
    grey = torch.full((1, 3, 8, 8), 127 / 255)
    assert torch.allclose(lite0_features.normalize(grey), torch.zeros_like(grey), atol=1e-6)


def test_unknown_layer_and_network_are_refused():
    with pytest.raises(InputError, match="stage9"):
        build_feature_extractor(layer="stage9")
    with pytest.raises(InputError, match="resnet"):
        build_feature_extractor("resnet50")
    with pytest.raises(InputError, match="relu3_3"):
        build_feature_extractor("vgg16", layer="relu4_3", vgg16_weights="x.pth")


def test_vgg16_without_weights_says_how_to_get_them():
    with pytest.raises(ModelNotFoundError, match="torchvision-format VGG16 state dict"):
        build_feature_extractor("vgg16")


def test_vgg16_loads_torchvision_layout_up_to_relu3_3(tmp_path):
    state = _fake_vgg16_state()
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    features = build_feature_extractor("vgg16", vgg16_weights=path)
    body = features.body
    assert len(body) == 16 and isinstance(body[15], torch.nn.ReLU)
    assert torch.equal(body[14].weight, state["features.14.weight"])
    x = torch.rand(1, 3, 32, 32)
    out = features(x)
    assert out.shape == (1, 256, 8, 8)
    # Reference: the same layers written out by hand with the ImageNet normalisation.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = (x - mean) / std
    for index in sorted(VGG16_CONVS):
        h = torch.relu(
            torch.nn.functional.conv2d(
                h, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1
            )
        )
        if index in (2, 7):
            h = torch.nn.functional.max_pool2d(h, 2)
    assert torch.allclose(out, h, atol=1e-5)


def test_vgg16_refuses_other_state_dicts(tmp_path):
    state = _fake_vgg16_state()
    del state["features.12.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"features\.12\.weight"):
        build_feature_extractor("vgg16", vgg16_weights=path)
    state = _fake_vgg16_state()
    state["features.0.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="VGG16"):
        build_feature_extractor("vgg16", vgg16_weights=path)


def test_stage_table_covers_all_blocks():
    assert LITE0_STAGE_ENDS["stage7"] == 16 and list(LITE0_STAGE_ENDS.values()) == sorted(
        LITE0_STAGE_ENDS.values()
    )
    lite0 = efficientnet_lite("efficientnet_lite0")
    assert lite_stage_ends(lite0) == LITE0_STAGE_ENDS  # read from the network itself


def test_lite2_features_and_classifier_are_built_from_their_wheel():
    # Lite2 is deeper (21 blocks in 7 stages); stage3 sits at 1/8 resolution like Lite0's.
    lite2 = efficientnet_lite("efficientnet_lite2")
    assert list(lite_stage_ends(lite2).values()) == [1, 4, 7, 11, 15, 20, 21]
    features = build_feature_extractor("efficientnet_lite2")
    assert features.layer == "stage3" and features(torch.rand(1, 3, 64, 64)).shape == (1, 48, 8, 8)
    clf = load_classifier("efficientnet_lite2")
    image = read_image(EXAMPLES / "coffee.png")
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div(255)[None]
    with torch.no_grad():
        assert clf(x).argmax(1).item() == 967  # "espresso", as Lite0 says


def test_lite1_classifier_for_training_is_built_from_its_wheel():
    lite1 = efficientnet_lite("efficientnet_lite1")
    assert list(lite_stage_ends(lite1).values()) == [1, 4, 7, 11, 15, 20, 21]  # as Lite2
    clf = load_classifier("efficientnet_lite1")
    image = read_image(EXAMPLES / "coffee.png")
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div(255)[None]
    with torch.no_grad():
        assert clf(x).argmax(1).item() == 967


def test_classifier_is_frozen_and_recognises_the_example_espresso():
    clf = load_classifier()
    assert not clf.training and not any(p.requires_grad for p in clf.parameters())
    image = read_image(EXAMPLES / "coffee.png")
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div(255)[None]
    with torch.no_grad():
        probs = clf(x).softmax(1)[0]
    assert probs.argmax().item() == 967  # ImageNet class "espresso"
    assert probs[967] > 0.5


def test_unknown_classifier_is_refused():
    with pytest.raises(InputError, match="vit"):
        load_classifier("vit")
