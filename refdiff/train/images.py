"""Image grids and a dependency-free PNG writer (zlib + struct), plus a small PNG reader.

``import refdiff`` needs no Pillow: sample grids are encoded here by hand. The reader decodes the
8-bit, non-interlaced PNGs this module writes (and most others of that kind: gray, gray+alpha,
RGB, RGBA, all five row filters); it exists for tests and round trips, not as a general decoder.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .._errors import RefdiffValueError, fail
from .._typing import Array

__all__ = [
    "to_uint8",
    "make_grid",
    "encode_png",
    "decode_png",
    "write_png",
    "read_png",
    "save_grid",
    "atomic_write_bytes",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (gray, gray+alpha, RGB, RGBA)
_CHANNELS = {v: k for k, v in _COLOR_TYPE.items()}


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def to_uint8(images: Array) -> np.ndarray:
    """Map images in [-1, 1] to uint8 by ``round((x + 1) * 127.5)``, clipped to 0..255 (NaN -> 0)."""
    x = np.asarray(images, dtype=np.float64)
    x = np.nan_to_num(x, nan=-1.0, posinf=1.0, neginf=-1.0)
    return np.rint(np.clip((x + 1.0) * 127.5, 0.0, 255.0)).astype(np.uint8)


def make_grid(
    images: Array, *, nrow: int | None = None, padding: int = 1, pad_value: int = 0
) -> np.ndarray:
    """Tile images (N, C, H, W) — uint8, or float in [-1, 1] — into one (H', W', C) uint8 image.

    ``nrow`` images per row (default: ceil(sqrt(N))); ``padding`` pixels of ``pad_value`` between
    and around tiles.
    """
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[0] == 0:
        fail("images", a.shape, "expected a non-empty (N, C, H, W) array")
    if a.shape[1] not in (1, 2, 3, 4):
        fail("images", a.shape, "expected 1, 2, 3 or 4 channels in axis 1 (NCHW)")
    if a.dtype != np.uint8:
        a = to_uint8(a)
    n, c, h, w = a.shape
    ncol = int(nrow) if nrow else int(np.ceil(np.sqrt(n)))
    if ncol < 1:
        fail("nrow", nrow, "expected a positive integer")
    nrows = -(-n // ncol)
    p = int(padding)
    grid = np.full((nrows * (h + p) + p, ncol * (w + p) + p, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        y0, x0 = p + r * (h + p), p + q * (w + p)
        grid[y0 : y0 + h, x0 : x0 + w] = np.transpose(a[i], (1, 2, 0))
    return grid


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(image: Array, *, level: int = 6) -> bytes:
    """Encode an 8-bit image (H, W) or (H, W, C) with C in 1..4 as PNG bytes (filter 0 on every row)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in _COLOR_TYPE or a.shape[0] == 0 or a.shape[1] == 0:
        fail("image", a.shape, "expected a non-empty (H, W) or (H, W, C) array with C in 1..4")
    if a.dtype != np.uint8:
        fail("image", a.dtype, "expected uint8 pixels (use to_uint8 for images in [-1, 1])")
    h, w, c = a.shape
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[c], 0, 0, 0)
    rows = np.concatenate(
        [np.zeros((h, 1), np.uint8), np.ascontiguousarray(a).reshape(h, w * c)], axis=1
    )
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit non-interlaced PNG to (H, W, C) uint8."""
    if data[:8] != _PNG_SIGNATURE:
        raise RefdiffValueError("not a PNG file (bad signature)")
    pos, idat, hdr = 8, [], None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise RefdiffValueError(f"corrupt PNG: bad CRC in chunk {kind!r}")
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if hdr is None:
        raise RefdiffValueError("corrupt PNG: no IHDR chunk")
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or ctype not in _CHANNELS or interlace != 0:
        raise RefdiffValueError(
            f"unsupported PNG (bit depth {depth}, colour type {ctype}, interlace "
            f"{interlace}); only 8-bit non-interlaced gray/RGB(A) is read here"
        )
    c = _CHANNELS[ctype]
    raw = zlib.decompress(b"".join(idat))
    stride = w * c
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(h):
        ftype = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(
            np.int64
        )
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        else:
            cur = line.copy()
            for i in range(stride):
                left = int(cur[i - c]) if i >= c else 0
                up = int(prev[i])
                if ftype == 1:
                    pred = left
                elif ftype == 3:
                    pred = (left + up) // 2
                elif ftype == 4:
                    pred = _paeth(left, up, int(prev[i - c]) if i >= c else 0)
                else:
                    raise RefdiffValueError(f"corrupt PNG: unknown row filter {ftype}")
                cur[i] = (cur[i] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return out.reshape(h, w, c)


def write_png(path: str | os.PathLike, image: Array) -> Path:
    """Write an 8-bit image to ``path`` as PNG (atomically)."""
    return atomic_write_bytes(path, encode_png(image))


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG written by :func:`write_png` (8-bit, non-interlaced) as (H, W, C) uint8."""
    return decode_png(Path(path).read_bytes())


def save_grid(
    path: str | os.PathLike, images: Array, *, nrow: int | None = None, padding: int = 1
) -> Path:
    """Tile ``images`` (N, C, H, W; uint8 or float in [-1, 1]) with :func:`make_grid` and write a PNG."""
    return write_png(path, make_grid(images, nrow=nrow, padding=padding))
