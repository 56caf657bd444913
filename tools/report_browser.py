"""Opens an evaluation report in headless Chromium to check it as a reader's browser shows it, or to screenshot it.

Reads `RUN/report.html` (and `RUN/scores.json` beside it); writes nothing unless
asked for a screenshot (`--screenshot docs/report.png` is how the one in `docs/` is
made). Chromium is the distribution's package (`apt-get install chromium`; `.ci/run`
installs it), driven over the DevTools protocol through a pipe
(`--remote-debugging-pipe`: JSON messages ending in a NUL byte on file descriptors
3 and 4), so no port, websocket library or browser download is needed. The page is
opened from its `file://` URL with the network emulated offline, and the check
collects:

- every console error, uncaught exception and error log entry of the page;
- every failed request, and every request that is not for a `file:`, `data:` or
  `about:` URL (a report must open offline);
- every image: its MIME type, natural size and whether `img.decode()` resolved;
- the scores table, cell by cell, to hold against `scores.json`.

    python tools/report_browser.py runs/demo/report.html                    # check; exit 1 on a problem
    python tools/report_browser.py runs/demo/report.html --screenshot docs/report.png --full-page

`CHROMIUM=/path/to/chrome` picks the browser; otherwise the first of `chromium`,
`chromium-browser`, `google-chrome` found on the PATH.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.metrics import METRIC_KEYS  # the rows of the scores table

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# A closed network refuses Chromium's background connections; these keep it from trying.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe")
TIMEOUT = 60.0  # seconds for any one answer of the browser
WIDTH, HEIGHT = 1120, 1200  # the window, in CSS pixels: wide enough for the report's plots side by side

# Runs in the page once it has loaded: decodes every image and reads the scores table.
PAGE_SCRIPT = """(async () => {
  const images = [];
  for (const img of document.images) {
    let decoded = true, error = "";
    try { await img.decode(); } catch (e) { decoded = false; error = String(e); }
    const src = img.getAttribute("src") || "";
    images.push({alt: img.alt, mime: src.startsWith("data:") ? src.slice(5, src.indexOf(";")) : src.slice(0, 80),
                 width: img.naturalWidth, height: img.naturalHeight, decoded, error});
  }
  const table = [...document.querySelectorAll("table.scores tr")].map(
    tr => [...tr.cells].map(cell => cell.textContent.trim()));
  return {title: document.title, images, table};
})()"""


class BrowserError(RuntimeError):
    """Chromium did not start, answered with an error, or did not answer in time."""


def find_chromium() -> str | None:
    """The browser to use: `$CHROMIUM`, else the first known name on the PATH; None when there is none."""
    named = os.environ.get("CHROMIUM")
    if named:
        return shutil.which(named)
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


class Chromium:
    """One headless Chromium with a fresh profile, spoken to over the DevTools pipe."""

    def __init__(self, executable: str):
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        self._log = open(Path(self._profile.name) / "stderr.log", "wb")
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()

        def wire_fds():  # in the child: the browser reads commands on fd 3 and writes answers on fd 4
            read, write = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser))
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
                                        stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                        close_fds=False, preexec_fn=wire_fds)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """The result of one DevTools command; events that arrive meanwhile are kept in `events`."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error'].get('message')}")
                return answer.get("result", {})

    def wait_for(self, method: str, session: str | None = None) -> dict:
        """The first event `method` (of `session`), kept or still to come."""
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self._receive()

    def _receive(self) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError(f"Chromium gave no answer in {TIMEOUT:.0f} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium exited (status {self.process.poll()}): {self.stderr_tail()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def stderr_tail(self) -> str:
        self._log.flush()
        return (Path(self._profile.name) / "stderr.log").read_text(errors="replace")[-2000:]

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self._log.close()
        self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class PageCheck:
    """What Chromium saw of one page."""

    url: str
    title: str = ""
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, data URIs cut short
    images: list[dict] = field(default_factory=list)  # {alt, mime, width, height, decoded, error}
    table: list[list[str]] = field(default_factory=list)  # the scores table, rows of cell texts
    screenshot: bytes = b""  # PNG, when asked for

    def problems(self, scores: dict | None = None) -> list[str]:
        """Everything wrong with the page, in words; with `scores` (scores.json), the table is checked too."""
        found = [f"console: {line}" for line in self.console_errors]
        found += [f"request failed: {line}" for line in self.failed_requests]
        found += [f"not offline: the page asks for {url}" for url in self.requests
                  if url.split(":", 1)[0] not in ("file", "data", "about")]
        found += [f"image {im['alt']!r} ({im['mime']}) does not decode: {im['error'] or 'no size'}"
                  for im in self.images if not (im["decoded"] and im["width"] > 0 and im["height"] > 0)]
        if scores is not None:
            found += table_problems(self.table, scores)
        return found


def table_problems(table: list[list[str]], scores: dict) -> list[str]:
    """Where the page's scores table differs from `scores` (model and baseline columns; the page prints 4 places)."""
    if not table or table[0] != ["metric", "model", "baseline"]:
        return [f"no scores table with a metric/model/baseline header: {table[:1]}"]
    rows = {row[0]: row[1:] for row in table[1:] if row}
    found = []
    for key in METRIC_KEYS:
        expected = [scores.get(key), scores.get("baseline", {}).get(key)]
        if key not in rows or not all(map(_same, rows[key], expected)) or len(rows[key]) != 2:
            found.append(f"scores table row {key}: {rows.get(key)} where scores.json gives {expected}")
    return found


def _same(cell: str, value: float | None) -> bool:
    """A printed cell holds `value`: "n/a" for None, else the number to within half its last printed place."""
    if value is None or cell == "n/a":
        return value is None and cell == "n/a"
    try:
        return abs(float(cell) - value) <= 0.5 * 10.0 ** -len(cell.partition(".")[2]) + 1e-12
    except ValueError:
        return False


def open_page(path: str | Path, executable: str, width: int = WIDTH, height: int = HEIGHT,
              screenshot: bool = False, full_page: bool = False) -> PageCheck:
    """Load the HTML file at `path` offline in `executable` and collect what `PageCheck` holds; the screenshot is
    of a `width` x `height` window, or of the whole page (`full_page`)."""
    url = Path(path).resolve().as_uri()
    check = PageCheck(url)
    with Chromium(executable) as browser:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        try:  # deprecated in recent Chromium; without it, the check of every request's URL still holds
            offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
            browser.send("Network.emulateNetworkConditions", offline, session)
        except BrowserError:
            pass
        browser.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                            "mobile": False}, session)
        browser.events.clear()
        navigated = browser.send("Page.navigate", {"url": url}, session)
        if navigated.get("errorText"):
            check.failed_requests.append(f"{url}: {navigated['errorText']}")
        browser.wait_for("Page.loadEventFired", session)
        page = browser.send("Runtime.evaluate", {"expression": PAGE_SCRIPT, "awaitPromise": True,
                                                 "returnByValue": True}, session)
        if "exceptionDetails" in page:
            raise BrowserError(f"the check's script failed in the page: {page['exceptionDetails']}")
        value = page["result"]["value"]
        check.title, check.images, check.table = value["title"], value["images"], value["table"]
        if screenshot:
            if full_page:
                page_height = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"]
                browser.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": int(page_height + 0.5),
                                                                    "deviceScaleFactor": 1, "mobile": False}, session)
            shot = browser.send("Page.captureScreenshot", {"format": "png"}, session)
            check.screenshot = base64.b64decode(shot["data"])
        _collect(check, browser.events)
    return check


