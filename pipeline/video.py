"""Decodes exactly the uniformly sampled frames of a clip, on the CPU or with the GPU's video decoder.

Reads a video file (.avi, .mp4, .mkv, .webm, .mov); writes nothing.
`read_frames(path, n)` returns the `n` uniformly sampled frames as RGB uint8
`(n, H, W, 3)` and the frame indices they are.

Correctness is defined against a full sequential decode: `frames[k]` is frame
`indices[k]` of the clip read in order from the first frame. decord 0.6's seeking
(`get_batch` on sparse indices, `vr[i]`, `skip_frames`) returns wrong frames on
H.264 AVI clips, so every decoder here reads every frame in order and converts
only the sampled ones to RGB; memory holds at most `n` frames whatever the clip's
length. With a window (a video network's clip length), the consecutive frames
around each sampled one are kept, each passed through a resize as it is decoded.
`nvdec`, when asked for, decodes on an NVIDIA GPU (FFmpeg's CUDA hwaccel
through PyAV): the frames stay in GPU memory and only the sampled ones are copied
out, as YUV planes that FFmpeg converts to RGB exactly as it converts a CPU-decoded
frame. NVDEC takes the codecs whose decoding their standard makes exact (H.264,
HEVC, VP8, VP9, AV1); a clip it fails on is decoded on the CPU instead, and the
clip says why.

A clip's video id is its file name in Unicode's composed form (`ids.video_id`). A
path that is not a regular file, or that this user may not read,
is refused before any decoder opens it (`not_a_file` looks at its directory entry
alone: opening a FIFO would block).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import PipelineError
from .files import PERMISSION_DENIED, not_a_file

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")
CPU_DECODERS = ("pyav", "opencv", "decord")
GPU_DECODER = "nvdec"
DECODERS = ("auto", *CPU_DECODERS, GPU_DECODER)  # what DECODER may be
# PyAV and OpenCV decode the MSVD clips to the same frames, byte for byte; OpenCV was the faster of the exact
# ways on the CPU in `make bench` (docs/features.md, "Decoders, and why OpenCV decodes by default").
DEFAULT_CPU_DECODER = "opencv"
MAX_PASSES = 3  # decoding passes before a clip whose frame count keeps changing is refused
# The codecs NVDEC decodes here: those whose standards define the decoded picture exactly (integer transforms),
# so the GPU's frames are the CPU's. MJPEG, MPEG-2 and MPEG-4 Part 2 allow IDCTs that round differently;
# clips in those (and in codecs NVDEC lacks) are decoded on the CPU, as planned, without a warning.
NVDEC_CODECS = ("h264", "hevc", "vp8", "vp9", "av1")


class VideoError(PipelineError):
    """A video that cannot be read; the message names the file and the cause."""

    def __init__(self, path: str | Path, cause: str):
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause


class NvdecError(Exception):
    """NVDEC could not decode a clip (unsupported codec or format, no device): the CPU decodes it instead."""


@dataclass
class Clip:
    """The sampled frames of one video and where they came from."""

    frames: np.ndarray  # (n, H, W, 3) uint8 RGB
    indices: np.ndarray  # (n,) int64, frame numbers in the full sequential decode
    n_frames: int  # frames really decoded (the container's count can lie)
    fps: float
    decoder: str  # the decoder that decoded it
    claimed_frames: int = 0  # the frame count the container claims (0: it claims none)
    note: str | None = None  # why it was not decoded by the decoder asked for (NVDEC fell back to the CPU)
    # With a window: `frames` are the distinct frames of every window, in order, and row k of `window_rows`
    # (n, window) their rows for the window around `indices[k]` (`window_indices`)
    window_rows: np.ndarray | None = None

    @property
    def missing_frames(self) -> int:
        """Frames the container claims that do not decode (a truncated or damaged file)."""
        return max(self.claimed_frames - self.n_frames, 0)


def sample_indices(n_total: int, n: int = 80) -> np.ndarray:
    """`n` frame indices spread uniformly over a clip of `n_total` frames.

    Index k is the middle frame of the k-th of `n` equal segments, so the indices
    are non-decreasing, all within `[0, n_total)`, distinct when `n_total >= n`,
    and, for shorter clips, every frame appears (repeated in order).
    """
    if n_total < 1 or n < 1:
        raise ValueError(f"need n_total >= 1 and n >= 1, got n_total={n_total}, n={n}")
    k = np.arange(n, dtype=np.int64)
    return (2 * k + 1) * n_total // (2 * n)


def window_indices(indices: np.ndarray, n_total: int, window: int) -> np.ndarray:
    """`(n, window)` frame numbers: around each of `indices`, `window` consecutive frames, centred on it and
    shifted inside the clip at its ends; a clip shorter than the window repeats its last frame."""
    starts = np.clip(indices - window // 2, 0, max(0, n_total - window))  # (n,)
    return np.minimum(starts[:, None] + np.arange(window), n_total - 1)  # (n, window)


class _PyAVStream:
    """The first video stream of an open PyAV container, read in order: what both PyAV readers share."""

    def __init__(self, container):
        self._container = container
        self._stream = container.streams.video[0]
        self.reported_frames = _claimed_frames(container, self._stream)
        self.fps = float(self._stream.average_rate or 0.0)
        self._frames = None  # started by the first grab, after a reader has set its decoding options
        self._current = None

    def _next(self):
        if self._frames is None:
            self._frames = self._container.decode(self._stream)
        self._current = next(self._frames)

    def close(self) -> None:
        self._container.close()


def _claimed_frames(container, stream) -> int:
    """The frame count a container claims: its own, or for formats that keep none (Matroska, WebM) its
    duration times its frame rate, as OpenCV estimates it (so a cut-off clip is seen missing frames)."""
    if stream.frames > 0:
        return stream.frames
    seconds = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
    return int(seconds * float(stream.average_rate or 0.0) + 0.5)


class _PyAVReader(_PyAVStream):
    """Sequential access through PyAV (FFmpeg's libraries): `grab()` decodes, `retrieve()` converts to RGB."""

    def __init__(self, path: Path):
        import av

        self._error = av.FFmpegError
        try:
            container = av.open(str(path))
        except av.FFmpegError as exc:
            raise VideoError(path, f"cannot be opened as a video ({exc.strerror or exc})") from None
        if not container.streams.video:
            container.close()
            raise VideoError(path, "holds no video stream")
        super().__init__(container)
        self._stream.thread_type = "AUTO"  # frame and slice threads: 1.3x slice threads alone on MSVD

    def grab(self) -> bool:
        try:
            self._next()
        except StopIteration:
            return False
        except self._error:  # a frame that cannot be decoded ends the clip, on every pass alike
            return False
        return True

    def retrieve(self) -> np.ndarray | None:
        return self._current.to_ndarray(format="rgb24")  # (H, W, 3)


class _NvdecReader(_PyAVStream):
    """Sequential access through NVDEC: every frame is decoded into GPU memory and only a retrieved one
    leaves it, as its NV12 planes, which FFmpeg's converter turns into the RGB a CPU decode gives. What
    NVDEC or FFmpeg refuse is an `NvdecError`: the CPU then decodes the clip and judges the file."""

    def __init__(self, path: Path, gpu: int | None):
        import av

        self._error = av.FFmpegError
        try:
            container = av.open(str(path), hwaccel=nvdec_hwaccel(gpu))
        except (av.FFmpegError, RuntimeError) as exc:  # PyAV: no stream NVDEC decodes; FFmpeg: no device
            raise NvdecError(f"NVDEC cannot open it ({type(exc).__name__}: {exc})") from None
        if not container.streams.video or not container.streams.video[0].codec_context.is_hwaccel:
            container.close()
            raise NvdecError("NVDEC has no decoder for its video stream")
        super().__init__(container)

    def grab(self) -> bool:
        try:
            self._next()
        except StopIteration:
            return False
        except self._error as exc:  # a profile NVDEC lacks (H.264 4:4:4) fails at the first frame
            raise NvdecError(f"NVDEC failed decoding it ({type(exc).__name__}: {exc})") from None
        return True

    def retrieve(self) -> np.ndarray | None:
        return rgb_of_nv12(*gpu_planes(self._current), self._current)


def nvdec_hwaccel(gpu: int | None):
    """PyAV's settings for decoding with NVDEC on device `gpu` (None: the current one), the frames kept in GPU
    memory, in PyTorch's
    CUDA context, which this makes the calling thread's current one (a new thread has none until it calls
    CUDA). FFmpeg's own `primary_ctx` would refuse the device's primary context once PyTorch holds it with
    other flags ("Operation not supported"); `current_ctx` decodes in it, so PyTorch can read the frames."""
    import torch
    from av.codec.hwaccel import HWAccel

    gpu = torch.cuda.current_device() if gpu is None else gpu
    torch.cuda.set_device(gpu)
    torch.cuda.mem_get_info(gpu)  # a runtime call that needs the context: it is made current here
    return HWAccel("cuda", device=str(gpu), allow_software_fallback=False, is_hw_owned=True,
                   options={"primary_ctx": "0", "current_ctx": "1"})


def gpu_planes(frame) -> tuple[np.ndarray, np.ndarray]:
    """The luma `(H, W)` and interleaved chroma `(H/2, W/2, 2)` planes of an NV12 frame in GPU memory."""
    import torch

    if frame.format.name != "cuda" or frame.sw_format.name != "nv12":
        raise NvdecError(f"NVDEC gave a {frame.format.name}/{getattr(frame.sw_format, 'name', '?')} frame, "
                         f"not 8-bit 4:2:0 (nv12)")
    luma, chroma = (torch.utils.dlpack.from_dlpack(plane.__dlpack__()).cpu().numpy() for plane in frame.planes[:2])
    return luma, chroma


def rgb_of_nv12(luma: np.ndarray, chroma: np.ndarray, decoded) -> np.ndarray:
    """RGB `(H, W, 3)` of NV12 planes, converted by FFmpeg from planar YUV 4:2:0 with the colour space and
    range of the frame `decoded` they came from: the path a CPU-decoded yuv420p frame takes."""
    import av

    height, width = luma.shape
    if height % 2 or width % 2:
        raise NvdecError(f"odd frame size {width}x{height}")
    planar = np.concatenate([luma.reshape(-1), chroma[..., 0].reshape(-1), chroma[..., 1].reshape(-1)])
    frame = av.VideoFrame.from_ndarray(planar.reshape(-1, width), format="yuv420p")  # (H * 3 / 2, W)
    frame.colorspace, frame.color_range = decoded.colorspace, decoded.color_range
    return frame.reformat(format="rgb24", threads=1).to_ndarray()  # one thread: many clips decode at once


class _OpenCVReader:
    """Sequential access through OpenCV: grab() decodes, retrieve() converts."""

    def __init__(self, path: Path):
        import cv2

        self._cv2 = cv2
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            raise VideoError(path, "cannot be opened as a video (not a video file, or an unsupported codec)")
        self.reported_frames = max(int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def grab(self) -> bool:
        return self._cap.grab()

    def retrieve(self) -> np.ndarray | None:
        ok, bgr = self._cap.retrieve()
        return self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB) if ok else None

    def close(self) -> None:
        self._cap.release()


class _DecordReader:
    """Sequential access through decord's `next()`, the only exact way it has."""

    def __init__(self, path: Path):
        import decord

        self._error = (RuntimeError, decord.DECORDError)
        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        except self._error as exc:
            raise VideoError(path, f"cannot be opened as a video ({str(exc).splitlines()[0]})") from None
        self.reported_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps() or 0.0)
        self._current = None

    def grab(self) -> bool:
        try:
            self._current = self._reader.next()
        except (StopIteration, *self._error):
            return False
        return True

    def retrieve(self) -> np.ndarray | None:
        return self._current.asnumpy()

    def close(self) -> None:
        del self._reader


