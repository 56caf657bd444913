"""Generates the sample set: synthetic captioned clips that need no download.

Writes, under `SAMPLE` (default `data/sample`): `raw/*.avi` (a coloured shape
moving over a lightly textured background lit from one corner), `training_label.json` and
`testing_label.json` (MLDS JSON, five paraphrased references per clip) and
`attributes.json` (each clip's colour, shape and motion). Some (colour, shape,
motion) combinations never appear in training and make up the test split, so the
test measures generalisation rather than memory. Deterministic for a seed.
`attributes.py` reads them back out of a model's captions.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .config import SampleConfig, parse_config, print_config
from .errors import run_command
from .files import write_json

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40)}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down")
SHAPE_WORDS = {"circle": ("circle", "ball", "disc"), "square": ("square", "box", "block"), "triangle": ("triangle",)}
MOTION_PHRASES = {"left": ("to the left", "left", "leftwards"), "right": ("to the right", "right", "rightwards"),
                  "up": ("up", "upwards", "upward"), "down": ("down", "downwards", "downward")}
CLIP_FPS = 8
# Grey levels from the darkest corner (top left) to the lightest (bottom right). ImageNet networks learn
# from mirrored images, so their pooled features of a clip and of its mirror image are nearly the same:
# over a plain background "left" and "right" look alike. Over this light, a shape moving right passes
# from dark to light ground, and the features tell the direction.
LIGHT_RAMP = 120
TEMPLATES = ("a {colour} {shape} is moving {motion}", "a {colour} {shape} moves {motion}",
             "the {colour} {shape} goes {motion}", "a {colour} {shape} is sliding {motion}",
             "there is a {colour} {shape} moving {motion}")


PAIRS = ((0, 1), (0, 2), (1, 2))  # (colour, shape), (colour, motion), (shape, motion)


def held_out_combinations(n: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """`n` (colour, shape, motion) combinations to keep out of training, spread so that every pair of
    attributes loses as few of its combinations as it can (at most `n` / its number of values, rounded up):
    each held-out triple is then made of pairs training shows with other third attributes, and the test
    asks to put known pairs together anew rather than to guess a pair never seen."""
    values = (tuple(COLOURS), SHAPES, MOTIONS)
    order = [tuple(values[k][i] for k, i in enumerate(index)) for index in
             itertools.product(*(range(len(v)) for v in values))]
    order = [order[i] for i in rng.permutation(len(order))]
    caps = {(i, j): -(-n // (len(values[i]) * len(values[j]))) for i, j in PAIRS}

    def fits(chosen: list, combo: tuple) -> bool:
        return all(sum((c[i], c[j]) == (combo[i], combo[j]) for c in chosen) < cap for (i, j), cap in caps.items())

    def reachable(chosen: list, start: int) -> bool:  # can the combinations from `start` on still complete n?
        for (i, j), cap in caps.items():
            used = Counter((c[i], c[j]) for c in chosen)
            left = Counter((c[i], c[j]) for c in order[start:])
            if sum(min(cap - used[pair], count) for pair, count in left.items()) < n - len(chosen):
                return False
        return True

    def extend(chosen: list, start: int) -> list | None:  # depth-first, in the random order
        if len(chosen) == n:
            return chosen
        if not reachable(chosen, start):
            return None
        for k in range(start, len(order)):
            if fits(chosen, order[k]):
                found = extend(chosen + [order[k]], k + 1)
                if found:
                    return found
        return None

    return sorted(extend([], 0))


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Light grey with a soft texture and a slight tint, lit from the bottom right (see LIGHT_RAMP)."""
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 16)
    noise = noise / (np.abs(noise).max() + 1e-6)
    base = rng.uniform(150, 200) + 18 * noise
    tint = rng.uniform(-8, 8, 3)
    textured = np.clip(base[..., None] + tint, 0, 255).astype(np.uint8)  # (size, size, 3) RGB
    ramp = np.linspace(-0.5, 0.5, size) * LIGHT_RAMP / 2  # (size,): half of the ramp along each axis
    lit = textured + ramp[None, :, None] + ramp[:, None, None]
    return np.clip(lit, 0, 255).astype(np.uint8)


