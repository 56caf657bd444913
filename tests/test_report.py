"""The HTML report: every image it shows is really there, and data is escaped."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from conftest import SMALL_CLIPS, copy_clips
from pipeline.metrics import bleu1_per_video
from pipeline.report import gif_bytes, write_report


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.scripts = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        self.scripts += tag == "script"


def _parse(path: Path) -> _Images:
    parser = _Images()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _decode(src: str) -> Image.Image:
    assert src.startswith("data:image/"), f"not embedded: {src[:60]}"
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


SCORES = {"mlds_bleu1": 0.7, "bleu1": 0.7, "bleu2": 0.5, "bleu3": 0.4, "bleu4": 0.3, "meteor": None,
          "rouge_l": 0.6, "cider": 0.5, "n_videos": 3,
          "baseline": {"mlds_bleu1": 0.6, "bleu1": 0.6, "bleu2": 0.4, "bleu3": 0.3, "bleu4": 0.2, "meteor": None,
                       "rouge_l": 0.5, "cider": 0.1, "n_videos": 3, "caption": "a man is <b>playing</b>"}}


def test_every_image_exists_and_text_is_escaped(tmp_path):
    raw = copy_clips(SMALL_CLIPS[:2], tmp_path / "raw")
    run = tmp_path / "run"
    run.mkdir()
    Image.new("RGB", (40, 30), "white").save(run / "curves.png")
    first, second = SMALL_CLIPS[0].name, SMALL_CLIPS[1].name
    captions = {first: "a woman is mixing", second: "<script>alert('x')</script>", "../../etc/passwd": "a dog"}
    references = {first: ["A woman is mixing ingredients."], second: ["a man cuts shrimp"],
                  "../../etc/passwd": ["a dog runs"]}
    report = write_report(run, SCORES, captions, references, bleu1_per_video(captions, references), raw)
    page = _parse(report)
    assert page.scripts == 0, "a caption must never become markup"
    text = report.read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text and "a man is &lt;b&gt;playing" in text
    assert "Correct descriptions" in text and "Relevant but incorrect descriptions" in text
    assert "clip not found" in text  # the id that is not a file name gets no clip
    images = [_decode(src) for src in page.sources]
    gifs = [im for im in images if im.format == "GIF"]
    assert len(gifs) == 2 and all(im.n_frames > 1 for im in gifs)
    assert sum(im.format == "PNG" for im in images) == 1


def test_gif_is_small_and_animated():
    data = gif_bytes(SMALL_CLIPS[0])
    image = Image.open(io.BytesIO(data))
    assert image.format == "GIF" and image.n_frames == 16 and image.size[0] == 160
    assert len(data) < 300_000
