"""The hand-written PNG writer/reader, image grids, JSON-lines metrics and the progress bar."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest

from refdiff.train.images import (
    decode_png,
    encode_png,
    make_grid,
    read_png,
    save_grid,
    to_uint8,
    write_png,
)
from refdiff.train.metrics import MetricsWriter, ProgressBar, format_duration, read_metrics


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (4, 3, 2), (6, 9, 3), (2, 2, 4)])
def test_png_round_trip(tmp_path, shape):
    a = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    write_png(tmp_path / "a.png", a)
    back = read_png(tmp_path / "a.png")
    np.testing.assert_array_equal(back, a if a.ndim == 3 else a[:, :, None])


def test_png_structure_is_valid():
    a = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    data = encode_png(a)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    (length,) = struct.unpack(">I", data[8:12])
    assert data[12:16] == b"IHDR" and length == 13
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    assert (w, h, depth, ctype) == (2, 2, 8, 2)
    # IDAT holds filter byte 0 + raw RGB rows
    i = data.index(b"IDAT")
    (n,) = struct.unpack(">I", data[i - 4 : i])
    raw = zlib.decompress(data[i + 4 : i + 4 + n])
    assert raw == b"\x00" + a[0].tobytes() + b"\x00" + a[1].tobytes()
    assert data.endswith(b"IEND\xaeB`\x82")


def test_png_agrees_with_pillow_both_ways(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    a = np.random.default_rng(1).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    write_png(tmp_path / "ours.png", a)
    with Image.open(tmp_path / "ours.png") as im:
        np.testing.assert_array_equal(np.asarray(im), a)
    # Pillow picks adaptive row filters (sub/up/average/paeth); our reader must undo them all
    smooth = np.clip(
        np.add.outer(np.arange(40), np.arange(50))[:, :, None] * [1, 2, 3], 0, 255
    ).astype(np.uint8)
    for arr in (a, smooth, smooth[:, :, 0]):
        Image.fromarray(arr).save(tmp_path / "pil.png", optimize=True)
        back = read_png(tmp_path / "pil.png")
        np.testing.assert_array_equal(back, arr if arr.ndim == 3 else arr[:, :, None])


def test_png_rejects_bad_input():
    with pytest.raises(ValueError, match="expected uint8 pixels"):
        encode_png(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"image=.* is invalid: expected a non-empty \(H, W\)"):
        encode_png(np.zeros((2, 2, 5), np.uint8))
    good = bytearray(encode_png(np.zeros((2, 2), np.uint8)))
    good[30] ^= 0xFF
    with pytest.raises(ValueError, match="bad CRC"):
        decode_png(bytes(good))
    with pytest.raises(ValueError, match="not a PNG"):
        decode_png(b"GIF89a")


def test_to_uint8_maps_model_range():
    x = np.array([-1.0, -2.0, 0.0, 1.0, 5.0, np.nan, 1 / 127.5 - 1])
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 255, 255, 0, 1])


def test_grid_layout(tmp_path):
    imgs = np.zeros((5, 1, 2, 3), np.uint8)
    for i in range(5):
        imgs[i] = 10 * (i + 1)
    g = make_grid(imgs, nrow=3, padding=1, pad_value=7)
    assert g.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
    assert g[0, 0, 0] == 7 and g[1, 1, 0] == 10  # tile 0 at (1, 1)
    assert g[1, 1 + 4, 0] == 20 and g[1 + 3, 1 + 4, 0] == 50  # tile 1 right of it, tile 4 below
    assert g[4, 9, 0] == 7  # empty 6th slot stays padding
    path = save_grid(tmp_path / "g.png", (imgs.astype(np.float64) / 127.5) - 1.0, nrow=3)
    assert read_png(path).shape == g.shape


def test_metrics_jsonl(tmp_path):
    p = tmp_path / "m.jsonl"
    with MetricsWriter(p, append=False) as w:
        w.write({"step": 1, "loss": 0.5, "lr": np.float32(0.25)})
        w.write({"step": 2, "loss": float("nan"), "grad_norm": float("inf")})
    with MetricsWriter(p) as w:  # append
        w.write({"step": 3, "loss": 0.125})
    lines = p.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    recs = read_metrics(p)
    assert recs[0] == {"step": 1, "loss": 0.5, "lr": 0.25}
    assert recs[1]["loss"] is None and recs[1]["grad_norm"] is None
    assert recs[2]["step"] == 3


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_bar_lines_on_a_log():
    buf, clock = io.StringIO(), _Clock()
    bar = ProgressBar(10, stream=buf, clock=clock, line_interval=5.0, width=10)
    for _ in range(4):
        clock.t += 1.0
        bar.update(1, loss=0.123456)
    clock.t += 2.0
    bar.update(1)  # 6 s since the first line: print
    for _ in range(5):
        clock.t += 1.0
        bar.update(1)  # reaching the total always prints
    bar.close()
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("train   0%|..........| 0/10 [00:00<?")
    assert lines[1] == "train  50%|#####.....| 5/10 [00:06<00:06, 0.83 step/s] loss=0.1235"
    assert lines[-1].startswith("train 100%|##########| 10/10 [00:11<00:00")
    assert len(lines) == 3


def test_progress_bar_resumed_and_disabled():
    buf, clock = io.StringIO(), _Clock()
    bar = ProgressBar(8, initial=6, stream=buf, clock=clock, desc="x")
    clock.t = 4.0
    bar.update(1)
    assert "7/8" in bar.render() and "0.25 step/s" in bar.render()
    off = io.StringIO()
    b2 = ProgressBar(3, stream=off, enabled=False)
    b2.update(3)
    b2.close()
    assert off.getvalue() == ""
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "01:05"


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)


def _filtered_png(a: np.ndarray, ftypes) -> bytes:
    """Encode with the given per-row filter types (PNG spec §9), written independently of the module."""
    h, w, c = a.shape
    rows = a.reshape(h, w * c).astype(int)
    out = bytearray()
    for y in range(h):
        ft = ftypes[y % len(ftypes)]
        prev = rows[y - 1] if y else np.zeros(w * c, int)
        cur = rows[y]
        line = []
        for i in range(w * c):
            left = cur[i - c] if i >= c else 0
            up = prev[i]
            ul = prev[i - c] if i >= c else 0
            pred = [0, left, up, (left + up) // 2, _paeth(left, up, ul)][ft]
            line.append((cur[i] - pred) % 256)
        out += bytes([ft]) + bytes(line)

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(out)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_reader_undoes_every_row_filter(channels):
    a = np.random.default_rng(channels).integers(0, 256, size=(10, 7, channels), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(_filtered_png(a, [0, 1, 2, 3, 4])), a)
