"""The README is code: every Python block in it runs, and every module says in one sentence what it does.

The blocks run as a user would paste them, one fresh interpreter each, in a folder
laid out as the README's "Data layout" says: the four real MSVD clips of
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
from pipeline.features import package_versions
from pipeline.store import FeatureStore, StoreSettings
from pipeline.training import train

README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


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


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_every_python_block_of_the_readme_runs(block, user_folder):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", block], cwd=user_folder, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, f"this README block fails:\n{block}\n{proc.stderr[-3000:]}"


def _first_sentence(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split()).split(". ")[0]


MODULES = sorted(p for p in [*ROOT.glob("pipeline/*.py"), *ROOT.glob("bench/*.py")] if p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_module_says_what_it_does_in_one_sentence_without_and(path):
    sentence = _first_sentence(path)
    assert sentence, f"{path.name} opens with no docstring"
    assert " and " not in f" {sentence} ", f"{path.name}: one job per module, said without 'and': {sentence!r}"
