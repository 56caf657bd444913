"""Several feature streams in one model: stores read side by side, the checkpoint recording each, caption.py
extracting each, and a two-stream run from extraction to captions of files through the make targets."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from conftest import CLIPS_DIR, SMALL_CLIPS, STORE_SETTINGS, random_store, run_make, source_attrs
from pipeline import caption_files
from pipeline.backbones import WeightsError, get_spec
from pipeline.checkpoint import feature_problems, load_checkpoint, trained_streams
from pipeline.config import CaptionConfig, EvalConfig, ExtractConfig, TrainConfig, parse_config
from pipeline.dataset import usable_ids
from pipeline.errors import ConfigError
from pipeline.features import extract
from pipeline.labels import load_captions
from pipeline.store import FeatureStore, StoreError
from pipeline.streams import FeatureStreams
from pipeline.vocab import tokenize

WIDE = dataclasses.replace(STORE_SETTINGS, backbone="resnet50", feature_dim=6)
NARROW = dataclasses.replace(STORE_SETTINGS, backbone="r2plus1d_18", feature_dim=3, window=16)
IDS = ["a.avi", "b.avi", "c.avi"]


def _pair(tmp_path, first_ids=IDS, second_ids=IDS):
    return (random_store(tmp_path / "wide.h5", first_ids, WIDE), random_store(tmp_path / "narrow.h5", second_ids,
                                                                                 NARROW))


def test_streams_read_each_frames_features_side_by_side_in_the_order_named(tmp_path):
    wide, narrow = _pair(tmp_path)
    streams = FeatureStreams([wide, narrow])
    features = streams.read_many(["c.avi", "a.avi"])  # (2, F, 6 + 3)
    assert features.shape == (2, 4, 9) and streams.feature_dim == 9 and streams.frames == 4
    np.testing.assert_array_equal(features[..., :6], FeatureStore(wide).read_many(["c.avi", "a.avi"]))
    np.testing.assert_array_equal(features[..., 6:], FeatureStore(narrow).read_many(["c.avi", "a.avi"]))
    assert streams.describe() == "resnet50 (6) + r2plus1d_18 (3)" and streams.name == f"{wide} + {narrow}"
    assert streams.settings == [WIDE, NARROW]
    one = FeatureStreams(wide)  # one store reads exactly as the store does
    np.testing.assert_array_equal(one.read_many(IDS), FeatureStore(wide).read_many(IDS))
    assert one.describe() == "resnet50" and one.feature_dim == 6


def test_a_video_missing_from_one_stream_is_left_out_with_a_warning_naming_that_store(tmp_path):
    wide, narrow = _pair(tmp_path, second_ids=IDS[:2])
    streams = FeatureStreams([wide, narrow])
    with pytest.warns(UserWarning, match=r"1 of 3 videos in labels.json have no features in .*narrow.h5 "
                                         r"\(first: c.avi\); they are left out. Put their clips in RAW and run "
                                         r"`make features BACKBONE=r2plus1d_18 FRAMES=4 WEIGHTS=random FEATURES="
                                         r".*narrow.h5` to include them") as caught:
        assert usable_ids({vid: ["x"] for vid in IDS}, streams, "labels.json") == IDS[:2]
    assert not any("wide.h5" in str(w.message) for w in caught)
    with pytest.warns(UserWarning, match="in the stores have no features in .*narrow.h5"):
        assert streams.ids() == IDS[:2]  # make captions: the videos every stream holds


def test_videos_made_from_another_version_of_their_clip_in_one_stream_are_left_out(tmp_path):
    """A store extracted from another version of a clip holds features of other frames (another sampling, or
    another file of the same length) than the other stream's: the video is left out, said."""
    stores = []
    for name, settings, changed in (("one.h5", WIDE, {}), ("two.h5", NARROW, {"b.avi": {"indices": np.arange(4) * 13},
                                                                            "c.avi": {"source_size": 7}})):
        store = FeatureStore.open_or_create(tmp_path / name, settings, {})
        for i, vid in enumerate(IDS):
            store.write(vid, np.ones((4, settings.feature_dim), np.float32), source_attrs(i) | changed.get(vid, {}))
        stores.append(store.path)
    with pytest.warns(UserWarning, match=r"2 of the videos of labels.json were made from another clip file, or "
                                         r"sampled at other frames, in .*two.h5 than in .*one.h5 \(first: b.avi, "
                                         r"c.avi\)"):
        assert usable_ids({vid: ["x"] for vid in IDS}, FeatureStreams(stores), "labels.json") == ["a.avi"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one stream alone: nothing to compare, nothing said
        assert FeatureStreams(stores[1]).ids() == IDS


def test_streams_holding_no_video_in_common_are_refused_for_captioning_all(tmp_path):
    wide, narrow = _pair(tmp_path, first_ids=IDS[:1], second_ids=IDS[1:])
    with pytest.warns(UserWarning), pytest.raises(StoreError, match="no video is in every store of .*wide.h5 \\+ "
                                                                    ".*narrow.h5"):
        FeatureStreams([wide, narrow]).ids()


def test_streams_are_read_into_one_array_without_a_second_copy_of_the_set(tmp_path):
    """Loading a split whole holds its features once: each store reads into its columns (a float16 stream
    beside a float32 one is widened as it is read)."""
    import tracemalloc

    ids = [f"v{i:03}.avi" for i in range(200)]
    wide = random_store(tmp_path / "wide.h5", ids, dataclasses.replace(WIDE, feature_dim=256))
    half = FeatureStore.open_or_create(tmp_path / "half.h5", dataclasses.replace(NARROW, feature_dim=256,
                                                                                 dtype="float16"), {})
    for i, vid in enumerate(ids):
        half.write(vid, np.full((4, 256), i, np.float16), source_attrs())
    streams = FeatureStreams([wide, half.path])
    tracemalloc.start()
    features = streams.read_many(ids)  # (200, 4, 512) float32
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert features.dtype == np.float32 and features.shape == (200, 4, 512)
    assert peak < 1.2 * features.nbytes, f"{peak / features.nbytes:.2f}x the set's size"
    np.testing.assert_array_equal(features[..., :256], FeatureStore(wide).read_many(ids))
    np.testing.assert_array_equal(features[7, :, 256:], np.full((4, 256), 7, np.float32))


def test_a_run_trained_before_streams_still_evaluates_captions_files_and_checks_its_stores(tiny_run, clip_features,
                                                                                          tmp_path):
    """A checkpoint of one store's settings as a dict (made before streams) is read as one stream everywhere."""
    from pipeline.checkpoint import save_checkpoint
    from pipeline.evaluation import caption_all

    checkpoint = load_checkpoint(tiny_run / "best.pt")
    checkpoint["feature_settings"] = checkpoint["feature_settings"][0]
    old = tmp_path / "old"
    old.mkdir()
    save_checkpoint(old / "best.pt", checkpoint)
    path = caption_all(EvalConfig(run_dir=str(old), features=str(clip_features), beam=1))
    assert len(path.read_text().splitlines()) == len(SMALL_CLIPS)
    captions, failures = caption_files.caption_files(CaptionConfig(videos=[str(SMALL_CLIPS[0])], run_dir=str(old)))
    assert list(captions) == [SMALL_CLIPS[0].name] and not failures
    wide = random_store(tmp_path / "wide.h5", IDS, WIDE)
    assert feature_problems(checkpoint, FeatureStreams(wide))[0].startswith("features backbone: 'efficientnet_lite0'")


def test_streams_of_other_frame_counts_or_a_store_named_twice_are_refused(tmp_path):
    wide, _ = _pair(tmp_path)
    longer = random_store(tmp_path / "longer.h5", IDS, dataclasses.replace(NARROW, frames=8))
    with pytest.raises(StoreError, match=r"sample different numbers of frames .*wide.h5: 4, .*longer.h5: 8.*same "
                                         r"FRAMES"):
        FeatureStreams([wide, longer])
    with pytest.raises(ConfigError, match="names one store more than once"):
        FeatureStreams([wide, str(wide)])
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.h5"
    link.symlink_to(wide)
    for same in (tmp_path / "sub" / ".." / "wide.h5", link):  # the same file by another path
        with pytest.raises(ConfigError, match="names one store more than once"):
            FeatureStreams([wide, same])
    copy = shutil.copy2(wide, tmp_path / "copy.h5")
    with pytest.raises(ConfigError, match=r"wide.h5 and .*copy.h5 hold features made alike \(resnet50, the same "
                                          r"weights and FRAMES\).*read the same features twice"):
        FeatureStreams([wide, copy])
    with pytest.raises(ConfigError, match="names no feature store"):
        FeatureStreams([])


def test_features_take_one_store_or_several_from_the_command_line_and_from_python():
    cfg = parse_config(TrainConfig, "", ["--features", "clip_vitb32_80.h5", "r2plus1d_18_80.h5", "--epochs", "3"])
    assert cfg.features == ("clip_vitb32_80.h5", "r2plus1d_18_80.h5") and cfg.epochs == 3
    assert parse_config(TrainConfig, "", ["--features", "a.h5", "--features", "b.h5"]).features == ("a.h5", "b.h5")
    caption = parse_config(CaptionConfig, "", ["--weights", "w.pt", "a.avi", "--weights", "v.pt", "b.avi"])
    assert caption.weights == ("w.pt", "v.pt") and caption.videos == ["a.avi", "b.avi"], "--weights takes one file"
    assert CaptionConfig(videos=["a.avi"], weights="").weights == (), "the old default: no file"
    assert parse_config(EvalConfig, "", []).features == ("data/features/vgg16_80.h5",)
    assert TrainConfig(features="my store.h5").features == ("my store.h5",), "a path holding a space is one store"
    assert EvalConfig(features=["a.h5", "b.h5"]).features == ("a.h5", "b.h5")
    assert json.loads(json.dumps(dataclasses.asdict(cfg)))["features"] == list(cfg.features)  # config.json


def test_make_features_refuses_several_stores_naming_what_to_run():
    proc = run_make("-n", "features", "FEATURES=a.h5 b.h5", check=False)
    assert proc.returncode == 2
    assert "names several stores, and make features writes one at a time" in proc.stderr
    assert "run it once per store, with that store's network, e.g. make features BACKBONE=<its network> " \
           "FEATURES=b.h5" in proc.stderr


def _checkpoint_of(*settings) -> dict:
    return {"feature_settings": [dataclasses.asdict(s) for s in settings]}


def test_a_two_stream_checkpoint_is_refused_for_other_stores_naming_what_differs(tmp_path):
    wide, narrow = _pair(tmp_path)
    checkpoint = _checkpoint_of(WIDE, NARROW)
    assert feature_problems(checkpoint, FeatureStreams([wide, narrow])) == []
    [fewer] = feature_problems(checkpoint, FeatureStreams(wide))
    assert "trained on resnet50 + r2plus1d_18, FEATURES names resnet50" in fewer and "2 streams, in order" in fewer
    assert feature_problems(checkpoint, FeatureStreams([narrow, wide])) == [
        f"FEATURES names the run's stores in another order: give them as the run was trained (resnet50 + "
        f"r2plus1d_18), FEATURES=\"{wide} {narrow}\""]
    other_kind = random_store(tmp_path / "s3d.h5", IDS, dataclasses.replace(NARROW, backbone="s3d"))
    assert feature_problems(checkpoint, FeatureStreams([wide, other_kind])) == [
        f"stream 2, {other_kind}: backbone: 'r2plus1d_18' in the run, 's3d' in this store"]
    other = random_store(tmp_path / "other.h5", IDS, dataclasses.replace(NARROW, weights="file:k.pt:sha256=1"))
    [weights] = feature_problems(checkpoint, FeatureStreams([wide, other]))
    assert weights.startswith(f"stream 2, {other}: weights: 'random(seed=0)' in the run, 'file:k.pt")


def test_a_checkpoint_made_before_streams_reads_as_one_stream():
    assert trained_streams({"feature_settings": dataclasses.asdict(WIDE)}) == [WIDE]
    assert trained_streams(_checkpoint_of(WIDE, NARROW)) == [WIDE, NARROW]


def test_caption_py_finds_each_streams_weights_file_by_its_content(tmp_path):
    """A stream made with WEIGHTS=file needs that file again; among several given, the one whose content
    matches is used, and a missing or other file is named."""
    torch.manual_seed(1)
    weights = tmp_path / "lite.pt"
    torch.save(get_spec("efficientnet_lite0").build().state_dict(), weights)
    store = tmp_path / "lite.h5"
    extract(ExtractConfig(raw=str(CLIPS_DIR), features=str(store), backbone="efficientnet_lite0",
                          weights=str(weights), frames=2))
    settings = FeatureStore(store).settings
    checkpoint = _checkpoint_of(settings, NARROW)
    with pytest.raises(WeightsError, match=r"efficientnet_lite0 features were made with the weights file lite.pt "
                                           r"\(sha256=\w+\); pass it with --weights PATH$"):
        caption_files.stream_backbones(checkpoint, (), torch.device("cpu"))
    other = tmp_path / "other.pt"
    torch.save({"x": torch.zeros(1)}, other)
    with pytest.raises(WeightsError, match=r"none of the files given is it"):
        caption_files.stream_backbones(checkpoint, (str(other),), torch.device("cpu"))
    lite, video = caption_files.stream_backbones(_checkpoint_of(settings, dataclasses.replace(
        NARROW, weights="random(seed=0)", layer=get_spec("r2plus1d_18").layer, feature_dim=512,
        preprocessing=json.dumps(get_spec("r2plus1d_18").preprocess.to_dict(), sort_keys=True))),
        (str(other), str(weights)), torch.device("cpu"))
    assert lite.weights == settings.weights and video.spec.window == 16


TINY_MODEL = ("--hidden 64 --embed 64 --captions-per-epoch all --schedule constant --val-fraction 0 --dropout 0 "
              "--lr 3e-3 --min-count 1")


@pytest.fixture(scope="module")
def two_streams(tmp_path_factory) -> dict:
    """Two stores of the four clips here, 4 frames each: real ImageNet EfficientNet-Lite0 frame features and
    R(2+1)D window features (random weights: no Kinetics weights offline), and a run taught one caption a clip
    on both, through `make train FEATURES="a b"`."""
    folder = tmp_path_factory.mktemp("streams")
    stores = [folder / "lite_4.h5", folder / "r2plus1d_18_4.h5"]
    for store, backbone, weights in zip(stores, ("efficientnet_lite0", "r2plus1d_18"), ("imagenet", "random")):
        summary = extract(ExtractConfig(raw=str(CLIPS_DIR), features=str(store), backbone=backbone, weights=weights,
                                        frames=4, precision="fp32"))
        assert len(summary.done) == len(SMALL_CLIPS)
    taught = {vid: captions[:1] for vid, captions in load_captions(CLIPS_DIR / "labels.json").items()}
    labels = folder / "one_caption_each.json"
    labels.write_text(json.dumps([{"id": vid, "caption": captions} for vid, captions in taught.items()]))
    run = folder / "run"
    run_make("train", f"FEATURES={stores[0]} {stores[1]}", f"LABELS={labels}", f"RUN={run}", "EPOCHS=60",
             "BATCH=8", "DEVICE=cpu", f"TRAIN_ARGS={TINY_MODEL}")
    return {"stores": stores, "run": run, "taught": {vid: " ".join(tokenize(c[0])) for vid, c in taught.items()}}


def _id_captions(text: str) -> dict[str, str]:
    return dict(line.split(",", 1) for line in text.splitlines())


@pytest.mark.slow
def test_a_two_stream_run_trains_evaluates_and_captions_files_end_to_end(two_streams, tmp_path):
    stores, run = two_streams["stores"], two_streams["run"]
    features = " ".join(map(str, stores))
    checkpoint = load_checkpoint(run / "best.pt")
    assert [(s.backbone, s.window) for s in trained_streams(checkpoint)] == [("efficientnet_lite0", 1),
                                                                           ("r2plus1d_18", 16)]
    assert checkpoint["model_config"]["feature_dim"] == 1280 + 512
    assert json.loads((run / "config.json").read_text())["features"] == list(map(str, stores))

    run_make("eval", f"RUN={run}", f"FEATURES={features}", f"TEST_LABELS={CLIPS_DIR / 'labels.json'}",
             f"RAW={CLIPS_DIR}", "BEAM=1", "DEVICE=cpu")
    scores = json.loads((run / "scores.json").read_text())
    assert scores["n_videos"] == len(SMALL_CLIPS) and scores["cider"] > scores["baseline"]["cider"]
    run_make("captions", f"RUN={run}", f"FEATURES={features}", "BEAM=1", "DEVICE=cpu")
    stored = _id_captions((run / "captions_all.txt").read_text())
    assert stored == two_streams["taught"], "the run learnt each clip's caption from the two streams"

    renamed = shutil.copy2(SMALL_CLIPS[0], tmp_path / "new_clip.avi")  # a file the run never saw by that name
    proc = run_make("-s", "caption", f"VIDEO={renamed} {SMALL_CLIPS[1]}", f"RUN={run}", "BEAM=1", "DEVICE=cpu")
    assert _id_captions(proc.stdout) == {"new_clip.avi": stored[SMALL_CLIPS[0].name],
                                         SMALL_CLIPS[1].name: stored[SMALL_CLIPS[1].name]}

    proc = run_make("eval", f"RUN={run}", f"FEATURES={stores[1]} {stores[0]}", check=False)
    assert proc.returncode == 2 and "FEATURES names the run's stores in another order" in proc.stderr


@pytest.mark.slow
def test_caption_py_extracts_every_stream_as_the_stores_hold_it(two_streams):
    """caption.py's features of a file are the stores' features of that clip, stream by stream."""
    checkpoint = load_checkpoint(two_streams["run"] / "best.pt")
    backbones = caption_files.stream_backbones(checkpoint, (), torch.device("cpu"))
    from_file = caption_files.clip_features(backbones, trained_streams(checkpoint), SMALL_CLIPS[2])  # (4, 1792)
    stored = FeatureStreams(two_streams["stores"]).read_many([SMALL_CLIPS[2].name])[0]  # (4, 1792)
    np.testing.assert_allclose(from_file, stored, rtol=1e-5, atol=1e-5)


def test_a_command_line_prints_our_warnings_as_one_line_and_says_when_test_videos_were_left_out(capsys):
    from pipeline.errors import PipelineWarning, run_command
    from pipeline.scoring import format_scores

    def work() -> int:
        warnings.warn("1 of 4 videos in labels.json have no features in b.h5", PipelineWarning)
        warnings.warn("a library's own warning", DeprecationWarning)
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert run_command(work) == 0
    err = capsys.readouterr().err
    assert "warning: 1 of 4 videos in labels.json have no features in b.h5\n" in err
    assert "PipelineWarning" not in err and "warning: a library's own" not in err, "another's is shown as Python does"
    scores = dict.fromkeys(("mlds_bleu1", "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"), 0.5)
    summary = format_scores(scores | {"n_videos": 3, "videos_left_out": 1})
    assert "3 videos\n1 of the 4 test videos were left out (no features): these scores are not comparable" in summary
    assert "left out" not in format_scores(scores | {"n_videos": 4})


def test_make_caption_without_files_says_how_to_name_them():
    proc = run_make("-n", "caption", "VIDEO=", check=False)
    assert proc.returncode == 2 and 'make caption needs the files to caption: make caption VIDEO="a.avi b.mp4"' \
        in proc.stderr