def _draw(frame: np.ndarray, shape: str, centre: tuple[float, float], radius: float, colour) -> None:
    x, y, r = int(round(centre[0])), int(round(centre[1])), int(round(radius))
    bgr = tuple(int(v) for v in colour[::-1])
    if shape == "circle":
        cv2.circle(frame, (x, y), r, bgr, -1, cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(frame, (x - r, y - r), (x + r, y + r), bgr, -1, cv2.LINE_AA)
    else:
        points = np.array([[x, y - r], [x - r, y + r], [x + r, y + r]], np.int32)
        cv2.fillPoly(frame, [points], bgr, cv2.LINE_AA)


def render_clip(path: Path, colour: str, shape: str, motion: str, cfg: SampleConfig,
                rng: np.random.Generator) -> None:
    """Write one clip: the shape crosses most of the frame in the direction `motion`."""
    size = cfg.size
    radius = rng.uniform(0.10, 0.15) * size
    lo, hi = radius + 2, size - radius - 2
    start, end = rng.uniform(lo, lo + 0.1 * size), rng.uniform(hi - 0.1 * size, hi)
    across = rng.uniform(0.3 * size, 0.7 * size)
    forward = motion in ("right", "down")
    path_pos = np.linspace(start, end, cfg.frames) if forward else np.linspace(end, start, cfg.frames)
    background = cv2.cvtColor(_background(size, rng), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), CLIP_FPS, (size, size))
    for pos in path_pos:
        frame = background.copy()
        centre = (pos, across) if motion in ("left", "right") else (across, pos)
        _draw(frame, shape, centre, radius, COLOURS[colour])
        writer.write(frame)
    writer.release()


def references(colour: str, shape: str, motion: str, rng: np.random.Generator) -> list[str]:
    """One paraphrase per template of what happens in the clip, each with its own synonyms."""
    return [template.format(colour=colour, shape=rng.choice(SHAPE_WORDS[shape]),
                            motion=rng.choice(MOTION_PHRASES[motion])) for template in TEMPLATES]


def generate(cfg: SampleConfig) -> dict[str, Path]:
    """Write the whole sample set; returns the paths of what it wrote."""
    root = Path(cfg.sample)
    raw = root / "raw"
    out = {"raw": raw, "train": root / "training_label.json", "test": root / "testing_label.json",
           "attributes": root / "attributes.json"}
    if _already_generated(root, cfg, out):
        print(f"{root} already holds this sample set; nothing to generate")
        return out
    rng = np.random.default_rng(cfg.seed)
    raw.mkdir(parents=True, exist_ok=True)
    test_combos = set(held_out_combinations(cfg.held_out, rng))
    plan = [(combo, combo in test_combos, k) for combo in itertools.product(COLOURS, SHAPES, MOTIONS)
            for k in range(cfg.test_clips_per_combination if combo in test_combos else cfg.clips_per_combination)]
    labels = {"train": [], "test": []}
    attributes = {}
    for (colour, shape, motion), is_test, k in tqdm(plan, desc="sample clips", unit="clip"):
        vid = f"{colour}_{shape}_{motion}_{k:02d}.avi"
        render_clip(raw / vid, colour, shape, motion, cfg, rng)
        labels["test" if is_test else "train"].append({"id": vid, "caption": references(colour, shape, motion, rng)})
        attributes[vid] = {"colour": colour, "shape": shape, "motion": motion}
    write_json(out["train"], labels["train"])
    write_json(out["test"], labels["test"])
    write_json(out["attributes"], attributes)
    write_json(root / "config.json", asdict(cfg) | {"held_out_combinations": sorted(map(list, test_combos))})
    return out


def _already_generated(root: Path, cfg: SampleConfig, out: dict[str, Path]) -> bool:
    """True when `root` holds a complete set made with `cfg` (so clips keep their mtimes)."""
    config = root / "config.json"
    if not config.is_file() or not all(p.exists() for p in out.values()):
        return False
    made_with = json.loads(config.read_text())
    made_with.pop("held_out_combinations", None)
    n_clips = len(json.loads(out["attributes"].read_text()))
    return made_with == asdict(cfg) and len(list(out["raw"].glob("*.avi"))) == n_clips


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SampleConfig, "Generate the embedded sample dataset (make sample).", argv)
    print_config("sample", cfg)
    return run_command(lambda: _run(cfg))


def _run(cfg: SampleConfig) -> int:
    out = generate(cfg)
    print(f"clips: {out['raw']}\nlabels: {out['train']}, {out['test']}\nattributes: {out['attributes']}")
    return 0
