"""Training data: the embedded digits, CIFAR-10 batches, .npy arrays, image folders, the data stream, errors."""

from __future__ import annotations

import pickle
import re
import tarfile

import numpy as np
import pytest

from refdiff._errors import RefdiffValueError
from refdiff.train.data import (
    DIGIT_GLYPHS,
    ArrayDataset,
    DataStream,
    DigitsDataset,
    check_matches,
    load_cifar10,
    load_data,
    load_image_folder,
    load_npy,
    to_model_range,
)
from refdiff.train.images import write_png


# ---------------------------------------------------------------------------------- digits
def test_digits_are_deterministic_8bit_and_in_range():
    a = DigitsDataset(64, image_size=16, channels=3, seed=5)
    b = DigitsDataset(64, image_size=16, channels=3, seed=5)
    c = DigitsDataset(64, image_size=16, channels=3, seed=6)
    idx = np.arange(64)
    xa, ya = a.batch(idx)
    xb, yb = b.batch(idx[::-1])
    assert xa.shape == (64, 3, 16, 16) and xa.dtype == np.float32
    np.testing.assert_array_equal(xa, xb[::-1])
    np.testing.assert_array_equal(ya, yb[::-1])
    assert not np.array_equal(xa, c.batch(idx)[0])
    assert xa.min() >= -1.0 and xa.max() <= 1.0
    # every value is an 8-bit level k/127.5 - 1
    k = (xa.astype(np.float64) + 1.0) * 127.5
    np.testing.assert_allclose(k, np.rint(k), atol=1e-4)
    assert set(np.unique(ya)) <= set(range(10)) and a.num_classes == 10


def test_digit_glyph_is_drawn_where_the_bitmap_says():
    # neutral pose: no rotation, shear, shift or stretch; dots smaller than half a cell, so the
    # centre of each glyph cell is inked exactly when the bitmap cell is.
    n, s = 10, 42
    ds = DigitsDataset(n, image_size=s, channels=1, seed=0)
    ds.labels = np.arange(10)
    ds.height[:] = 1.4
    ds.aspect[:] = 1.0
    ds.angle[:] = 0.0
    ds.shear[:] = 0.0
    ds.shift[:] = 0.0
    ds.radius[:] = 0.4
    ds.fg[:] = 1.0
    ds.bg[:] = 0.0
    img = ds.raw(np.arange(n))[0][:, 0].astype(np.float64) / 255.0
    cell = 1.4 / 7  # canvas units per glyph cell
    for d in range(10):
        for r in range(7):
            for c in range(5):
                x = (c + 0.5 - 2.5) * cell
                y = (r + 0.5 - 3.5) * cell
                px, py = (x + 1) / 2 * s - 0.5, (y + 1) / 2 * s - 0.5
                v = img[d, int(round(py)), int(round(px))]
                assert (v > 0.5) == bool(DIGIT_GLYPHS[d, r, c]), (d, r, c, v)


def test_digit_glyphs_are_distinct():
    flat = DIGIT_GLYPHS.reshape(10, -1)
    assert len({row.tobytes() for row in flat}) == 10


def test_digits_split_test_is_disjoint_seed():
    tr = load_data("digits", split="train", image_size=8, channels=1, digits_size=32)
    te = load_data("digits", split="test", image_size=8, channels=1, digits_size=32)
    assert tr.name == "digits-train" and te.name == "digits-test"
    assert not np.array_equal(tr.batch(np.arange(32))[0], te.batch(np.arange(32))[0])
    assert len(load_data("digits:12", image_size=8)) == 12


# ---------------------------------------------------------------------------------- CIFAR-10
def _fake_batch(path, n, seed, *, str_keys=False):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    d = (
        {"data": data, "labels": labels}
        if str_keys
        else {b"data": data, b"labels": labels, b"batch_label": b"fake"}
    )
    with open(path, "wb") as fh:
        pickle.dump(d, fh)
    return data, labels


