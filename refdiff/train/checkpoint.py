"""Training checkpoints as safetensors files, written atomically.

Layout of one file (every backend writes and reads the same):

- the model weights under the UNet's flat parameter names exactly (``conv_in.weight``, ...), so
  ``safetensors.numpy.load_file`` followed by dropping the names that contain ``/`` gives a dict that
  ``refdiff.unet.model.unet_apply`` accepts;
- ``ema/<name>``: the EMA weights; ``optim/<slot>/<name>``: optimizer moments (e.g. ``exp_avg``,
  ``exp_avg_sq``, ``step``); ``rng/<name>``: random generator states as uint8/int64 arrays;
- string metadata: ``format`` (``refdiff-checkpoint``), ``format_version``, ``step``, ``config``
  (JSON: UNet config, schedule, loss, training options, data), ``state`` (JSON: data-stream
  position, optimizer hyper-parameters, anything else the trainer needs to resume) and
  ``sha256``: a SHA-256 digest of every tensor's name, dtype, shape and bytes, checked on load
  (a flipped bit or a partial copy raises :class:`CheckpointError`).

The file is written to a temporary name in the same folder, flushed to disk, then moved over the
target with ``os.replace``: a crash leaves either the old checkpoint or the new one, never half of
one. A kill between the two leaves the temporary file, which :func:`remove_partial_writes` (called
when a run starts) deletes. safetensors is imported lazily (``pip install 'refdiff[train]'``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from collections.abc import Mapping

import numpy as np

from .._errors import RefdiffValueError
from .._typing import Array

if TYPE_CHECKING:
    import safetensors

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "read_metadata",
    "load_params",
    "check_params",
    "tensor_digest",
    "remove_partial_writes",
]

FORMAT = "refdiff-checkpoint"
FORMAT_VERSION = 1
_PREFIXES = ("ema/", "optim/", "rng/")


class CheckpointError(RefdiffValueError):
    """A checkpoint file that is missing, unreadable, not a refdiff checkpoint, or does not match."""


def _safetensors_numpy() -> ModuleType:
    try:
        import safetensors  # noqa: F401
        import safetensors.numpy as stn
    except ImportError:
        raise CheckpointError(
            "checkpoints are safetensors files; install safetensors with: "
            "pip install 'refdiff[train]'"
        ) from None
    return stn


@dataclass
class Checkpoint:
    """The contents of a checkpoint file (NumPy arrays on the host)."""

    params: dict[str, np.ndarray]
    step: int
    config: dict[str, Any]
    ema: dict[str, np.ndarray] | None = None
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    rng: dict[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def weights(self, *, ema: bool = True) -> dict[str, np.ndarray]:
        """The EMA weights when ``ema`` and present, else the raw model weights."""
        return self.ema if (ema and self.ema) else self.params


def _contiguous(name: str, a: Array) -> np.ndarray:
    arr = np.asarray(a)
    if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
        arr = arr.copy(order="C")
    if arr.dtype.kind not in "biuf":
        raise CheckpointError(
            f"checkpoint array {name!r} has dtype {arr.dtype}; expected a numeric array"
        )
    return arr


def tensor_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def remove_partial_writes(path: str | os.PathLike) -> list[tuple[Path, int]]:
    """Delete the temporary files an interrupted :func:`save_checkpoint` of ``path`` left behind.

    Returns ``(file, size in bytes)`` of each one removed. A run calls this when it starts, when
    no other process writes that checkpoint.
    """
    path = Path(path)
    removed: list[tuple[Path, int]] = []
    if path.parent.is_dir():
        for tmp in path.parent.glob(_tmp_prefix(path) + "*"):
            try:
                size = tmp.stat().st_size
                tmp.unlink()
            except OSError:
                continue
            removed.append((tmp, size))
    return removed


def save_checkpoint(
    path: str | os.PathLike,
    *,
    params: Mapping[str, Any],
    step: int,
    config: Mapping[str, Any],
    ema: Mapping[str, Any] | None = None,
    optimizer: Mapping[str, Any] | None = None,
    rng: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, fsync, ``os.replace``).

    Parameters
    ----------
    path : destination ``.safetensors`` file (parent folders are created).
    params : the model weights by flat parameter name (host arrays).
    step : completed optimizer steps.
    config : JSON-able run configuration (stored as metadata ``config``).
    ema, optimizer, rng : optional dicts of arrays, stored under ``ema/``, ``optim/``, ``rng/``.
    state : JSON-able resume state (stored as metadata ``state``).
    """
    stn = _safetensors_numpy()
    tensors: dict[str, np.ndarray] = {}
    for name, a in params.items():
        if "/" in name:
            raise CheckpointError(
                f"parameter name {name!r} contains '/', which checkpoints reserve "
                "for the ema/, optim/ and rng/ sections"
            )
        tensors[name] = _contiguous(name, a)
    for prefix, d in (("ema/", ema), ("optim/", optimizer), ("rng/", rng)):
        for name, a in (d or {}).items():
            tensors[prefix + name] = _contiguous(prefix + name, a)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "step": str(int(step)),
        "config": json.dumps(dict(config), sort_keys=True),
        "state": json.dumps(dict(state or {}), sort_keys=True),
        "sha256": tensor_digest(tensors),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_tmp_prefix(path)}{os.getpid()}")
    try:
        stn.save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        try:  # make the rename itself durable where the OS allows it
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _open(path: Path) -> safetensors.safe_open:
    _safetensors_numpy()
    import safetensors

    if not path.exists():
        raise CheckpointError(f"checkpoint={str(path)!r}: no such file")
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint={str(path)!r} is a folder; pass the .safetensors file "
            "(a training run writes DIR/checkpoint.safetensors)"
        )
    try:
        return safetensors.safe_open(str(path), framework="numpy")
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise CheckpointError(
            f"checkpoint={str(path)!r} is not a readable safetensors file "
            f"({type(exc).__name__}: {exc})"
        ) from None


