"""Training data: an embedded procedural digits set, CIFAR-10 python batches, image folders, ``.npy`` arrays.

Every dataset hands out images as NCHW arrays scaled to [-1, 1] (8-bit data: ``x / 127.5 - 1``),
plus integer labels where the source has them. The order in which a training run visits the data
is a pure function of ``(seed, position)`` (:class:`DataStream`), so a checkpoint needs only the
position to resume exactly.

Host-side NumPy code (the data lives on the host; the trainer moves each batch to its device).
Pillow is imported lazily, and only to read a folder of images.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from collections.abc import Mapping

import numpy as np

from .._errors import RefdiffValueError, check_int, fail

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike

__all__ = [
    "ImageDataset",
    "ArrayDataset",
    "DigitsDataset",
    "DataStream",
    "load_data",
    "digits",
    "load_cifar10",
    "load_image_folder",
    "load_npy",
    "to_model_range",
    "DIGIT_GLYPHS",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# --------------------------------------------------------------------------------------------
# The embedded default: digit glyphs rendered procedurally.
# --------------------------------------------------------------------------------------------

# A 5x7 bitmap for each digit 0..9 ('#' = ink). Drawn for this project.
_GLYPH_ROWS = {
    0: [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
    1: ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
    2: [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
    3: ["#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."],
    4: ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
    5: ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
    6: ["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."],
    7: ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
    8: [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
    9: [".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."],
}
DIGIT_GLYPHS = np.array(
    [[[c == "#" for c in row] for row in _GLYPH_ROWS[d]] for d in range(10)], dtype=bool
)  # (10, 7, 5)
_GLYPH_H, _GLYPH_W = DIGIT_GLYPHS.shape[1:]


def to_model_range(images: np.ndarray, *, dtype: DTypeLike = np.float32) -> np.ndarray:
    """Scale 8-bit images (uint8) to [-1, 1] as ``x / 127.5 - 1``; float input is returned cast."""
    if images.dtype == np.uint8:
        return (images.astype(np.float64) / 127.5 - 1.0).astype(dtype, copy=False)
    return images.astype(dtype, copy=False)


class ImageDataset:
    """A finite, indexable set of images (NCHW) with optional integer labels."""

    name: str = "dataset"
    num_classes: int | None = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:  # pragma: no cover - abstract
        """(channels, height, width)."""
        raise NotImplementedError

    def raw(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:  # pragma: no cover
        """Images at ``indices`` in storage form (uint8 0..255 or float in [-1, 1]) and labels."""
        raise NotImplementedError

    def batch(
        self, indices: ArrayLike, *, dtype: DTypeLike = np.float32, flip: ArrayLike | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Images at ``indices`` scaled to [-1, 1] as ``dtype`` (optionally mirrored where ``flip``)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            fail("indices", idx, f"dataset {self.name!r} has {len(self)} images")
        x, y = self.raw(idx)
        x = to_model_range(x, dtype=dtype)
        if flip is not None:
            flip = np.asarray(flip, dtype=bool).reshape(-1)
            x = np.where(flip[:, None, None, None], x[..., ::-1], x)
        return np.ascontiguousarray(x), y

    @property
    def is_8bit(self) -> bool:
        """True when the stored pixels are 8-bit (so the bits/dim of the discretised VLB applies)."""
        return True

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return f"<{type(self).__name__} {self.name!r}: {len(self)} images {c}x{h}x{w}>"


class ArrayDataset(ImageDataset):
    """Images held in memory as an (N, C, H, W) array: uint8, or float already in [-1, 1]."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        name: str = "array",
        num_classes: int | None = None,
    ) -> None:
        images = np.asarray(images)
        if images.ndim != 4:
            fail("images", images.shape, "expected an (N, C, H, W) array")
        if images.dtype != np.uint8:
            images = images.astype(np.float32, copy=False)
        self.images = images
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64).reshape(-1)
            if labels.shape[0] != images.shape[0]:
                fail("labels", labels.shape, f"expected one label per image ({images.shape[0]})")
            if num_classes is None and labels.size:
                num_classes = int(labels.max()) + 1
        self.labels = labels
        self.name = name
        self.num_classes = num_classes

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def is_8bit(self) -> bool:
        return self.images.dtype == np.uint8

    def raw(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        y = None if self.labels is None else self.labels[indices]
        return self.images[indices], y


class DigitsDataset(ImageDataset):
    """Procedurally rendered digits 0-9: the embedded default (no download, any size, deterministic).

    Each image is one glyph of a 5x7 bitmap font drawn as overlapping round dots, under a random
    affine map (scale, rotation, shear, stretch, shift), with a random stroke width, ink level and
    (for 3 channels) ink and paper colours. The per-image parameters are drawn once from
    ``seed``; images are rendered on demand and cached, anti-aliased and quantised to 8 bits.
    """

    def __init__(
        self,
        n: int = 10000,
        *,
        image_size: int = 16,
        channels: int = 1,
        seed: int = 0,
        name: str = "digits",
    ) -> None:
        self.n = check_int("n", n, minimum=1)
        self.size = check_int("image_size", image_size, minimum=4)
        self.channels = check_int("channels", channels, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        self.name = name
        self.num_classes = 10
        rng = np.random.default_rng([0x6469676974, self.seed])  # "digit"
        n = self.n
        self.labels = rng.integers(0, 10, size=n)
        self.height = rng.uniform(1.05, 1.45, size=n)  # glyph height in canvas units (canvas = 2)
        self.aspect = rng.uniform(0.85, 1.15, size=n)  # width stretch
        self.angle = rng.uniform(-0.26, 0.26, size=n)  # about +-15 degrees
        self.shear = rng.uniform(-0.25, 0.25, size=n)
        self.shift = rng.uniform(-0.18, 0.18, size=(n, 2))
        self.radius = rng.uniform(0.62, 0.9, size=n)  # dot radius in glyph cells
        self.ink = rng.uniform(0.75, 1.0, size=n)
        if self.channels == 1:
            self.fg = self.ink[:, None] * np.ones((n, 1))
            self.bg = rng.uniform(0.0, 0.1, size=(n, 1))
        else:
            hue = rng.uniform(0.0, 1.0, size=n)
            self.fg = _colour(hue, self.channels) * self.ink[:, None]
            self.bg = _colour(np.mod(hue + 0.5, 1.0), self.channels) * rng.uniform(
                0.0, 0.25, size=(n, 1)
            )
        self._cache = np.zeros((n, self.channels, self.size, self.size), dtype=np.uint8)
        self._done = np.zeros(n, dtype=bool)

    def __len__(self) -> int:
        return self.n

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def raw(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        todo = np.unique(indices[~self._done[indices]])
        for start in range(0, todo.size, 512):
            chunk = todo[start : start + 512]
            self._cache[chunk] = self._render(chunk)
            self._done[chunk] = True
        return self._cache[indices], self.labels[indices]

    def _render(self, idx: np.ndarray) -> np.ndarray:
        """Render images ``idx`` to uint8 (B, C, H, W)."""
        s = self.size
        # pixel centres in canvas coordinates [-1, 1], y pointing down
        c = (np.arange(s) + 0.5) / s * 2.0 - 1.0
        py, px = np.meshgrid(c, c, indexing="ij")
        p = (
            np.stack([px.ravel(), py.ravel()], axis=-1)[None] - self.shift[idx][:, None, :]
        )  # (B, P, 2)
        # inverse affine map: canvas -> glyph cell coordinates
        ang, sh = self.angle[idx][:, None], self.shear[idx][:, None]
        cos, sin = np.cos(ang), np.sin(ang)
        u = cos * p[..., 0] + sin * p[..., 1]
        v = -sin * p[..., 0] + cos * p[..., 1]
        u = u - sh * v
        cell = self.height[idx][:, None] / _GLYPH_H  # canvas units per glyph cell (height)
        gx = u / (cell * self.aspect[idx][:, None]) + _GLYPH_W / 2.0
        gy = v / cell + _GLYPH_H / 2.0
        dist = _glyph_distance(self.labels[idx], gx, gy)
        pixel = (2.0 / s) / cell  # one pixel in glyph cells
        cover = np.clip((self.radius[idx][:, None] - dist) / pixel + 0.5, 0.0, 1.0)  # (B, P)
        fg, bg = self.fg[idx][:, :, None], self.bg[idx][:, :, None]
        img = bg + (fg - bg) * cover[:, None, :]
        img = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
        return img.reshape(idx.size, self.channels, s, s)


_FIELD_RES = 16  # distance-field samples per glyph cell
_FIELD_PAD = 2  # cells of margin around the glyph
_FIELD: np.ndarray | None = None


def _distance_fields() -> np.ndarray:
    """Per digit, the distance (in cells) to the nearest inked cell centre on a fine grid (cached)."""
    global _FIELD
    if _FIELD is None:
        ny, nx = (
            (_GLYPH_H + 2 * _FIELD_PAD) * _FIELD_RES + 1,
            (_GLYPH_W + 2 * _FIELD_PAD) * _FIELD_RES + 1,
        )
        yy = np.arange(ny) / _FIELD_RES - _FIELD_PAD
        xx = np.arange(nx) / _FIELD_RES - _FIELD_PAD
        fields = np.empty((10, ny, nx))
        for d in range(10):
            rows, cols = np.nonzero(DIGIT_GLYPHS[d])
            dy = yy[:, None, None] - (rows + 0.5)
            dx = xx[None, :, None] - (cols + 0.5)
            fields[d] = np.sqrt(dx * dx + dy * dy).min(axis=-1)
        _FIELD = fields
    return _FIELD


def _glyph_distance(labels: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Bilinear lookup of the distance fields at glyph coordinates (gx, gy), shape (B, P)."""
    f = _distance_fields()
    ny, nx = f.shape[1:]
    fx = np.clip((gx + _FIELD_PAD) * _FIELD_RES, 0.0, nx - 1.000001)
    fy = np.clip((gy + _FIELD_PAD) * _FIELD_RES, 0.0, ny - 1.000001)
    x0, y0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    wx, wy = fx - x0, fy - y0
    d = labels[:, None]
    inside = (
        (gx > -_FIELD_PAD)
        & (gx < _GLYPH_W + _FIELD_PAD)
        & (gy > -_FIELD_PAD)
        & (gy < _GLYPH_H + _FIELD_PAD)
    )
    v = (1 - wy) * ((1 - wx) * f[d, y0, x0] + wx * f[d, y0, x0 + 1]) + wy * (
        (1 - wx) * f[d, y0 + 1, x0] + wx * f[d, y0 + 1, x0 + 1]
    )
    return np.where(inside, v, np.inf)


def _colour(hue: np.ndarray, channels: int) -> np.ndarray:
    """A saturated colour per hue in [0, 1) (HSV with S = V = 1), repeated/truncated to ``channels``."""
    h6 = hue[:, None] * 6.0
    k = np.mod(np.array([5.0, 3.0, 1.0]) + h6, 6.0)
    rgb = 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    reps = -(-channels // 3)
    return np.tile(rgb, (1, reps))[:, :channels]


def digits(
    n: int = 10000, *, image_size: int = 16, channels: int = 1, seed: int = 0
) -> DigitsDataset:
    """The embedded procedural digits dataset (see :class:`DigitsDataset`)."""
    return DigitsDataset(n, image_size=image_size, channels=channels, seed=seed)


# --------------------------------------------------------------------------------------------
# Loaders for files on disk
# --------------------------------------------------------------------------------------------


def _exists(path: Path, what: str) -> None:
    if not path.exists():
        fail("data", str(path), f"no such file or directory (expected {what})")


def _cifar_dict(obj: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(obj, dict):
        fail(
            "data",
            source,
            "is not a CIFAR-10 python batch (expected a pickled dict with 'data' and 'labels')",
        )
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in d or ("labels" not in d and "fine_labels" not in d):
        fail(
            "data",
            source,
            "is not a CIFAR-10 python batch (the pickled dict lacks 'data' or "
            f"'labels'; keys: {sorted(map(str, d))})",
        )
    data = np.asarray(d["data"])
    labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] % 3 != 0:
        fail(
            "data",
            source,
            f"is not a CIFAR-10 python batch ('data' must be uint8 of shape (N, 3*H*W), "
            f"got {data.dtype} {data.shape})",
        )
    side = int(round((data.shape[1] // 3) ** 0.5))
    if 3 * side * side != data.shape[1]:
        fail(
            "data",
            source,
            f"is not a CIFAR-10 python batch (rows of {data.shape[1]} values are not "
            "3 square colour planes)",
        )
    if labels.shape[0] != data.shape[0]:
        fail("data", source, f"has {data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, side, side), labels


def _unpickle(fileobj: IO[bytes], source: str) -> Any:
    try:
        return pickle.load(fileobj, encoding="bytes")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a format error
        fail(
            "data",
            source,
            f"is not a CIFAR-10 python batch (unpickling failed: {type(exc).__name__})",
        )


_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]


def load_cifar10(path: str | os.PathLike, *, split: str = "train") -> ArrayDataset:
    """CIFAR-10 in its python-batch format: the ``cifar-10-batches-py`` folder, one batch file, or the
    ``cifar-10-python.tar.gz`` archive (read in place). Only load files you trust: they are pickles.
    """
    path = Path(path)
    _exists(path, "a CIFAR-10 batch folder, batch file or cifar-10-python.tar.gz")
    names = {"train": _CIFAR_TRAIN, "test": _CIFAR_TEST, "all": _CIFAR_TRAIN + _CIFAR_TEST}
    if split not in names:
        fail("split", split, "expected 'train', 'test' or 'all'")
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    if path.is_dir():
        files = [path / n for n in names[split] if (path / n).is_file()]
        if not files and (path / "cifar-10-batches-py").is_dir():
            return load_cifar10(path / "cifar-10-batches-py", split=split)
        if not files:
            fail(
                "data",
                str(path),
                f"holds no CIFAR-10 batch files for split {split!r} "
                f"(expected {', '.join(names[split])})",
            )
        for f in files:
            with open(f, "rb") as fh:
                parts.append(_cifar_dict(_unpickle(fh, str(f)), str(f)))
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            wanted = [n for n in names[split] if n in members]
            if not wanted:
                fail(
                    "data",
                    str(path),
                    f"is an archive without CIFAR-10 batch files for split {split!r}",
                )
            for n in wanted:
                member = tar.extractfile(members[n])
                assert member is not None  # members holds regular files only
                parts.append(_cifar_dict(_unpickle(member, f"{path}:{n}"), f"{path}:{n}"))
    else:
        with open(path, "rb") as fh:
            parts.append(_cifar_dict(_unpickle(fh, str(path)), str(path)))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset(images, labels, name=f"cifar10:{path}", num_classes=10)


def load_npy(path: str | os.PathLike) -> ArrayDataset:
    """A ``.npy`` array of images: (N, C, H, W) or (N, H, W, C) or (N, H, W); uint8, or float in
    [0, 1], [-1, 1] or [0, 255] (decided from the value range: min >= 0 and max <= 1 means [0, 1]).

    The layout is NHWC when the last axis has 1, 3 or 4 entries and the second does not; else NCHW.
    """
    path = Path(path)
    _exists(path, "a .npy file")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        fail("data", str(path), f"is not a readable .npy array ({type(exc).__name__}: {exc})")
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "uif" or arr.ndim not in (3, 4):
        fail(
            "data",
            str(path),
            "must hold a numeric array of shape (N, C, H, W), (N, H, W, C) or "
            f"(N, H, W); got {getattr(arr, 'dtype', type(arr))} {getattr(arr, 'shape', '')}",
        )
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        arr = np.transpose(arr, (0, 3, 1, 2))
    if arr.shape[0] == 0:
        fail("data", str(path), "holds no images")
    if arr.dtype == np.uint8:
        return ArrayDataset(np.ascontiguousarray(arr), name=f"npy:{path}")
    a = arr.astype(np.float64)
    if not np.all(np.isfinite(a)):
        fail("data", str(path), "contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        a = a * 2.0 - 1.0
    elif lo >= -1.0 and hi <= 1.0:
        pass
    elif lo >= 0.0 and hi <= 255.0:
        if arr.dtype.kind in "ui" or np.all(a == np.rint(a)):
            return ArrayDataset(np.ascontiguousarray(a.astype(np.uint8)), name=f"npy:{path}")
        a = a / 127.5 - 1.0
    else:
        fail(
            "data",
            str(path),
            f"has values in [{lo:g}, {hi:g}]; expected uint8, or floats in "
            "[0, 1], [-1, 1] or [0, 255]",
        )
    return ArrayDataset(np.ascontiguousarray(a.astype(np.float32)), name=f"npy:{path}")


def load_image_folder(
    path: str | os.PathLike, *, image_size: int | None = None, channels: int | None = None
) -> ArrayDataset:
    """Every image file under ``path`` (recursively, sorted), read with Pillow.

    Images are converted to grayscale (``channels=1``) or RGB (default), center-cropped to a square
    and resized to ``image_size`` when given (otherwise all images must share one size). When the
    files sit in two or more subfolders, the subfolder names (sorted) become the class labels.
    """
    path = Path(path)
    _exists(path, "a folder of images")
    if not path.is_dir():
        fail("data", str(path), "is not a folder of images")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        fail("data", str(path), f"holds no image files (looked for {', '.join(IMAGE_SUFFIXES)})")
    try:
        from PIL import Image  # lazy: only image folders need Pillow
    except ImportError:
        raise RefdiffValueError(
            f"data={str(path)!r}: reading a folder of images needs Pillow; "
            "install it with: pip install 'refdiff[train]'"
        ) from None
    mode = "L" if channels == 1 else "RGB"
    if channels not in (None, 1, 3):
        fail("channels", channels, "image folders give 1 (grayscale) or 3 (RGB) channels")
    out: list[np.ndarray] = []
    for f in files:
        try:
            with Image.open(f) as opened:
                im = opened.convert(mode)
                if image_size is not None:
                    w, h = im.size
                    side = min(w, h)
                    left, top = (w - side) // 2, (h - side) // 2
                    im = im.crop((left, top, left + side, top + side))
                    if side != image_size:
                        im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
                a = np.asarray(im, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001
            fail("data", str(f), f"is not a readable image ({type(exc).__name__}: {exc})")
        a = a[None] if a.ndim == 2 else np.transpose(a, (2, 0, 1))
        if out and a.shape != out[0].shape:
            fail(
                "data",
                str(f),
                f"has size {a.shape[2]}x{a.shape[1]} but {files[0]} has "
                f"{out[0].shape[2]}x{out[0].shape[1]}; pass an image size to resize them all",
            )
        out.append(a)
    rel_dirs = [f.parent.relative_to(path).parts[:1] for f in files]
    classes = sorted({d[0] for d in rel_dirs if d})
    labels = None
    if len(classes) >= 2 and all(rel_dirs):
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[d[0]] for d in rel_dirs], dtype=np.int64)
    ds = ArrayDataset(
        np.stack(out),
        labels,
        name=f"folder:{path}",
        num_classes=len(classes) if labels is not None else None,
    )
    ds.class_names = classes if labels is not None else None  # type: ignore[attr-defined]
    return ds


DATA_KINDS = ("digits", "cifar10", "folder", "npy")


def load_data(
    spec: str,
    *,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    seed: int = 0,
    digits_size: int | None = None,
) -> ImageDataset:
    """Open a dataset from a spec string.

    ``spec`` is ``digits`` (embedded), or ``KIND:PATH`` with KIND in ``cifar10``, ``folder``, ``npy``,
    or a bare PATH whose kind is guessed: a ``.npy`` file, a CIFAR-10 batch folder / batch file /
    ``.tar.gz`` archive, or a folder of images. ``split`` selects CIFAR-10's ``train``/``test``
    batches and the digits' training or held-out images (``test`` draws a disjoint seed).
    ``image_size``/``channels`` size the digits and resize image folders; other sources must
    already match (the caller checks).
    """
    if not isinstance(spec, str) or not spec:
        fail(
            "data",
            spec,
            "expected 'digits' or a path (optionally prefixed with cifar10:, folder:, npy:)",
        )
    if split not in ("train", "test"):
        fail("split", split, "expected 'train' or 'test'")
    kind, _, rest = spec.partition(":")
    if kind == "digits":
        n = digits_size
        if rest:
            try:
                n = int(rest)
            except ValueError:
                fail("data", spec, "expected 'digits' or 'digits:N' with N the number of images")
        if n is None:
            n = 10000 if split == "train" else 1000
        return DigitsDataset(
            n,
            image_size=image_size or 16,
            channels=channels or 1,
            seed=seed if split == "train" else seed + 1_000_003,
            name=f"digits-{split}",
        )
    if kind in ("cifar10", "folder", "npy") and rest:
        path = Path(rest).expanduser()
    else:
        kind, path = "", Path(spec).expanduser()
    if kind == "":
        _exists(path, "'digits', a .npy file, a CIFAR-10 batch folder/file or a folder of images")
        if path.is_file() and path.suffix == ".npy":
            kind = "npy"
        elif path.is_dir() and (
            any((path / n).is_file() for n in _CIFAR_TRAIN + _CIFAR_TEST)
            or (path / "cifar-10-batches-py").is_dir()
        ):
            kind = "cifar10"
        elif path.is_file() and (
            path.name in _CIFAR_TRAIN + _CIFAR_TEST or tarfile.is_tarfile(path)
        ):
            kind = "cifar10"
        elif path.is_dir():
            kind = "folder"
        else:
            fail(
                "data",
                str(path),
                "is not a recognised dataset (expected a .npy file, CIFAR-10 python "
                "batches, or a folder of images; prefix with cifar10:, folder: or npy: to choose)",
            )
    if kind == "npy":
        return load_npy(path)
    if kind == "cifar10":
        return load_cifar10(path, split=split)
    return load_image_folder(path, image_size=image_size, channels=channels)


# --------------------------------------------------------------------------------------------
# The order of visits
# --------------------------------------------------------------------------------------------


@dataclass
class DataStream:
    """An endless, shuffled stream of dataset indices: epoch ``e`` is the permutation drawn from
    ``default_rng([seed, e])``; ``position`` counts the samples consumed so far.

    Because the stream is a pure function of ``(seed, position)``, resuming needs only the position
    (stored in the checkpoint): no generator state is carried. Under data parallelism every rank
    draws the same global batch and keeps its own slice.
    """

    size: int
    seed: int = 0
    position: int = 0
    hflip: bool = False

    def __post_init__(self) -> None:
        self.size = check_int("size", self.size, minimum=1)
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            self._perm_epoch = epoch
        return self._perm

    def peek(self, batch: int, position: int | None = None) -> np.ndarray:
        """The ``batch`` indices that follow ``position`` (default: the current one)."""
        pos = self.position if position is None else position
        out = np.empty(batch, dtype=np.int64)
        filled = 0
        while filled < batch:
            epoch, off = divmod(pos + filled, self.size)
            take = min(batch - filled, self.size - off)
            out[filled : filled + take] = self._permutation(epoch)[off : off + take]
            filled += take
        return out

    def flips(self, batch: int, position: int | None = None) -> np.ndarray | None:
        """Horizontal-flip decisions for the batch at ``position`` (None when flipping is off)."""
        if not self.hflip:
            return None
        pos = self.position if position is None else position
        return np.random.default_rng([self.seed, 0x666C6970, pos]).random(batch) < 0.5

    def next(self, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Indices and flip flags of the next ``batch`` samples; advances the position."""
        idx, flip = self.peek(batch), self.flips(batch)
        self.position += batch
        return idx, flip

    def state(self) -> dict[str, Any]:
        """JSON-able state (what a checkpoint stores)."""
        return {
            "size": self.size,
            "seed": self.seed,
            "position": self.position,
            "hflip": self.hflip,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` (refuses a stream over a dataset of another size)."""
        if int(state["size"]) != self.size:
            raise RefdiffValueError(
                f"data stream state is for a dataset of {state['size']} images, but this dataset has "
                f"{self.size}; resume with the same data"
            )
        self.seed = int(state["seed"])
        self.position = int(state["position"])
        self.hflip = bool(state.get("hflip", self.hflip))


def describe_dataset(ds: ImageDataset) -> dict[str, Any]:
    """A small JSON-able description for configs and logs."""
    c, h, w = ds.image_shape
    return {
        "name": ds.name,
        "size": len(ds),
        "channels": c,
        "height": h,
        "width": w,
        "num_classes": ds.num_classes,
        "8bit": ds.is_8bit,
    }


def check_matches(
    ds: ImageDataset, *, image_size: int, channels: int, source: str = "data"
) -> None:
    """Raise unless the dataset's images are ``channels x image_size x image_size``."""
    c, h, w = ds.image_shape
    if (c, h, w) != (channels, image_size, image_size):
        raise RefdiffValueError(
            f"{source}={ds.name!r} has images of {c}x{h}x{w} (channels x height x width) but the model "
            f"expects {channels}x{image_size}x{image_size}; choose --image-size/--channels to match "
            "(or resize the data)"
        )
