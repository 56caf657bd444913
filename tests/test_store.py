"""The HDF5 feature store: round trip, plain-h5py access, validation, refusals."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import STORE_SETTINGS, source_attrs
from pipeline.store import FeatureStore, StoreError, StoreSettings, main


@pytest.fixture
def store(tmp_path):
    return FeatureStore.open_or_create(tmp_path / "f.h5", STORE_SETTINGS, {"torch": "x"})


def test_round_trip(store):
    rng = np.random.default_rng(0)
    arrays = {f"clip {i}.avi": rng.standard_normal((4, 6)).astype(np.float32) for i in range(3)}
    for i, (vid, x) in enumerate(arrays.items()):
        store.write(vid, x, source_attrs(i))
    reopened = FeatureStore(store.path)
    assert reopened.settings == STORE_SETTINGS
    assert reopened.ids() == sorted(arrays)
    np.testing.assert_array_equal(reopened.read("clip 1.avi"), arrays["clip 1.avi"])
    many = reopened.read_many(["clip 2.avi", "clip 0.avi"])
    assert many.shape == (2, 4, 6)
    np.testing.assert_array_equal(many[0], arrays["clip 2.avi"])
    sources = reopened.sources()
    assert int(sources["clip 1.avi"]["source_size"]) == 101
    assert sources["clip 1.avi"]["indices"].tolist() == [0, 12, 24, 36]
    assert reopened.validate() == []


def test_stamps_are_each_entrys_source_size_and_mtime_or_none_when_its_source_is_not_whole(store):
    store.write("a.avi", np.zeros((4, 6), np.float32), source_attrs(1))
    partial = {k: v for k, v in source_attrs(2).items() if k != "decoder"}  # as a store of an older version
    store.write("b é.avi", np.zeros((4, 6), np.float32), partial)
    assert store.stamps() == {"a.avi": (101, 10**18 + 1), "b é.avi": None}
    assert store.read_many(["b é.avi", "a.avi"]).shape == (2, 4, 6)


def test_plain_h5py_reads_the_layout(store):
    x = np.ones((4, 6), np.float32)
    store.write("a.avi", x, source_attrs())
    with h5py.File(store.path, "r") as f:
        assert f["features/a.avi"].shape == (4, 6)
        assert f.attrs["backbone"] == "vgg16" and int(f.attrs["frames"]) == 4
        assert "torch" in f.attrs["versions"]
        assert f["features/a.avi"].attrs["decoder"] == "opencv"


def test_write_replaces_and_checks_shape(store):
    store.write("a.avi", np.zeros((4, 6), np.float32), source_attrs())
    store.write("a.avi", np.ones((4, 6), np.float32), source_attrs(1))
    assert store.ids() == ["a.avi"] and store.read("a.avi").sum() == 24
    with pytest.raises(ValueError, match="shape"):
        store.write("b.avi", np.zeros((5, 6), np.float32), source_attrs())


def test_float16_store(tmp_path):
    settings = StoreSettings(**{**STORE_SETTINGS.__dict__, "dtype": "float16"})
    store = FeatureStore.open_or_create(tmp_path / "h.h5", settings, {})
    store.write("a.avi", np.full((4, 6), 0.5, np.float32), source_attrs())
    assert store.read("a.avi").dtype == np.float16 and store.validate() == []


def test_other_settings_are_refused_with_a_clear_message(store):
    other = StoreSettings(**{**STORE_SETTINGS.__dict__, "backbone": "resnet50", "feature_dim": 2048})
    with pytest.raises(StoreError) as info:
        FeatureStore.open_or_create(store.path, other, {})
    message = str(info.value)
    assert str(store.path) in message and "resnet50" in message and "vgg16" in message and "FEATURES" in message


def test_validate_reports_damaged_entries(store):
    store.write("good.avi", np.zeros((4, 6), np.float32), source_attrs())
    with h5py.File(store.path, "a") as f:
        f["features"].create_dataset("short.avi", data=np.zeros((3, 6), np.float32))
        f["features"].create_dataset("nan.avi", data=np.full((4, 6), np.nan, np.float32))
    problems = store.validate()
    assert any("short.avi" in p and "shape" in p for p in problems)
    assert any("nan.avi" in p and "non-finite" in p for p in problems)
    assert not any("good.avi" in p for p in problems)
    assert main([str(store.path)]) == 1


def test_missing_ids_are_named(store):
    with pytest.raises(StoreError, match="nope.avi"):
        store.read_many(["nope.avi"])


def test_not_a_store(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreError, match="garbage.h5"):
        FeatureStore(garbage)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore(other)
    with pytest.raises(StoreError, match="make features"):
        FeatureStore(tmp_path / "absent.h5")
    assert main([str(garbage)]) == 2


def test_info_command(store, capsys):
    store.write("a.avi", np.zeros((4, 6), np.float32), source_attrs())
    assert main([str(store.path)]) == 0
    out = capsys.readouterr().out
    assert "vgg16" in out and "valid" in out


def test_an_older_stores_decomposed_entry_is_found_under_its_composed_id_and_replaced_by_it(store):
    """Stores made before ids were compared composed (NFC) named a clip as its file was named: decomposed (NFD)
    where macOS wrote it."""
    composed, decomposed = "caf\u00e9.avi", "cafe\u0301.avi"
    store.write(decomposed, np.ones((4, 6), np.float32), source_attrs(1))
    assert store.ids() == [composed] and list(store.stamps()) == [composed] and list(store.sources()) == [composed]
    assert store.read_many([composed]).sum() == 24
    store.write(composed, np.zeros((4, 6), np.float32), source_attrs(2))
    with h5py.File(store.path, "r") as f:
        assert list(f["features"]) == [composed], "the decomposed twin is replaced, not kept beside"
    store.remove(composed)
    assert store.ids() == []


def test_an_entry_of_another_shape_is_refused_by_name_not_read_past_its_row(store):
    store.write("a.avi", np.ones((4, 6), np.float32), source_attrs(1))
    with h5py.File(store.path, "a") as f:  # written by other means: 7 frames in a store of 4
        f["features"].create_dataset("b.avi", data=np.ones((7, 6), np.float32))
    with pytest.raises(StoreError, match=r"b.avi: features of shape \(7, 6\), not the store's \(4, 6\)"):
        store.read_many(["a.avi", "b.avi"])


@pytest.mark.parametrize("read", [lambda store: store.stamps(), lambda store: store.recorded("indices")])
def test_damage_met_reading_the_entries_attributes_is_a_store_error_naming_the_store(tmp_path, monkeypatch, read):
    """What h5py raises on a damaged attribute while the entries are walked (the skip pass, the streams'
    check) is a `StoreError` naming the file, never a traceback."""
    store = FeatureStore.open_or_create(tmp_path / "f.h5", STORE_SETTINGS, {})
    store.write("a.avi", np.ones((4, 6), np.float32), source_attrs())
    assert read(store)["a.avi"] is not None

    def damaged(*args):
        raise RuntimeError("Can't synchronously determine if attribute exists (possibly corrupted file)")
    monkeypatch.setattr(h5py.h5a, "exists", damaged)
    with pytest.raises(StoreError, match=r"f.h5 is damaged inside \(RuntimeError"):
        read(store)
