"""Scores how often a run's captions of the sample set name each clip's true colour, shape, motion.

Reads a run's `captions.txt` and the sample set's `attributes.json` (each clip's
true colour, shape and motion); adds `attributes` (the share of captions naming
the right colour, shape, motion, and all three) to the run's `scores.json`, and
prints it. BLEU and CIDEr saturate on such data (a caption that drops the motion
word still scores well), so the demo reports these accuracies beside them.

    python -m pipeline.attributes RUN/captions.txt SAMPLE/attributes.json [--scores RUN/scores.json]
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import AttributesConfig, parse_config
from .errors import PipelineError, run_command
from .files import write_json
from .labels import read_id_caption_lines
from .sample import COLOURS, MOTION_PHRASES, SHAPE_WORDS
from .vocab import tokenize


def parse_attributes(caption: str) -> dict[str, str | None]:
    """Colour, shape and motion named in a caption (None where it names none)."""
    words = set(tokenize(caption))
    found = {}
    for name, vocabulary in (("colour", {c: (c,) for c in COLOURS}), ("shape", SHAPE_WORDS),
                             ("motion", {m: tuple(w for p in ps for w in p.split() if w not in ("to", "the"))
                                         for m, ps in MOTION_PHRASES.items()})):
        named = [value for value, synonyms in vocabulary.items() if words & set(synonyms)]
        found[name] = named[0] if len(named) == 1 else None
    return found


def attribute_accuracy(captions: dict[str, str], truth: dict[str, dict]) -> dict[str, float]:
    """Share of `captions` naming the right colour, shape, motion, and all three."""
    hits = {"colour": 0, "shape": 0, "motion": 0, "all": 0}
    for vid, caption in captions.items():
        said = parse_attributes(caption)
        right = {k: said[k] == truth[vid][k] for k in ("colour", "shape", "motion")}
        for k, ok in right.items():
            hits[k] += ok
        hits["all"] += all(right.values())
    return {k: v / len(captions) for k, v in hits.items()} if captions else {k: 0.0 for k in hits}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(AttributesConfig, "Score the colour, shape and motion a run's captions of the sample set "
                                         "name; prints them and adds them to scores.json.", argv)
    return run_command(lambda: _run(cfg))


def _run(cfg: AttributesConfig) -> int:
    captions_path, attributes_path = Path(cfg.captions), Path(cfg.attributes)
    if not attributes_path.is_file():
        raise PipelineError(f"{attributes_path}: no such file (make sample writes it)")
    truth = json.loads(attributes_path.read_text())
    captions = {vid: caption for _, vid, caption in read_id_caption_lines(captions_path)}
    unknown = sorted(set(captions) - set(truth))
    if unknown:
        raise PipelineError(f"{captions_path}: {len(unknown)} videos are not in {attributes_path} (e.g. "
                            f"{unknown[:3]}): are these captions of the sample set?")
    accuracy = attribute_accuracy(captions, truth)
    print("attribute accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))
    if cfg.scores:
        scores = Path(cfg.scores)
        write_json(scores, json.loads(scores.read_text()) | {"attributes": accuracy})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