def _collect(check: PageCheck, events: list[dict]) -> None:
    requests = {}
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            check.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                 for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            check.console_errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            check.console_errors.append(f"{entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            requests[params["requestId"]] = url[:60] + "..." if url.startswith("data:") else url
        elif method == "Network.loadingFailed":
            check.failed_requests.append(f"{requests.get(params['requestId'], '?')}: {params.get('errorText')}")
        elif method == "Network.responseReceived" and params["response"].get("status", 0) >= 400:
            check.failed_requests.append(f"{params['response']['url']}: HTTP {params['response']['status']}")
    check.requests = list(requests.values())


def small_png(png: bytes) -> bytes:
    """The screenshot as a 256-colour PNG: a report is mostly flat colour and text, and a palette keeps the file a
    third the size. Octree quantizing keeps the plots' few line colours, which median cut merged."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="the report.html to open (its scores.json beside it is checked too)")
    parser.add_argument("--screenshot", metavar="PNG", help="also write a screenshot of the window here")
    parser.add_argument("--full-page", action="store_true", help="the screenshot holds the whole page")
    parser.add_argument("--width", type=int, default=WIDTH, help="window width in CSS pixels")
    parser.add_argument("--height", type=int, default=HEIGHT, help="window height in CSS pixels")
    args = parser.parse_args(argv)
    executable = find_chromium()
    if executable is None:
        print("error: no Chromium found (apt-get install chromium, or CHROMIUM=/path/to/chrome)", file=sys.stderr)
        return 2
    check = open_page(args.report, executable, args.width, args.height, bool(args.screenshot), args.full_page)
    scores_path = Path(args.report).parent / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.is_file() else None
    gifs = sum(im["mime"] == "image/gif" for im in check.images)
    print(f"{check.url}: {check.title!r}, {len(check.images)} images ({gifs} GIFs), "
          f"{len(check.table) - 1} score rows, {len(check.requests)} requests")
    if args.screenshot:
        Path(args.screenshot).write_bytes(small_png(check.screenshot))
        print(f"screenshot: {args.screenshot}")
    problems = check.problems(scores)
    for problem in problems:
        print(f"problem: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
