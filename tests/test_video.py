"""read_frames on the real MSVD clips and on every kind of unreadable input."""

from __future__ import annotations

import functools
import hashlib
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REAL_CLIPS, SMALL_CLIPS, write_index_video
from pipeline import video
from pipeline.video import (CPU_DECODERS, DEFAULT_CPU_DECODER, VideoError, read_clip, read_frames, rgb_of_nv12,
                            sample_indices)

BACKENDS = CPU_DECODERS


def _digest(frame: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(frame).tobytes()).hexdigest()


def full_decode_digests(path: Path, backend: str) -> list[str]:
    """The reference: every frame of a plain in-order decode, as RGB digests."""
    digests = []
    if backend == "pyav":
        import av

        with av.open(str(path)) as container:
            digests = [_digest(f.to_ndarray(format="rgb24")) for f in container.decode(container.streams.video[0])]
    elif backend == "opencv":
        cap = cv2.VideoCapture(str(path))
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            digests.append(_digest(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        cap.release()
    else:
        import decord  # here, so that a machine without it can still collect the file (`pytest -m gpu`)

        reader = decord.VideoReader(str(path), num_threads=1)
        while True:
            try:
                digests.append(_digest(reader.next().asnumpy()))
            except (StopIteration, decord.DECORDError):
                break
    return digests


@functools.cache
def reference_digests(clip: Path, backend: str) -> list[str]:
    return full_decode_digests(clip, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", REAL_CLIPS)
def test_sampled_frames_are_exactly_those_of_a_full_decode(clip, backend):
    reference = reference_digests(clip, backend)
    frames, indices = read_frames(clip, 80, decoder=backend)
    assert frames.dtype == np.uint8 and frames.shape[0] == 80 and frames.shape[3] == 3
    assert indices.tolist() == sample_indices(len(reference), 80).tolist()
    for k, i in enumerate(indices):
        assert _digest(frames[k]) == reference[i], f"frame {k} is not frame {i} of the full decode"


@pytest.mark.parametrize("clip", REAL_CLIPS)
def test_backends_agree_on_every_frame(clip):
    assert reference_digests(clip, "opencv") == reference_digests(clip, "decord") == reference_digests(clip, "pyav")


def test_auto_is_the_default_backend_and_recorded():
    clip = read_clip(SMALL_CLIPS[0], 8)
    assert clip.decoder == DEFAULT_CPU_DECODER
    assert clip.n_frames == 210 and clip.fps == pytest.approx(29.92, abs=0.01)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_frames,n", [(37, 80), (37, 10), (1, 4), (120, 120)])
def test_lossless_clip_gives_the_frames_it_was_written_with(tmp_path, backend, n_frames, n):
    path = write_index_video(tmp_path / "index.avi", n_frames)
    frames, indices = read_frames(path, n, decoder=backend)
    assert indices.tolist() == sample_indices(n_frames, n).tolist()
    for k, i in enumerate(indices):
        assert abs(float(frames[k].mean()) - (5 * i) % 256) < 1.0, f"frame {k} should be frame {i}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_whose_last_frames_cannot_be_read(tmp_path, backend):
    # The header promises 210 frames; the file is cut after about a third of them.
    cut = tmp_path / "cut.avi"
    cut.write_bytes(SMALL_CLIPS[0].read_bytes()[:100_000])
    # OpenCV's full decode is the reference for both: decord's threaded decoder
    # drops a varying number of the frames it had in flight when the data ends.
    reference = full_decode_digests(cut, "opencv")
    assert 0 < len(reference) < 210
    clip = read_clip(cut, 80, backend)
    assert clip.n_frames <= len(reference) if backend == "decord" else clip.n_frames == len(reference)
    assert clip.indices.tolist() == sample_indices(clip.n_frames, 80).tolist()
    assert [_digest(f) for f in clip.frames] == [reference[i] for i in clip.indices]


def test_a_cut_clip_that_decodes_a_frame_further_on_some_reads_is_the_frames_every_read_decoded(monkeypatch):
    # Seen with decord on the cut clip above while other processes loaded the CPU: its three passes
    # each decoded another number of frames, and the clip was refused. Here: 70, then 68, then 69.
    lengths = iter([70, 68, 69])  # frames each decoding pass gets through; the header claims 210

    class CutEndReader:
        def __init__(self, path):
            self.reported_frames, self.fps, self.length, self.at = 210, 25.0, None, -1

        def grab(self):
            self.length = next(lengths) if self.length is None else self.length
            self.at += 1
            return self.at < self.length

        def retrieve(self):
            return np.full((4, 4, 3), self.at, np.uint8)  # a frame showing its own number

        def close(self):
            pass

    monkeypatch.setitem(video._READERS, "opencv", CutEndReader)
    clip = read_clip(SMALL_CLIPS[0], 80, "opencv")
    assert clip.n_frames == 68 and clip.claimed_frames == 210
    assert clip.indices.tolist() == sample_indices(68, 80).tolist()
    assert clip.frames[:, 0, 0, 0].tolist() == clip.indices.tolist()


def _empty(path):
    path.write_bytes(b"")


def _random(path):
    path.write_bytes(np.random.default_rng(0).bytes(50_000))


def _header_only(path):
    path.write_bytes(SMALL_CLIPS[0].read_bytes()[:3000])


def _text(path):
    path.write_text("this is not a video\n")


def _no_decodable_frames(path):
    # A real AVI container whose every frame's data is replaced by zeros.
    data = bytearray(SMALL_CLIPS[0].read_bytes())
    start = data.find(b"movi") + 4
    end = data.find(b"idx1")
    data[start:end] = bytes(end - start)
    path.write_bytes(bytes(data))


BAD_INPUTS = [_empty, _random, _header_only, _text, _no_decodable_frames]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_unreadable_input_raises_video_error_naming_the_file(tmp_path, backend, make_bad):
    path = tmp_path / "bad clip.avi"
    make_bad(path)
    with pytest.raises(VideoError) as info:
        read_frames(path, 8, decoder=backend)
    assert str(path) in str(info.value) and info.value.cause


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_file_raises_video_error(tmp_path, backend):
    with pytest.raises(VideoError, match="no such file"):
        read_frames(tmp_path / "nope.avi", 8, decoder=backend)


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="opencv"):
        read_frames(SMALL_CLIPS[0], 8, decoder="ffmpeg-magic")


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_holds_only_the_sampled_frames(tmp_path, backend):
    frame_bytes = 320 * 240 * 3
    path = write_index_video(tmp_path / "long.avi", 600, size=(320, 240))
    tracemalloc.start()
    read_frames(path, 8, decoder=backend)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40 * frame_bytes, f"peak {peak / frame_bytes:.0f} frames for 8 sampled of 600"


def test_other_containers_are_read(tmp_path):
    for suffix in (".mkv", ".mov"):
        path = write_index_video(tmp_path / f"clip{suffix}", 20)
        frames, indices = read_frames(path, 5)
        assert frames.shape == (5, 48, 64, 3)


@pytest.mark.parametrize("clip", REAL_CLIPS)
def test_nv12_planes_convert_to_the_rgb_of_the_cpu_decode(clip):
    """What NVDEC hands over is a frame's NV12 planes (luma, then U and V interleaved); `rgb_of_nv12` must turn
    them into the very RGB a CPU decode of the same frame gives. The planes here are the CPU decode's own."""
    import av

    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            planar = frame.to_ndarray()  # yuv420p as (H * 3 / 2, W): Y rows, then U, then V
            h, w = frame.height, frame.width
            u = planar[h:h + h // 4].reshape(h // 2, w // 2)
            v = planar[h + h // 4:].reshape(h // 2, w // 2)
            rgb = rgb_of_nv12(planar[:h], np.stack([u, v], axis=-1), frame)
            assert np.array_equal(rgb, frame.to_ndarray(format="rgb24")), f"frame {i}"


class _NvdecFailingAt:
    """A stand-in NVDEC reader that fails when opened, or after `after` frames."""

    def __init__(self, reason: str, after: int | None = None):
        self.reason, self.after = reason, after

    def __call__(self, path, gpu):
        if self.after is None:
            raise video.NvdecError(self.reason)
        reader, failing = video._PyAVReader(path), self

        class Reader:
            reported_frames, fps, grabbed = reader.reported_frames, reader.fps, 0

            def grab(self):
                self.grabbed += 1
                if self.grabbed > failing.after:
                    raise video.NvdecError(failing.reason)
                return reader.grab()

            def retrieve(self):
                return reader.retrieve()

            def close(self):
                reader.close()
        return Reader()


@pytest.mark.parametrize("fake", [_NvdecFailingAt("NVDEC has no decoder for its video stream"),
                                  _NvdecFailingAt("NVDEC failed decoding it (cuvid)", after=50)],
                         ids=["at-open", "mid-clip"])
def test_a_clip_nvdec_cannot_decode_is_decoded_on_the_cpu_saying_why(monkeypatch, fake):
    monkeypatch.setattr(video, "_NvdecReader", fake)
    clip = read_clip(SMALL_CLIPS[0], 16, "nvdec", "cuda:0")
    reference = read_clip(SMALL_CLIPS[0], 16, DEFAULT_CPU_DECODER)
    assert clip.decoder == DEFAULT_CPU_DECODER and clip.note == f"decoded on the CPU ({DEFAULT_CPU_DECODER}): " \
                                                                f"{fake.reason}"
    assert np.array_equal(clip.frames, reference.frames) and clip.indices.tolist() == reference.indices.tolist()


def test_a_file_that_is_no_video_is_the_cpu_decoders_verdict_under_nvdec_too(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "_NvdecReader", _NvdecFailingAt("NVDEC cannot open it"))
    path = tmp_path / "text.avi"
    _text(path)
    with pytest.raises(VideoError, match="cannot be opened as a video"):
        read_clip(path, 8, "nvdec", "cuda:0")


def test_auto_is_the_default_cpu_decoder_on_every_device_and_nvdec_is_used_only_when_asked_for():
    assert video.resolve_decoder("auto") == DEFAULT_CPU_DECODER
    assert video.resolve_decoder("nvdec") == "nvdec" and video.resolve_decoder("pyav") == "pyav"
    with pytest.raises(ValueError, match="nvdec"):
        video.resolve_decoder("cuvid")


def test_codecs_whose_decoding_is_not_exact_by_their_standard_never_go_to_nvdec(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(video, "_NvdecReader", lambda path, gpu: asked.append(path))
    path = write_index_video(tmp_path / "ffv1.avi", 20)  # FFV1, like MJPEG, is not in NVDEC_CODECS
    clip = read_clip(path, 4, "nvdec", "cuda:0")
    assert not asked and clip.decoder == DEFAULT_CPU_DECODER and clip.note is None


@pytest.mark.parametrize("backend", ["pyav", "opencv"])  # decord claims the frames it indexed: the cut ones
def test_a_cut_matroska_clip_is_seen_missing_frames(tmp_path, backend):
    """Matroska keeps no frame count: the claim is its duration times its rate, so a clip cut in half is seen
    to miss frames (and extraction fails it)."""
    whole = write_index_video(tmp_path / "whole.mkv", 100)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    assert read_clip(whole, 8, backend).claimed_frames == 100
    clip = read_clip(cut, 8, backend)
    assert clip.claimed_frames == 100 and 0 < clip.n_frames < 100 and clip.missing_frames == 100 - clip.n_frames