def test_cifar10_batches_folder_file_and_archive(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    d1, l1 = _fake_batch(root / "data_batch_1", 5, 1)
    d2, l2 = _fake_batch(root / "data_batch_2", 3, 2, str_keys=True)
    dt, lt = _fake_batch(root / "test_batch", 4, 3)
    ds = load_data(str(root))
    assert len(ds) == 8 and ds.image_shape == (3, 32, 32) and ds.num_classes == 10
    x, y = ds.batch(np.array([0, 6]), dtype=np.float64)
    # row layout: 1024 red, then green, then blue, each row-major 32x32
    c, h, w = 2, 7, 30
    assert x[1, c, h, w] == d2[1, c * 1024 + h * 32 + w] / 127.5 - 1.0
    assert x[0, 0, 0, 0] == d1[0, 0] / 127.5 - 1.0
    assert y.tolist() == [l1[0], l2[1]]
    te = load_data(f"cifar10:{tmp_path}", split="test")  # the parent folder works too
    assert len(te) == 4 and te.labels.tolist() == lt
    single = load_cifar10(root / "test_batch")
    np.testing.assert_array_equal(single.images.reshape(4, -1), dt)
    arc = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(root, arcname="cifar-10-batches-py")
    np.testing.assert_array_equal(load_data(str(arc)).images, ds.images)
    np.testing.assert_array_equal(load_data(str(arc), split="test").images, te.images)


def test_cifar10_bad_files_name_the_path(tmp_path):
    bad = tmp_path / "data_batch_1"
    with open(bad, "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(
        RefdiffValueError,
        match=re.escape(
            f"data='{bad}' is invalid: is not a CIFAR-10 python batch (expected a pickled dict"
        ),
    ):
        load_cifar10(bad)
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(
        RefdiffValueError,
        match=re.escape(
            f"data='{bad}' is invalid: is not a CIFAR-10 python batch (unpickling failed"
        ),
    ):
        load_cifar10(bad)
    with open(bad, "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, fh)
    with pytest.raises(RefdiffValueError, match="lacks 'data' or 'labels'"):
        load_cifar10(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RefdiffValueError, match="holds no CIFAR-10 batch files for split 'train'"):
        load_cifar10(empty)


# ---------------------------------------------------------------------------------- .npy
def test_npy_layouts_and_ranges(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(4, 3, 5, 5), dtype=np.uint8)
    np.save(tmp_path / "nchw.npy", u8)
    np.save(tmp_path / "nhwc.npy", np.transpose(u8, (0, 2, 3, 1)))
    np.save(tmp_path / "gray.npy", u8[:, 0])
    a = load_data(str(tmp_path / "nchw.npy"))
    b = load_npy(tmp_path / "nhwc.npy")
    np.testing.assert_array_equal(a.images, u8)
    np.testing.assert_array_equal(b.images, u8)
    assert load_npy(tmp_path / "gray.npy").image_shape == (1, 5, 5)
    f01 = rng.random((2, 1, 4, 4))
    np.save(tmp_path / "f01.npy", f01)
    np.testing.assert_allclose(
        load_npy(tmp_path / "f01.npy").batch([0, 1], dtype=np.float64)[0],
        2 * f01 - 1,
        rtol=1e-6,
        atol=1e-6,
    )
    fpm = f01 * 2 - 1
    fpm[0, 0, 0, 0] = -1.0
    np.save(tmp_path / "fpm.npy", fpm)
    np.testing.assert_allclose(load_npy(tmp_path / "fpm.npy").images, fpm, atol=1e-6)
    f255 = np.rint(f01 * 255.0)
    np.save(tmp_path / "f255.npy", f255)
    assert load_npy(tmp_path / "f255.npy").images.dtype == np.uint8
    assert load_npy(tmp_path / "f255.npy").is_8bit and not load_npy(tmp_path / "f01.npy").is_8bit


def test_npy_errors_name_the_path(tmp_path):
    p = tmp_path / "bad.npy"
    np.save(p, np.full((2, 1, 3, 3), 300.5))
    with pytest.raises(
        RefdiffValueError, match=re.escape(f"data='{p}' is invalid: has values in [300.5, 300.5]")
    ):
        load_npy(p)
    np.save(p, np.zeros((3, 3)))
    with pytest.raises(
        RefdiffValueError,
        match=re.escape(f"data='{p}' is invalid: must hold a numeric array of shape (N, C, H, W)"),
    ):
        load_npy(p)
    p.write_bytes(b"garbage")
    with pytest.raises(
        RefdiffValueError, match=re.escape(f"data='{p}' is invalid: is not a readable .npy array")
    ):
        load_npy(p)
    arr = np.zeros((1, 1, 2, 2))
    arr[0, 0, 0, 0] = np.nan
    np.save(p, arr)
    with pytest.raises(RefdiffValueError, match="contains NaN or infinite values"):
        load_npy(p)


# ---------------------------------------------------------------------------------- folders
def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(1)
    imgs = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            a = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
            write_png(tmp_path / cls / f"{i}.png", a)
            imgs[(cls, i)] = a
    pytest.importorskip("PIL")
    ds = load_data(str(tmp_path))
    assert len(ds) == 4 and ds.image_shape == (3, 6, 6)
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(ds.images[2], np.transpose(imgs[("dog", 0)], (2, 0, 1)))
    gray = load_image_folder(tmp_path, channels=1, image_size=4)
    assert gray.image_shape == (1, 4, 4)


def test_image_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    write_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    write_png(tmp_path / "b.png", np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(
        RefdiffValueError,
        match=re.escape(f"data='{tmp_path / 'b.png'}' is invalid: has size 5x5 but"),
    ):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, image_size=4).image_shape == (3, 4, 4)
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(
        RefdiffValueError,
        match=re.escape(f"data='{tmp_path / 'c.png'}' is invalid: is not a readable image"),
    ):
        load_image_folder(tmp_path, image_size=4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        RefdiffValueError, match=re.escape(f"data='{empty}' is invalid: holds no image files")
    ):
        load_data(f"folder:{empty}")


# ---------------------------------------------------------------------------------- specs
def test_bad_specs_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(
        RefdiffValueError,
        match=re.escape(f"data='{missing}' is invalid: no such file or directory"),
    ):
        load_data(str(missing))
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(
        RefdiffValueError, match=re.escape(f"data='{txt}' is invalid: is not a recognised dataset")
    ):
        load_data(str(txt))
    with pytest.raises(
        RefdiffValueError,
        match=re.escape("data='digits:x' is invalid: expected 'digits' or 'digits:N'"),
    ):
        load_data("digits:x")
    with pytest.raises(RefdiffValueError, match="split='val' is invalid"):
        load_data("digits", split="val")


def test_check_matches_message():
    ds = ArrayDataset(np.zeros((1, 3, 32, 32), np.uint8), name="x")
    with pytest.raises(
        RefdiffValueError,
        match=re.escape(
            "data='x' has images of 3x32x32 (channels x height x "
            "width) but the model expects 1x16x16"
        ),
    ):
        check_matches(ds, image_size=16, channels=1)


def test_to_model_range_endpoints():
    u = np.array([0, 128, 255], dtype=np.uint8)
    np.testing.assert_array_equal(to_model_range(u, dtype=np.float64), [-1.0, 128 / 127.5 - 1, 1.0])


# ---------------------------------------------------------------------------------- stream
def test_stream_visits_every_image_once_per_epoch_and_is_a_function_of_position():
    s = DataStream(10, seed=3)
    first = np.concatenate([s.next(4)[0] for _ in range(5)])  # 20 samples = 2 epochs
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    assert not np.array_equal(first[:10], first[10:])
    r = DataStream(10, seed=3)
    r.load_state({"size": 10, "seed": 3, "position": 8, "hflip": False})
    np.testing.assert_array_equal(np.concatenate([r.next(4)[0] for _ in range(3)]), first[8:20])
    with pytest.raises(RefdiffValueError, match="dataset of 11 images, but this dataset has 10"):
        r.load_state({"size": 11, "seed": 3, "position": 0})


def test_stream_flips_are_reproducible_and_applied():
    s = DataStream(4, seed=0, hflip=True)
    f1 = s.flips(64, position=0)
    np.testing.assert_array_equal(f1, DataStream(4, seed=0, hflip=True).flips(64, position=0))
    assert 0 < f1.sum() < 64
    ds = ArrayDataset(np.arange(2 * 1 * 2 * 3, dtype=np.uint8).reshape(2, 1, 2, 3))
    x, _ = ds.batch([0, 1], flip=np.array([True, False]), dtype=np.float64)
    np.testing.assert_array_equal(x[0], to_model_range(ds.images[0], dtype=np.float64)[..., ::-1])
    np.testing.assert_array_equal(x[1], to_model_range(ds.images[1], dtype=np.float64))
