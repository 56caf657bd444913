"""The report is a web page, so a real browser opens it: headless Chromium, driven by `tools/report_browser.py`.

A tiny trained run is evaluated by the project's own code; Chromium then opens its
`report.html` from a `file://` URL with the network emulated offline. The page must
load with no console error and no failed request, ask for nothing beyond the file,
decode every GIF, and show in its scores table the numbers of `scores.json`. The same
script writes the screenshot in `docs/`. Without Chromium (`apt-get install
chromium`; `.ci/run` installs it) these tests skip, saying so.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import sys

import pytest
from PIL import Image

from conftest import CLIPS_DIR, EVERYTHING, ROOT, SMALL_CLIPS
from pipeline.config import EvalConfig
from pipeline.evaluation import evaluate_run
from pipeline.metrics import METRIC_KEYS


def _load_tool():
    spec = importlib.util.spec_from_file_location("report_browser", ROOT / "tools" / "report_browser.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


browser = _load_tool()
CHROMIUM = browser.find_chromium()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None and not EVERYTHING,
                                 reason="no Chromium installed (apt-get install chromium; .ci/run installs it from "
                                        "the distribution's packages)")]


@pytest.fixture(scope="module")
def run(tiny_run, clip_features, tmp_path_factory):
    """A copy of the tiny run, evaluated: captions, scores.json and report.html, GIFs from the shared clips."""
    run = tmp_path_factory.mktemp("browser") / "run"
    shutil.copytree(tiny_run, run)
    evaluate_run(EvalConfig(run_dir=str(run), features=str(clip_features), references=str(CLIPS_DIR / "labels.json"),
                            raw=str(CLIPS_DIR), beam=1, device="cpu"))
    return run


@pytest.fixture(scope="module")
def page(run):
    return browser.open_page(run / "report.html", CHROMIUM, screenshot=True)


def test_the_report_loads_offline_with_no_console_error_and_no_failed_request(page):
    assert page.title.startswith("S2VT report")
    assert page.console_errors == []
    assert page.failed_requests == []
    assert page.requests and all(url.split(":", 1)[0] in ("file", "data", "about") for url in page.requests), \
        page.requests


def test_every_gif_decodes_in_the_browser(page):
    gifs = [im for im in page.images if im["mime"] == "image/gif"]
    assert len(gifs) == len(SMALL_CLIPS), "one GIF per clip"
    assert all(im["decoded"] and im["width"] == 160 and im["height"] > 0 for im in gifs), gifs
    plots = [im for im in page.images if im["mime"] == "image/png"]
    assert len(plots) == 2 and all(im["decoded"] and im["width"] > 0 for im in plots)


def test_the_scores_table_holds_the_scores_of_scores_json(page, run):
    scores = json.loads((run / "scores.json").read_text())
    assert [row[0] for row in page.table] == ["metric", *METRIC_KEYS]
    for row in page.table[1:]:
        model, baseline = scores[row[0]], scores["baseline"][row[0]]
        assert row[1:] == ["n/a" if model is None else f"{model:.4f}",
                           "n/a" if baseline is None else f"{baseline:.4f}"], row
    assert page.problems(scores) == []


def test_the_check_finds_what_a_broken_page_does(tmp_path):
    """The check can fail: a GIF that does not decode, a console error, a request off the machine, a wrong score."""
    html = ("<!DOCTYPE html><html><head><title>t</title></head><body>"
            "<img alt='cut' src='data:image/gif;base64,R0lGODlhAQABAIAAAP'>"
            "<img alt='far' src='http://example.org/x.png'><script>console.error('boom')</script>"
            "<table class='scores'><tr><th>metric</th><th>model</th><th>baseline</th></tr>"
            + "".join(f"<tr><th>{key}</th><td>0.5000</td><td>n/a</td></tr>" for key in METRIC_KEYS)
            + "</table></body></html>")
    (tmp_path / "report.html").write_text(html)
    page = browser.open_page(tmp_path / "report.html", CHROMIUM)
    scores = {**{key: 0.5 for key in METRIC_KEYS}, "cider": 0.6, "baseline": {key: None for key in METRIC_KEYS}}
    problems = "\n".join(page.problems(scores))
    assert "console: boom" in problems
    assert "request failed: http://example.org/x.png" in problems and "not offline" in problems
    assert "image 'cut' (image/gif) does not decode" in problems
    assert "scores table row cider" in problems and "row bleu4" not in problems


def test_the_same_script_writes_the_screenshot(page, run, tmp_path):
    shot = Image.open(io.BytesIO(page.screenshot))
    assert shot.format == "PNG" and shot.size == (browser.WIDTH, browser.HEIGHT)
    assert len(shot.convert("L").getcolors()) > 16, "a blank screenshot"
    out = tmp_path / "report.png"
    assert browser.main([str(run / "report.html"), "--screenshot", str(out), "--full-page"]) == 0
    width, height = Image.open(out).size
    assert width == browser.WIDTH and height > browser.HEIGHT, "the whole page, taller than the window"
