"""The HTML report of an evaluation run: one file that opens offline.

Takes the scores, captions, references and per-video course BLEU-1 of an
evaluation (computed once, by `evaluation.py`); reads the run's plots
(`curves.png`, `schedule.png`) and, where they are found, the raw clips; writes
`RUN/report.html`. Every image is embedded as a data URI: the scores table with the
baseline, the training curves and the schedule, and for sampled test videos an
animated GIF of the clip beside the generated caption and the references, split
as the seed's README did into "correct descriptions" and "relevant but incorrect
descriptions" by per-video BLEU-1. All text from data (ids, captions) is escaped.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from .metrics import METRIC_KEYS
from .ids import video_id
from .video import VideoError, read_clip

GIF_FRAMES = 16  # frames per GIF, spread over the clip
GIF_WIDTH = 160  # pixels
GIF_COLOURS = 64  # palette size per frame
CORRECT = 0.75  # per-video BLEU-1 from which a caption counts as a correct description


def gif_bytes(path: Path, frames: int = GIF_FRAMES, width: int = GIF_WIDTH) -> bytes:
    """A small palette-optimised animated GIF of the clip at `path`."""
    clip = read_clip(path, frames)
    height = max(1, round(clip.frames.shape[1] * width / clip.frames.shape[2]))
    # each frame gets its own adaptive palette: one shared palette washes out clips whose colours change
    frames_p = [Image.fromarray(f).resize((width, height), Image.Resampling.BILINEAR)
                .quantize(colors=GIF_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
                for f in clip.frames]
    seconds = clip.n_frames / clip.fps if clip.fps > 0 else frames / 8
    buffer = io.BytesIO()
    frames_p[0].save(buffer, format="GIF", save_all=True, append_images=frames_p[1:], optimize=True, loop=0,
                     duration=max(40, int(1000 * seconds / frames)))
    return buffer.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _scores_table(scores: dict) -> str:
    baseline = scores.get("baseline", {})
    rows = "".join(
        f"<tr><th>{key}</th><td>{_fmt(scores.get(key))}</td><td>{_fmt(baseline.get(key))}</td></tr>"
        for key in METRIC_KEYS)
    caption = html.escape(baseline.get("caption", ""))
    return (f"<table class='scores'><tr><th>metric</th><th>model</th><th>baseline</th></tr>{rows}</table>"
            f"<p>{scores.get('n_videos', 0)} test videos. Baseline: the most frequent training caption, "
            f"&ldquo;{caption}&rdquo;, for every video. mlds_bleu1 is the course's lenient per-video BLEU-1; "
            f"papers report BLEU-4, METEOR, ROUGE-L and CIDEr.</p>")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _video_card(vid: str, caption: str, references: list[str], score: float, clip: Path | None) -> str:
    if clip and clip.is_file():
        try:
            media = f"<img alt='{html.escape(vid)}' src='{data_uri(gif_bytes(clip), 'image/gif')}'>"
        except Exception as exc:  # one unreadable clip must not cost the rest of the report
            cause = exc.cause if isinstance(exc, VideoError) else f"{type(exc).__name__}: {exc}"
            media = f"<p class='missing'>clip unreadable: {html.escape(cause)}</p>"
    else:
        media = "<p class='missing'>clip not found in the raw folder</p>"
    refs = "".join(f"<li>{html.escape(r)}</li>" for r in references[:5])
    return (f"<div class='card'>{media}<p class='id'>{html.escape(vid)}</p>"
            f"<p class='caption'>{html.escape(caption) or '<i>(empty)</i>'}</p>"
            f"<p class='score'>BLEU-1 {score:.2f}</p><details><summary>references</summary><ul>{refs}</ul>"
            f"</details></div>")


def spread_by_score(per_video: dict[str, float], n: int) -> list[str]:
    """Up to `n` ids spread over the score range, best first."""
    ranked = sorted(per_video, key=lambda vid: (-per_video[vid], vid))
    if len(ranked) <= n:
        return ranked
    return [ranked[i] for i in np.linspace(0, len(ranked) - 1, n).round().astype(int)]


def write_report(run: str | Path, scores: dict, captions: dict[str, str], references: dict[str, list[str]],
                 per_video: dict[str, float], raw: str | Path | None, n_videos: int = 8) -> Path:
    """`RUN/report.html` of `scores` and of `n_videos` of the `captions`, spread over their course BLEU-1
    `per_video` (`metrics.bleu1_per_video`)."""
    run = Path(run)
    # the raw clips by video id: a file's name may be decomposed where the id is composed (macOS writes names so),
    # and an id is a name, never a path
    clips = {video_id(p): p for p in Path(raw).iterdir()} if raw and Path(raw).is_dir() else {}
    chosen = spread_by_score(per_video, n_videos)
    sections = []
    for title, keep in (("Correct descriptions", lambda s: s >= CORRECT),
                        ("Relevant but incorrect descriptions", lambda s: s < CORRECT)):
        cards = "".join(_video_card(v, captions[v], references[v], per_video[v], clips.get(v)) for v in chosen
                        if keep(per_video[v]))
        sections.append(f"<h2>{title}</h2><div class='grid'>{cards or '<p>none among the sampled videos</p>'}</div>")
    plots = "".join(f"<img class='plot' alt='{name}' src='{data_uri((run / name).read_bytes(), 'image/png')}'>"
                    for name in ("curves.png", "schedule.png") if (run / name).is_file())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>S2VT report: {html.escape(run.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table.scores {{ border-collapse: collapse; }}
table.scores td, table.scores th {{ padding: 4px 12px; border-bottom: 1px solid #ddd; text-align: right; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 16px; }}
.card {{ width: 200px; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }}
.card img {{ width: 100%; }} .id {{ font-family: monospace; font-size: 11px; color: #666; word-break: break-all; }}
.caption {{ font-weight: bold; }} .missing {{ color: #a00; }} img.plot {{ height: 260px; margin-right: 12px; }}
</style></head><body>
<h1>S2VT evaluation: {html.escape(str(run))}</h1>
{_scores_table(scores)}
<h2>Training</h2>{plots or '<p>no plots in the run folder</p>'}
{''.join(sections)}
</body></html>
"""
    path = run / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
