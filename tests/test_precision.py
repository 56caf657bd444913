"""Reduced precision: what `auto` picks, refusals, and how close bf16 features are to fp32."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
import torch

from conftest import SMALL_CLIPS, copy_clips, lite_config
from pipeline import precision as precision_module
from pipeline.backbones import load_backbone
from pipeline.encoding import encode_clip
from pipeline.features import extract
from pipeline.precision import resolve_precision, runnable
from pipeline.store import FeatureStore, StoreError
from pipeline.video import read_clip

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native, cpu_auto, expected", [(True, "bf16", "bf16"), (False, "fp32", "fp32")])
def test_auto_picks_bf16_only_where_it_is_native(monkeypatch, native, cpu_auto, expected):
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: native)
    assert resolve_precision("auto", CPU) == cpu_auto
    assert resolve_precision("auto", CUDA) == expected
    assert resolve_precision("auto", CPU, auto_bf16_on_cpu=False) == "fp32"  # training's rule on a CPU
    assert resolve_precision("auto", CUDA, auto_bf16_on_cpu=False) == expected
    assert resolve_precision("fp32", CUDA) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


def test_features_of_a_store_or_run_are_reproduced_at_the_nearest_runnable_precision():
    assert runnable("fp16", CUDA) == "fp16" and runnable("fp16", CPU) == "bf16"
    assert runnable("bf16", CPU) == "bf16" and runnable("fp32", CUDA) == "fp32"


def test_bad_precisions_are_refused():
    with pytest.raises(ValueError, match="fp16 runs on CUDA only"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="one of auto, fp32, bf16"):
        resolve_precision("fp16", CPU, allowed=("auto", "fp32", "bf16"))
    with pytest.raises(ValueError, match="not 'half'"):
        resolve_precision("half", CPU)


def test_bf16_and_channels_last_features_stay_close_to_fp32():
    """Real ImageNet Lite0 on two real clips: the precisions agree to a mean cosine >= 0.99 per frame,
    and channels-last (what `place` sets) changes fp32 features only by rounding."""
    clips = [read_clip(path, 8) for path in SMALL_CLIPS[:2]]
    backbone = load_backbone("efficientnet_lite0", "imagenet")
    with torch.inference_mode():  # the plain NCHW network, as loaded
        plain = torch.cat([backbone.module(backbone.spec.preprocess(torch.from_numpy(c.frames).permute(0, 3, 1, 2)))
                           for c in clips])
    features = {}
    for precision in ("fp32", "bf16"):
        backbone.place(CPU, precision)
        features[precision] = torch.cat([torch.from_numpy(encode_clip(backbone, c, 8)) for c in clips])
    torch.testing.assert_close(features["fp32"], plain, rtol=1e-4, atol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(features["fp32"], features["bf16"], dim=1)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.97, cosine
    assert not torch.equal(features["fp32"], features["bf16"])  # bf16 really ran


def test_the_store_records_its_precision_and_auto_extends_it_at_that_precision(tmp_path, monkeypatch):
    raw = copy_clips(SMALL_CLIPS[:1], tmp_path / "raw")
    store = tmp_path / "f.h5"
    assert extract(lite_config(raw, store, precision="fp32")).precision == "fp32"
    assert FeatureStore(store).settings.precision == "fp32"
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: True)  # auto alone would pick bf16
    copy_clips(SMALL_CLIPS[1:2], raw)
    summary = extract(lite_config(raw, store))
    assert summary.precision == "fp32" and summary.done == [SMALL_CLIPS[1].name]
    with pytest.raises(StoreError, match="precision: 'fp32' here, 'bf16' there"):
        extract(lite_config(raw, store, precision="bf16"))
    assert len(FeatureStore(store).ids()) == 2  # the refused run cost nothing


def test_fp16_on_a_cpu_is_refused_before_anything_is_written(tmp_path):
    raw = copy_clips(SMALL_CLIPS[:1], tmp_path / "raw")
    with pytest.raises(ValueError, match="fp16 runs on CUDA only"):
        extract(lite_config(raw, tmp_path / "f.h5", precision="fp16", device="cpu"))
    assert not (tmp_path / "f.h5").exists()


def test_a_store_made_before_precision_was_recorded_reads_as_fp32(tmp_path):
    raw = copy_clips(SMALL_CLIPS[:1], tmp_path / "raw")
    store = tmp_path / "f.h5"
    extract(lite_config(raw, store, precision="fp32"))
    with h5py.File(store, "a") as f:
        del f.attrs["precision"]
    assert FeatureStore(store).settings.precision == "fp32"
    copy_clips(SMALL_CLIPS[1:2], raw)
    assert extract(lite_config(raw, store, precision="fp32")).done == [SMALL_CLIPS[1].name]


def test_several_decoding_threads_write_the_same_store(tmp_path):
    raw = copy_clips(SMALL_CLIPS, tmp_path / "raw")
    one, three = tmp_path / "one.h5", tmp_path / "three.h5"
    extract(lite_config(raw, one, precision="fp32", workers=1))
    extract(lite_config(raw, three, precision="fp32", workers=3))
    ids = FeatureStore(one).ids()
    assert ids == FeatureStore(three).ids() and len(ids) == 4
    np.testing.assert_array_equal(FeatureStore(one).read_many(ids), FeatureStore(three).read_many(ids))


X86_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
X86_BF16 = "model name\t: Intel(R) Xeon(R)\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_native_bf16_is_read_from_the_cpus_flags():
    assert "avx2" in precision_module.cpu_flags(X86_AVX2)
    assert not precision_module.cpu_flags(X86_AVX2) & precision_module.BF16_FLAGS
    assert precision_module.cpu_flags(X86_BF16) & precision_module.BF16_FLAGS
    assert precision_module.cpu_flags(ARM_BF16) & precision_module.BF16_FLAGS
    assert precision_module.cpu_flags("") == set()
    assert isinstance(precision_module.native_bf16(CPU), bool)


def test_bf16_asked_for_on_a_cpu_that_emulates_it_warns_how_slow(monkeypatch):
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="emulated: VGG16 ran 40x slower than at fp32"):
        assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.warns(UserWarning, match="the features were made at fp16"):
        assert runnable("fp16", CPU) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("auto", CPU) == "fp32"  # auto never picks what is slow
        assert resolve_precision("fp32", CPU) == "fp32"
