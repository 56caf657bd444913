"""The README and `docs/` are code: every Python block in them runs, every link in them leads somewhere, and every
module says in one sentence what it does.

The blocks run as a user would paste them, one fresh interpreter each, in a folder
laid out as `docs/features.md` ("Data layout") says: the four real MSVD clips of
`tests/data/msvd-clips` in `data/raw`, their captions as `data/training_label.json` and
`data/testing_label.json`, a small made-up VGG16 store at `data/features/vgg16_80.h5`
and a tiny run trained on it in `runs/s2vt`.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CLIPS_DIR, ROOT, SMALL_CLIPS, copy_clips
from pipeline.config import TrainConfig
from pipeline.store import FeatureStore, StoreSettings, package_versions
from pipeline.training import train

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(page.relative_to(ROOT).as_posix(), block) for page in PAGES
          for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A project folder as the README describes it after `make features` and `make train`."""
    folder = tmp_path_factory.mktemp("user")
    copy_clips(SMALL_CLIPS, folder / "data" / "raw")
    for name in ("training_label.json", "testing_label.json"):
        shutil.copy2(CLIPS_DIR / "labels.json", folder / "data" / name)
    settings = StoreSettings(backbone="vgg16", layer="fc7 after ReLU", feature_dim=4096, weights="random(seed=0)",
                             preprocessing="{}", frames=80, dtype="float32")
    store = FeatureStore.open_or_create(folder / "data" / "features" / "vgg16_80.h5", settings, package_versions())
    rng = np.random.default_rng(0)
    for i, clip in enumerate(SMALL_CLIPS):
        store.write(clip.name, rng.random((80, 4096), dtype=np.float32),
                    {"source_size": i, "source_mtime_ns": i, "n_frames": 80, "fps": 30.0,
                     "indices": np.arange(80), "decoder": "opencv"})
    train(TrainConfig(features=str(store.path), labels=str(folder / "data" / "training_label.json"),
                      run_dir=str(folder / "runs" / "s2vt"), epochs=2, hidden=16, embed=16, val_fraction=0.25))
    return folder


def _block_ids() -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for page, _ in BLOCKS:
        ids.append(f"{page}-block{seen.get(page, 0)}")
        seen[page] = seen.get(page, 0) + 1
    return ids


def test_the_docs_have_python_blocks():
    assert len(PAGES) >= 10, "the README and the docs pages"
    assert len(BLOCKS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("page, block", BLOCKS, ids=_block_ids())
def test_every_python_block_of_the_readme_and_docs_runs(page, block, user_folder):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", block], cwd=user_folder, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, f"this block of {page} fails:\n{block}\n{proc.stderr[-3000:]}"


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_anchor(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'(?:src|href)="([^"]+)"', text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_of_the_readme_and_docs_leads_to_a_file_and_heading_that_exist(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue  # no page links off the repository
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (anchor and anchor not in _anchors(target)):
            broken.append(link)
    assert not broken, f"{page.name} links to what is not there: {broken}"


def test_the_code_points_to_the_docs_not_to_sections_the_readme_no_longer_has():
    headings = {h for page in PAGES for h in re.findall(r"^#+ (.*)$", page.read_text(), flags=re.M)}
    sources = [*ROOT.glob("pipeline/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("tools/*.py"), ROOT / "Makefile"]
    stale = []
    for source in sources:
        for page, section in re.findall(r"\((README|docs/[\w.]+), \"([^\"]+)\"\)", source.read_text()):
            if page == "README" or not any(section in h for h in headings):
                stale.append(f"{source.name}: ({page}, {section!r})")
    assert not stale, stale


def _first_sentence(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split()).split(". ")[0]


MODULES = sorted(p for p in [*ROOT.glob("pipeline/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("tools/*.py")]
                 if p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_module_says_what_it_does_in_one_sentence_without_and(path):
    sentence = _first_sentence(path)
    assert sentence, f"{path.name} opens with no docstring"
    assert " and " not in f" {sentence} ", f"{path.name}: one job per module, said without 'and': {sentence!r}"
