"""On a CUDA GPU: the captured training step against the eager one, exact resume, no cuDNN warning, and NVDEC
decoding every frame as the CPU does.

Marked `gpu`: skipped without CUDA, run by `../shared/gpu/check.sh` (`pytest -m gpu`)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import CLIPS_DIR, REAL_CLIPS, SMALL_CLIPS, copy_clips, write_h264_clip, write_index_video
from pipeline import training, video
from pipeline.checkpoint import load_checkpoint
from pipeline.config import ExtractConfig, TrainConfig
from pipeline.features import extract
from pipeline.model import S2VT, S2VTConfig
from pipeline.store import FeatureStore
from pipeline.train_step import TrainStep
from pipeline.training import train
from pipeline.video import read_clip

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda") if torch.cuda.is_available() else None
VARIANTS = {"s2vt": {}, "luong": {"attention": "luong"}, "bahdanau": {"attention": "bahdanau"},
            "bidirectional-bahdanau": {"bidirectional": True, "attention": "bahdanau"}, "motion": {"motion": 4.0}}


def _batches(n: int, batch: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for size in [batch] * n + [batch // 2]:  # full batches, then a smaller last one (run eagerly)
        tokens = torch.randint(3, 50, (size, 12), generator=generator)
        tokens[:, 0], tokens[:, -1] = 1, 2
        out.append((tokens.to(CUDA), torch.randn(size, 10, 24, generator=generator).to(CUDA)))
    return out


def _train(model: S2VT, data: list, graphs: bool, teacher_forcing: float, precision: str) -> list[float]:
    torch.manual_seed(0)
    torch.cuda.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = TrainStep(model, optimizer, CUDA, precision, 0, 5.0, len(data[0][0]), cuda_graphs=graphs)
    losses = [step(tokens, features, teacher_forcing).item() for tokens, features in data]
    assert bool(step.graphs) == graphs, "the captured path must have run"
    return losses


def _twins(cfg: S2VTConfig) -> tuple[S2VT, S2VT]:
    """Two equal models, each made on the GPU as training makes it (a deep copy would leave its LSTM
    weights outside cuDNN's one flat buffer, and cuDNN would warn about that)."""
    twins = []
    for _ in range(2):
        torch.manual_seed(0)
        twins.append(S2VT(cfg).to(CUDA))
    return twins[0], twins[1]


@pytest.mark.parametrize("teacher_forcing", [1.0, 0.7])
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_captured_step_gives_the_eager_steps_losses_without_a_warning(variant, teacher_forcing):
    torch.manual_seed(0)
    cfg = S2VTConfig(feature_dim=24, vocab_size=50, pad_id=0, bos_id=1, eos_id=2, max_len=10, hidden=32, embed=16,
                     dropout=0.3, **VARIANTS[variant])
    eager, captured = _twins(cfg)
    data = _batches(6, 16, torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected = _train(eager, data, False, teacher_forcing, "fp32")
        got = _train(captured, data, True, teacher_forcing, "fp32")
    assert not [str(w.message) for w in caught], "no warning (cuDNN's weight compaction above all)"
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(eager.state_dict().items(), captured.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_bf16_captured_steps_stay_close_to_eager_bf16():
    torch.manual_seed(0)
    cfg = S2VTConfig(feature_dim=24, vocab_size=50, pad_id=0, bos_id=1, eos_id=2, max_len=10, hidden=32, embed=16)
    eager, captured = _twins(cfg)
    data = _batches(6, 16, torch.Generator().manual_seed(2))
    expected = _train(eager, data, False, 0.7, "bf16")
    got = _train(captured, data, True, 0.7, "bf16")
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=2e-2, atol=1e-3)


def test_an_interrupted_cuda_run_resumes_to_the_same_weights(clip_features, tmp_path, monkeypatch):
    """Ctrl-C in the third epoch, then the same command: the captured steps (teacher forcing, then
    sampling) end where an uninterrupted run ends."""
    cfg = dict(features=str(clip_features), labels=str(CLIPS_DIR / "labels.json"), hidden=32, embed=32,
               batch_size=32, captions_per_epoch="all", val_fraction=0.25, device="cuda", epochs=5)
    train(TrainConfig(run_dir=str(tmp_path / "whole"), **cfg))
    epoch_of_run = training.train_one_epoch
    started = []

    def interrupted_in_the_third(*args, **kwargs):
        started.append(1)
        if len(started) == 3:
            raise KeyboardInterrupt
        return epoch_of_run(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", interrupted_in_the_third)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(run_dir=str(tmp_path / "resumed"), **cfg))
    monkeypatch.setattr(training, "train_one_epoch", epoch_of_run)
    train(TrainConfig(run_dir=str(tmp_path / "resumed"), **cfg))
    whole, resumed = (load_checkpoint(tmp_path / run / "last.pt") for run in ("whole", "resumed"))
    assert [r["train_loss"] for r in whole["history"]] == [r["train_loss"] for r in resumed["history"]]
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), f"{name} differs after resume"


def _luma_planes(path, gpu: bool) -> list[bytes]:
    """The luma plane of every frame of a full decode, as bytes: through NVDEC, or on the CPU."""
    import av

    options = {"hwaccel": video.nvdec_hwaccel(0)} if gpu else {}
    with av.open(str(path), **options) as container:
        if gpu:
            return [video.gpu_planes(frame)[0].tobytes() for frame in container.decode(container.streams.video[0])]
        return [np.ascontiguousarray(frame.to_ndarray()[:frame.height]).tobytes()
                for frame in container.decode(container.streams.video[0])]


@pytest.mark.parametrize("clip", REAL_CLIPS)
def test_nvdec_decodes_every_frame_as_the_cpu_does(clip):
    """H.264 decoding is exact by the standard: NVDEC's luma equals the CPU's byte for byte on every frame,
    and the sampled frames' RGB (converted by FFmpeg from the same planes) is the CPU decode's, identically."""
    assert _luma_planes(clip, gpu=True) == _luma_planes(clip, gpu=False)
    gpu, cpu = read_clip(clip, 80, "nvdec", CUDA), read_clip(clip, 80, "pyav")
    assert gpu.decoder == "nvdec" and gpu.note is None
    assert gpu.indices.tolist() == cpu.indices.tolist() and gpu.fps == cpu.fps
    difference = np.abs(gpu.frames.astype(np.int16) - cpu.frames).max()
    assert difference == 0, f"RGB differs by up to {difference}"


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv"])
def test_nvdec_reads_generated_h264_with_b_frames_in_every_container(tmp_path, suffix):
    path = write_h264_clip(tmp_path / f"b{suffix}", 90)
    gpu, cpu = read_clip(path, 30, "nvdec", CUDA), read_clip(path, 30, "pyav")
    assert gpu.decoder == "nvdec" and gpu.n_frames == cpu.n_frames == 90
    assert np.array_equal(gpu.frames, cpu.frames)


def test_a_clip_nvdec_cannot_decode_falls_back_to_the_cpu_saying_so(tmp_path):
    path = write_h264_clip(tmp_path / "444.mp4", 30, pix_fmt="yuv444p")  # H.264 High 4:4:4: not for NVDEC
    clip, cpu = read_clip(path, 8, "nvdec", CUDA), read_clip(path, 8, video.DEFAULT_CPU_DECODER)
    assert clip.decoder == video.DEFAULT_CPU_DECODER and clip.note.startswith("decoded on the CPU")
    assert np.array_equal(clip.frames, cpu.frames)


def test_codecs_nvdec_does_not_decode_exactly_are_decoded_on_the_cpu_without_a_warning(tmp_path):
    path = write_index_video(tmp_path / "ffv1.avi", 30)
    clip = read_clip(path, 8, "nvdec", CUDA)
    assert clip.decoder == video.DEFAULT_CPU_DECODER and clip.note is None


def test_extraction_on_the_gpu_decodes_with_nvdec_and_records_the_decoder_of_each_clip(tmp_path):
    raw = copy_clips(SMALL_CLIPS[:2], tmp_path / "raw")
    write_index_video(raw / "ffv1.avi", 30)
    write_h264_clip(raw / "h444.mp4", 30, pix_fmt="yuv444p")
    settings = dict(raw=str(raw), backbone="efficientnet_lite0", weights="imagenet", frames=16, precision="fp32")
    on_gpu = extract(ExtractConfig(features=str(tmp_path / "gpu.h5"), device="cuda", decoder="nvdec", **settings))
    extract(ExtractConfig(features=str(tmp_path / "cpu.h5"), device="cpu", **settings))
    assert on_gpu.decoder == "nvdec" and len(on_gpu.done) == 4 and not on_gpu.failed
    assert [w["file"] for w in on_gpu.warnings] == [str(raw / "h444.mp4")], "NVDEC failed on it: said so"
    sources = FeatureStore(tmp_path / "gpu.h5").sources()
    assert {vid: s["decoder"] for vid, s in sources.items()} == \
        {SMALL_CLIPS[0].name: "nvdec", SMALL_CLIPS[1].name: "nvdec", "ffv1.avi": video.DEFAULT_CPU_DECODER,
         "h444.mp4": video.DEFAULT_CPU_DECODER}
    for vid in (SMALL_CLIPS[0].name, SMALL_CLIPS[1].name):  # the same frames (from NVDEC) and the same crops
        # (resized on the CPU); only the network's arithmetic differs
        a, b = (torch.from_numpy(FeatureStore(tmp_path / name).read(vid)) for name in ("gpu.h5", "cpu.h5"))
        assert torch.nn.functional.cosine_similarity(a, b, dim=1).min() > 0.999, vid


@pytest.mark.parametrize("backbone", ["r2plus1d_18", "clip_vitb32"])
def test_todays_backbones_extract_on_the_gpu_as_on_the_cpu(tmp_path, backbone):
    """A Kinetics video network's windows and a CLIP encoder's frames, on CUDA: the same frames and crops as on
    the CPU (resized there), so only the arithmetic differs."""
    if backbone.startswith("clip"):
        pytest.importorskip("open_clip", reason="OpenCLIP is not installed on this machine")
    raw = copy_clips(SMALL_CLIPS[:2], tmp_path / "raw")
    settings = dict(raw=str(raw), backbone=backbone, weights="random", frames=4, precision="fp32")
    on_gpu = extract(ExtractConfig(features=str(tmp_path / "gpu.h5"), device="cuda", **settings))
    extract(ExtractConfig(features=str(tmp_path / "cpu.h5"), device="cpu", **settings))
    assert len(on_gpu.done) == 2 and not on_gpu.failed
    for vid in (SMALL_CLIPS[0].name, SMALL_CLIPS[1].name):
        a, b = (torch.from_numpy(FeatureStore(tmp_path / name).read(vid)) for name in ("gpu.h5", "cpu.h5"))
        assert torch.nn.functional.cosine_similarity(a, b, dim=1).min() > 0.999, vid


def test_a_two_stream_run_trains_on_the_gpu_and_captions_its_stores(tmp_path):
    """Two streams side by side through the captured CUDA training step, then captioned on the GPU."""
    import dataclasses
    import json

    from conftest import STORE_SETTINGS, random_store
    from pipeline.config import EvalConfig
    from pipeline.evaluation import caption_all

    ids = [f"v{i}.avi" for i in range(16)]
    stores = [random_store(tmp_path / "a.h5", ids, dataclasses.replace(STORE_SETTINGS, feature_dim=24)),
              random_store(tmp_path / "b.h5", ids, dataclasses.replace(STORE_SETTINGS, backbone="s3d", feature_dim=8))]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"id": vid, "caption": [f"a clip number {i % 4}"]} for i, vid in enumerate(ids)]))
    history = train(TrainConfig(features=[str(s) for s in stores], labels=str(labels), run_dir=str(tmp_path / "run"),
                                epochs=3, hidden=32, embed=32, batch_size=8, val_fraction=0, min_count=1,
                                device="cuda"))
    assert all(np.isfinite(row["train_loss"]) for row in history)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["model_config"]["feature_dim"] == 32
    path = caption_all(EvalConfig(run_dir=str(tmp_path / "run"), features=[str(s) for s in stores], beam=2,
                                  device="cuda"))
    assert len(path.read_text().splitlines()) == len(ids)
