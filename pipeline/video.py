"""Decodes exactly the uniformly sampled frames of a clip.

Reads a video file (.avi, .mp4, .mkv, .webm, .mov); writes nothing.
`read_frames(path, n)` returns the `n` uniformly sampled frames as RGB uint8
`(n, H, W, 3)` and the frame indices they are.

Correctness is defined against a full sequential decode: `frames[k]` is frame
`indices[k]` of the clip read in order from the first frame. decord 0.6's seeking
(`get_batch` on sparse indices, `vr[i]`, `skip_frames`) returns wrong frames on
H.264 AVI clips, so every backend here reads every frame in order and keeps only
the sampled ones; memory holds at most `n` frames whatever the clip's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PipelineError

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")
BACKENDS = ("opencv", "decord")
# OpenCV's sequential grab/retrieve is exact and the fastest of the exact ways
# measured on the MSVD clips (README, "Why OpenCV decodes by default").
DEFAULT_BACKEND = "opencv"
MAX_PASSES = 3  # decoding passes before a clip whose frame count keeps changing is refused


class VideoError(PipelineError):
    """A video that cannot be read; the message names the file and the cause."""

    def __init__(self, path: str | Path, cause: str):
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause


@dataclass
class Clip:
    """The sampled frames of one video and where they came from."""

    frames: np.ndarray  # (n, H, W, 3) uint8 RGB
    indices: np.ndarray  # (n,) int64, frame numbers in the full sequential decode
    n_frames: int  # frames really decoded (the container's count can lie)
    fps: float
    backend: str
    claimed_frames: int = 0  # the frame count the container claims (0: it claims none)

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


_READERS = {"opencv": _OpenCVReader, "decord": _DecordReader}


def _open(path: Path, backend: str):
    if not path.is_file():
        raise VideoError(path, "no such file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    return _READERS[backend](path)


def _decode_pass(path: Path, backend: str, indices: np.ndarray | None):
    """Read every frame in order; keep those at `indices` (None keeps nothing).

    Returns `(kept, n_decoded, fps)`, `kept` mapping frame number to RGB frame.
    A frame that fails to decode ends the clip there, on every pass alike.
    """
    reader = _open(path, backend)
    wanted = set() if indices is None else set(indices.tolist())
    kept: dict[int, np.ndarray] = {}
    n_decoded = 0
    try:
        while reader.grab():
            if n_decoded in wanted:
                frame = reader.retrieve()
                if frame is None:  # grabbed but not convertible: not a clean end of the clip
                    raise VideoError(path, f"frame {n_decoded} was decoded but could not be converted to RGB")
                kept[n_decoded] = frame
            n_decoded += 1
    finally:
        reader.close()
    return kept, n_decoded, reader.fps


def _reported_frames(path: Path, backend: str) -> int:
    reader = _open(path, backend)
    reader.close()
    return reader.reported_frames


def read_clip(path: str | Path, n: int = 80, backend: str = "auto") -> Clip:
    """Decode `n` uniformly sampled frames of `path`, exact by construction.

    The container's frame count picks the indices; when the real count differs
    (a lying header, unreadable last frames), another pass samples the frames
    that really decode. Where a cut-off end decodes a frame or two further on one
    pass than on another (decord's decoder does, under load), the clip is the
    frames that every pass decoded: the shortest count seen.
    """
    path = Path(path)
    backend = DEFAULT_BACKEND if backend == "auto" else backend
    if backend not in _READERS:
        raise ValueError(f"unknown video backend {backend!r}; known: auto, {', '.join(BACKENDS)}")
    expected = claimed = _reported_frames(path, backend)
    decoded_before = expected == 0  # whether `expected` is a count a pass decoded, not the container's claim
    if decoded_before:  # no count in the container: count the frames first
        expected = _decode_pass(path, backend, None)[1]
    for _ in range(MAX_PASSES):
        if expected == 0:
            raise VideoError(path, "no decodable frames")
        indices = sample_indices(expected, n)
        kept, n_decoded, fps = _decode_pass(path, backend, indices)
        if n_decoded == expected or (decoded_before and n_decoded > expected):  # every sampled frame was kept
            break
        expected, decoded_before = n_decoded, True
    else:
        raise VideoError(path, f"decodes to a different number of frames on each of {MAX_PASSES} reads")
    frames = np.stack([kept[i] for i in indices.tolist()])  # (n, H, W, 3)
    return Clip(frames=frames, indices=indices, n_frames=expected, fps=fps, backend=backend, claimed_frames=claimed)


def read_frames(path: str | Path, n: int = 80, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The `n` sampled RGB frames `(n, H, W, 3)` uint8 of `path` and their indices."""
    clip = read_clip(path, n, backend)
    return clip.frames, clip.indices