def _parse_metadata(path: Path, meta: Mapping[str, str] | None) -> dict[str, Any]:
    meta = dict(meta or {})
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint={str(path)!r} is a safetensors file but not a refdiff "
            f"checkpoint (metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint={str(path)!r} has format_version {meta.get('format_version')!r}; "
            f"this refdiff reads version {FORMAT_VERSION}"
        )
    try:
        return {
            "step": int(meta["step"]),
            "config": json.loads(meta["config"]),
            "state": json.loads(meta.get("state", "{}")),
            "sha256": meta.get("sha256"),
        }
    except (KeyError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint={str(path)!r} has corrupt metadata ({type(exc).__name__}: {exc})"
        ) from None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``{"step", "config", "state"}`` of a checkpoint, without reading its arrays."""
    path = Path(path)
    with _open(path) as f:
        return _parse_metadata(path, f.metadata())


def load_checkpoint(path: str | os.PathLike, *, check: bool = True) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    With ``check`` (default) and a UNet config in the metadata, the weights are checked against
    the config's parameter names and shapes (and so are the EMA weights).
    """
    path = Path(path)
    with _open(path) as f:
        meta = _parse_metadata(path, f.metadata())
        try:
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint={str(path)!r} is truncated or corrupt ({type(exc).__name__}: {exc})"
            ) from None
    if meta["sha256"] is not None and tensor_digest(arrays) != meta["sha256"]:
        raise CheckpointError(
            f"checkpoint={str(path)!r} is corrupt: its tensors do not match the "
            "SHA-256 digest stored when it was written (flipped bits or a damaged "
            "copy); use another copy or an earlier checkpoint"
        )
    ck = Checkpoint(
        params={}, step=meta["step"], config=meta["config"], state=meta["state"], path=path
    )
    ema: dict[str, np.ndarray] = {}
    for k, a in arrays.items():
        if k.startswith("ema/"):
            ema[k[4:]] = a
        elif k.startswith("optim/"):
            ck.optimizer[k[6:]] = a
        elif k.startswith("rng/"):
            ck.rng[k[4:]] = a
        else:
            ck.params[k] = a
    ck.ema = ema or None
    if check and isinstance(ck.config.get("unet"), dict):
        check_params(ck.params, ck.config["unet"], source=f"checkpoint={str(path)!r}")
        if ck.ema is not None:
            check_params(
                ck.ema, ck.config["unet"], source=f"checkpoint={str(path)!r} (EMA weights)"
            )
    return ck


def check_params(
    params: Mapping[str, Any], unet_config: Mapping[str, Any] | Any, *, source: str = "params"
) -> None:
    """Raise :class:`CheckpointError` unless ``params`` has exactly the names and shapes of the config."""
    try:
        from ..unet.config import UNetConfig
        from ..unet.params import param_shapes
    except ImportError:  # the reference UNet is not installed: nothing to check against
        return
    cfg = (
        unet_config
        if isinstance(unet_config, UNetConfig)
        else UNetConfig.from_dict(dict(unet_config))
    )
    want = param_shapes(cfg)
    missing = [k for k in want if k not in params]
    extra = [k for k in params if k not in want]
    wrong = [
        f"{k}: {tuple(np.shape(params[k]))} != {tuple(want[k])}"
        for k in want
        if k in params and tuple(np.shape(params[k])) != tuple(want[k])
    ]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(
                f"missing {len(missing)} ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
            )
        if extra:
            parts.append(
                f"unexpected {len(extra)} ({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})"
            )
        if wrong:
            parts.append(
                f"wrong shapes ({'; '.join(wrong[:5])}{'; ...' if len(wrong) > 5 else ''})"
            )
        raise CheckpointError(f"{source} does not match its UNet config: " + ", ".join(parts))


def load_params(
    path: str | os.PathLike, *, ema: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The weights (EMA by default, when present) and the config of a checkpoint.

    ``params`` feeds ``refdiff.unet.model.unet_apply(params, UNetConfig.from_dict(config["unet"]), ...)``
    or ``TorchUNet.load_params``.
    """
    ck = load_checkpoint(path)
    return ck.weights(ema=ema), ck.config