_READERS = {"pyav": _PyAVReader, "opencv": _OpenCVReader, "decord": _DecordReader}


@functools.cache
def nvdec_available() -> bool:
    """Whether NVDEC can be asked for here: a CUDA GPU, and a PyAV whose FFmpeg has the CUDA hwaccel and
    can keep decoded frames on the GPU (PyAV 18 or later)."""
    import torch

    try:
        from av.codec.hwaccel import HWAccel, hwdevices_available
    except ImportError:
        return False
    return torch.cuda.is_available() and "cuda" in hwdevices_available() and hasattr(HWAccel, "is_hw_owned")


def resolve_decoder(decoder: str) -> str:
    """The decoder `decoder` means: `auto` is the default CPU decoder, on any device. NVDEC is used only when
    asked for: exact, but slower here than the CPU cores of a GPU machine (docs/features.md, "Decoders")."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown video decoder {decoder!r}; known: {', '.join(DECODERS)}")
    return DEFAULT_CPU_DECODER if decoder == "auto" else decoder


def _open(path: Path, decoder: str, gpu: int | None):
    try:
        reason = not_a_file(path)
        if reason is None:  # the decoders would call a file they may not read no video at all
            open(path, "rb").close()
    except PermissionError:
        reason = PERMISSION_DENIED
    if reason:
        raise VideoError(path, reason)
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    return _NvdecReader(path, gpu) if decoder == GPU_DECODER else _READERS[decoder](path)


def _decode_pass(path: Path, reader, indices: np.ndarray | None, keep: Callable | None = None):
    """Read every frame of the open `reader` in order; keep those at `indices` (None keeps nothing), passed
    through `keep` where given (a resize, so that only small frames are held).

    Returns `(kept, n_decoded)`, `kept` mapping frame number to RGB frame.
    A frame that fails to decode ends the clip there, on every pass alike.
    """
    wanted = set() if indices is None else set(indices.tolist())
    kept: dict[int, np.ndarray] = {}
    n_decoded = 0
    try:
        while reader.grab():
            if n_decoded in wanted:
                frame = reader.retrieve()
                if frame is None:  # grabbed but not convertible: not a clean end of the clip
                    raise VideoError(path, f"frame {n_decoded} was decoded but could not be converted to RGB")
                kept[n_decoded] = frame if keep is None else keep(frame)
            n_decoded += 1
    finally:
        reader.close()
    return kept, n_decoded


def read_clip(path: str | Path, n: int = 80, decoder: str = "auto", device="cpu", window: int = 1,
              keep: Callable | None = None) -> Clip:
    """Decode `n` uniformly sampled frames of `path`, exact by construction; with a `window` above 1, every
    frame of the `window` consecutive frames around each (`window_indices`), each frame passed through `keep`
    as it is decoded (so a clip is never held whole at full size).

    `decoder` is a name of `DECODERS` (`auto`: the default CPU decoder). `nvdec` decodes
    on the CUDA device `device`, the clips in `NVDEC_CODECS`; the CPU decoder takes the
    others, and any clip NVDEC fails on, with the reason in `Clip.note`.

    The container's frame count picks the indices; when the real count differs
    (a lying header, unreadable last frames), another pass samples the frames
    that really decode. Where a cut-off end decodes a frame or two further on one
    pass than on another (decord's decoder does, under load), the clip is the
    frames that every pass decoded: the shortest count seen.
    """
    import torch

    if n < 1:
        raise ValueError(f"need at least one frame to sample, got n={n}")
    path = Path(path)
    decoder = resolve_decoder(decoder)
    gpu = torch.device(device).index  # None: the current CUDA device
    if decoder == GPU_DECODER and _codec(path) not in NVDEC_CODECS:
        decoder = DEFAULT_CPU_DECODER
    if decoder != GPU_DECODER:
        return _sampled(path, n, decoder, gpu, window, keep)
    try:
        return _sampled(path, n, decoder, gpu, window, keep)
    except (NvdecError, VideoError) as exc:  # the CPU decoder judges the file: its error, if any, is the clip's
        clip = _sampled(path, n, DEFAULT_CPU_DECODER, gpu, window, keep)
        clip.note = f"decoded on the CPU ({DEFAULT_CPU_DECODER}): {getattr(exc, 'cause', exc)}"
        return clip


def _codec(path: Path) -> str | None:
    """The name of the codec of `path`'s video stream, or None when it cannot be told (the CPU decoder then
    says what is wrong with the file)."""
    import av

    try:
        if not_a_file(path):  # a FIFO is not opened: it would wait for a writer
            return None
        with av.open(str(path)) as container:
            return container.streams.video[0].codec_context.name if container.streams.video else None
    except (av.FFmpegError, OSError):
        return None


def _sampled(path: Path, n: int, decoder: str, gpu: int | None, window: int, keep: Callable | None) -> Clip:
    """`read_clip` with one decoder."""
    reader = _open(path, decoder, gpu)  # its container's frame count picks the first pass's indices
    expected = claimed = reader.reported_frames
    fps = reader.fps
    decoded_before = expected == 0  # whether `expected` is a count a pass decoded, not the container's claim
    if decoded_before:  # no count in the container: count the frames first
        expected, reader = _decode_pass(path, reader, None)[1], None
    for _ in range(MAX_PASSES):
        if expected == 0:
            raise VideoError(path, "no decodable frames")
        indices = sample_indices(expected, n)
        wanted = indices if window == 1 else window_indices(indices, expected, window)
        kept, n_decoded = _decode_pass(path, reader or _open(path, decoder, gpu), wanted.ravel(), keep)
        reader = None
        if n_decoded == expected or (decoded_before and n_decoded > expected):  # every sampled frame was kept
            break
        expected, decoded_before = n_decoded, True
    else:
        raise VideoError(path, f"decodes to a different number of frames on each of {MAX_PASSES} reads")
    clip = Clip(frames=np.empty(0), indices=indices, n_frames=expected, fps=fps, decoder=decoder,
                claimed_frames=claimed)
    if window == 1:
        clip.frames = np.stack([kept[i] for i in indices.tolist()])  # (n, H, W, 3)
    else:
        distinct = np.array(sorted(kept))  # (U,) every frame of some window
        clip.frames = np.stack([kept[i] for i in distinct.tolist()])  # (U, h, w, 3)
        clip.window_rows = np.searchsorted(distinct, wanted)  # (n, window)
    return clip


def read_frames(path: str | Path, n: int = 80, decoder: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The `n` sampled RGB frames `(n, H, W, 3)` uint8 of `path` and their indices."""
    clip = read_clip(path, n, decoder)
    return clip.frames, clip.indices
