"""Label loaders on the shared files and on malformed ones; tokenizer; vocabulary."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from conftest import CLIPS_DIR, SHARED, needs_shared
from pipeline.labels import CaptionError, format_id_caption, load_captions
from pipeline.vocab import Vocab, tokenize

MLDS = SHARED / "msvd-mlds"
STANDARD = SHARED / "msvd-standard"


@needs_shared
def test_mlds_json_training_labels():
    captions = load_captions(MLDS / "training_label.json")
    assert len(captions) == 1450 and sum(map(len, captions.values())) == 24232
    assert captions["xBePrplM4OA_6_18.avi"]


@needs_shared
def test_mlds_json_test_labels():
    captions = load_captions(MLDS / "testing_label.json")
    assert len(captions) == 100 and sum(map(len, captions.values())) == 1674


@needs_shared
def test_id_caption_csv_is_the_seed_output_format():
    captions = load_captions(MLDS / "seed_output.txt")
    assert len(captions) == 100
    assert captions["ScdUht-pM6s_53_63.avi"] == ["a man is a a"]


@needs_shared
def test_msvd_standard_split():
    train = load_captions(STANDARD / "sents_train_lc_nopunc.txt")
    assert len(train) == 1200 and sum(map(len, train.values())) == 48774
    assert "a chipmunk is eating" in train["-4wsuPCjDBc_5_15.avi"]
    test = load_captions(STANDARD / "sents_test_lc_nopunc.txt")
    assert len(test) == 670 and sum(map(len, test.values())) == 27763


def _msrvtt(path: Path, splits: dict[str, str]) -> Path:
    """An MSR-VTT `videodatainfo` file: video `v` in `splits[v]`, with the captions "a v one" and "a v two"."""
    videos = [{"video_id": v, "split": split, "category": 0, "id": i} for i, (v, split) in enumerate(splits.items())]
    sentences = [{"video_id": v, "caption": f"a {v} {n}", "sen_id": 2 * i + k}
                 for i, v in enumerate(splits) for k, n in enumerate(("one", "two"))]
    path.write_text(json.dumps({"info": {"version": "1.0"}, "videos": videos, "sentences": sentences}))
    return path


def test_msr_vtt_json_is_read_as_downloaded_a_split_at_a_time(tmp_path):
    path = _msrvtt(tmp_path / "train_val_videodatainfo.json", {"video0": "train", "video1": "validate",
                                                                "video2": "train"})
    assert load_captions(path, "train") == {"video0.mp4": ["a video0 one", "a video0 two"],
                                            "video2.mp4": ["a video2 one", "a video2 two"]}
    assert list(load_captions(path, "validate")) == ["video1.mp4"]
    with pytest.raises(CaptionError, match=r"holds the splits train \(2 videos\), validate \(1 videos\): choose one "
                                           r"\(make: SPLIT=train"):
        load_captions(path)
    with pytest.raises(CaptionError, match=r"has no split 'val'; it holds train"):
        load_captions(path, "val")
    test = _msrvtt(tmp_path / "test_videodatainfo.json", {"video7": "test"})
    assert load_captions(test) == load_captions(test, "test") == {"video7.mp4": ["a video7 one", "a video7 two"]}


def test_vatex_json_reads_the_english_captions(tmp_path):
    path = tmp_path / "vatex_training_v1.0.json"
    path.write_text(json.dumps([{"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": ["A man plays.", "A man sings."],
                                 "chCap": ["一个男人在弹奏。"]},
                                {"videoID": "abc_000001_000011", "enCap": ["A dog runs."]}]))
    assert load_captions(path) == {"Ptf_2VRj-V0_000122_000132.mp4": ["A man plays.", "A man sings."],
                                   "abc_000001_000011.mp4": ["A dog runs."]}
    with pytest.raises(CaptionError, match="holds one split, so no split can be chosen in it"):
        load_captions(path, "train")


def test_the_msvd_standard_split_is_chosen_by_name_beside_any_of_its_files(tmp_path):
    (tmp_path / "youtube_video_to_id_mapping.txt").write_text("clipA vid1\nclipB vid2\nclipC vid3\n")
    for split, vid in (("train", "vid1"), ("val", "vid2"), ("test", "vid3")):
        (tmp_path / f"sents_{split}_lc_nopunc.txt").write_text(f"{vid}\ta {split} caption\n")
    for given in (tmp_path, tmp_path / "youtube_video_to_id_mapping.txt", tmp_path / "sents_train_lc_nopunc.txt"):
        assert load_captions(given, "val") == {"clipB.avi": ["a val caption"]}
    assert load_captions(tmp_path / "sents_test_lc_nopunc.txt") == {"clipC.avi": ["a test caption"]}
    with pytest.raises(CaptionError, match=r"holds the MSVD standard splits train, val, test .*: choose one"):
        load_captions(tmp_path)
    with pytest.raises(CaptionError, match="has no split 'validate'; it holds train, val, test"):
        load_captions(tmp_path, "validate")


def test_a_file_in_no_format_is_told_the_formats(tmp_path):
    path = tmp_path / "readme.txt"
    path.write_text("MSR-VTT 10K\n\nAll video info and caption sentences are stored in json files.\n")
    with pytest.raises(CaptionError, match=r"not a label format read here .*the formats are MLDS JSON .*MSR-VTT JSON"
                                           r".*VATEX JSON.*MSVD standard split"):
        load_captions(path)


@needs_shared
def test_the_real_msr_vtt_annotations_as_downloaded(tmp_path):
    for name in ("train_val_annotation.zip", "test_videodatainfo.json.zip"):
        zipfile.ZipFile(SHARED / "msr-vtt" / name).extractall(tmp_path)
    counts = {split: load_captions(tmp_path / "train_val_videodatainfo.json", split) for split in ("train", "validate")}
    counts["test"] = load_captions(tmp_path / "test_videodatainfo.json")
    assert {s: (len(c), sum(map(len, c.values()))) for s, c in counts.items()} == \
        {"train": (6513, 130260), "validate": (497, 9940), "test": (2990, 59800)}
    assert "video0.mp4" in counts["train"] and not set(counts["train"]) & set(counts["validate"])


def test_msr_video_description_csv_keeps_english_rows(tmp_path):
    path = tmp_path / "MSR Video Description Corpus.csv"
    path.write_text(
        "VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description\n"
        "mv89psg6zh4,33,46,1,clean,17,English,A bird in a sink keeps getting water.\n"
        'mv89psg6zh4,33,46,2,clean,18,English,"A bird, in a sink, drinks."\n'
        "mv89psg6zh4,33,46,3,clean,19,German,Ein Vogel in einem Waschbecken.\n"
        "60x_yxy7Sfw,1,8,4,clean,20,English,A man is playing a guitar.\n")
    captions = load_captions(path)
    assert captions == {"mv89psg6zh4_33_46.avi": ["A bird in a sink keeps getting water.",
                                                  "A bird, in a sink, drinks."],
                        "60x_yxy7Sfw_1_8.avi": ["A man is playing a guitar."]}


def test_id_caption_csv_with_header(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("video_id,caption\nclip1.avi,a dog runs, fast\nclip1.avi,a dog\nclip2.avi,a cat\n")
    assert load_captions(path) == {"clip1.avi": ["a dog runs, fast", "a dog"], "clip2.avi": ["a cat"]}


@pytest.mark.parametrize("content,match", [
    ('[{"id": "a.avi", "caption": ["a dog"]},', r"is truncated: it is cut off at byte 39"),
    ('[{"id": "a.avi" "caption": ["a dog"]}]', r"not valid JSON \(line 1"),
    ('[{"id": "a.avi"}]', r"entry 0 needs an \"id\" and a \"caption\""),
    ('[{"caption": ["x"]}, 3]', r"entry 0"),
    ('{"a.avi": ["a dog"]}', r"a JSON file that is no label format read here; the formats are MLDS JSON"),
    ('[]', r"no captions"),
])
def test_malformed_json_names_file_and_entry(tmp_path, content, match):
    path = tmp_path / "bad_labels.json"
    path.write_text(content)
    with pytest.raises(CaptionError, match=match) as info:
        load_captions(path)
    assert "bad_labels.json" in str(info.value)


def test_empty_captions_are_reported(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps([{"id": "a.avi", "caption": ["a dog", "  ", "..."]}, {"id": "b.avi", "caption": [""]}]))
    with pytest.warns(UserWarning) as record:
        captions = load_captions(path)
    messages = " | ".join(str(w.message) for w in record)
    assert "entry 0: empty caption for 'a.avi'" in messages and "entry 1 ('b.avi') has no usable caption" in messages
    assert captions == {"a.avi": ["a dog"]}


def test_malformed_csv_and_split(tmp_path):
    bad_csv = tmp_path / "labels.csv"
    bad_csv.write_text("clip1.avi,a dog\nno comma here\n")
    with pytest.raises(CaptionError, match=r"labels.csv: line 2"):
        load_captions(bad_csv)
    split = tmp_path / "sents_train_lc_nopunc.txt"
    split.write_text("vid1\ta dog\n")
    with pytest.raises(CaptionError, match="youtube_video_to_id_mapping.txt"):
        load_captions(split)
    (tmp_path / "youtube_video_to_id_mapping.txt").write_text("abc_1_2 vid2\n")
    with pytest.raises(CaptionError, match=r"line 1: 'vid1'"):
        load_captions(split)
    with pytest.raises(CaptionError, match="absent.json: no such file, where a label file was expected"):
        load_captions(tmp_path / "absent.json")


def test_tokenizer_needs_no_data():
    assert tokenize("A man's dog, RUNNING fast!") == ["a", "man's", "dog", "running", "fast"]
    assert tokenize("  ...  ") == []
    assert tokenize("Un garçon mange une crème brûlée; a man’s_hat") == [
        "un", "garçon", "mange", "une", "crème", "brûlée", "a", "man's", "hat"]
    assert tokenize("एक लड़का फुटबोल खेला") == ["एक", "लड़का", "फुटबोल", "खेला"]


def test_vocab_round_trip():
    vocab = Vocab.build(load_captions(CLIPS_DIR / "labels.json"))
    assert vocab.min_count == 3 and vocab.words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    again = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again.words == vocab.words and again.index == vocab.index
    ids = vocab.encode("A man is lifting a zzyzzx.")
    assert ids[-1] == vocab.unk_id and vocab.decode(ids + [vocab.eos_id, 5]) == "a man is lifting a"


@needs_shared
def test_the_mlds_vocabulary_has_the_size_the_docs_give():
    assert len(Vocab.build(load_captions(MLDS / "training_label.json"))) == 2891


def test_a_byte_order_mark_is_read_past(tmp_path):
    mlds = tmp_path / "bom.json"
    mlds.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"id": "a.avi", "caption": ["a dog runs"]}]).encode())
    assert load_captions(mlds) == {"a.avi": ["a dog runs"]}
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbfa.avi,a dog runs\nb.avi,a cat sits\n")
    assert load_captions(csv) == {"a.avi": ["a dog runs"], "b.avi": ["a cat sits"]}
    with_header = tmp_path / "bom_header.csv"
    with_header.write_bytes(b"\xef\xbb\xbfvideo_id,caption\na.avi,a dog runs\n")
    assert load_captions(with_header) == {"a.avi": ["a dog runs"]}


def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("a.avi,a dog\nb.avi,un caf\u00e9 noir\n".encode("latin-1"))
    with pytest.raises(CaptionError, match=r"latin1.csv: line 2 is not UTF-8 text \(byte 0xe9"):
        load_captions(path)


def test_ids_holding_a_comma_are_quoted_and_read_back(tmp_path):
    lines = [format_id_caption("a,b.avi", "a dog, running"), format_id_caption('say "hi".avi', "a cat"),
             format_id_caption("plain.avi", "a bird")]
    assert lines[0] == '"a,b.avi",a dog, running' and lines[1] == '"say ""hi"".avi",a cat'
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(lines) + "\n")
    assert load_captions(path) == {"a,b.avi": ["a dog, running"], 'say "hi".avi': ["a cat"], "plain.avi": ["a bird"]}


def test_an_unquoted_id_holding_a_comma_is_refused_not_split(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("x.avi,a dog\na,b.avi,a man runs\n")
    with pytest.raises(CaptionError, match=r"line 2: the id seems cut at a comma \('a', then 'b.avi'\); quote"):
        load_captions(path)
