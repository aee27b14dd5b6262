"""Training support shared by every backend: data, checkpoints, sample grids, metrics and the loop.

Nothing here imports torch, cupy or Pillow at import time; the training step itself lives with
its backend (``refdiff.backends.torch.train``). Entry points: :func:`train` with a
:class:`TrainConfig` (or ``refdiff train`` on the command line), :func:`load_params` to get a
checkpoint's weights for ``refdiff.unet.unet_apply`` or ``TorchUNet.load_params``.
"""

from __future__ import annotations

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_params,
    read_metadata,
    save_checkpoint,
)
from .data import (
    ArrayDataset,
    DataStream,
    DigitsDataset,
    ImageDataset,
    digits,
    load_cifar10,
    load_data,
    load_image_folder,
    load_npy,
)
from .driver import TrainConfig, TrainingDivergedError, compute_bpd, load_run, sample_images, train
from .images import make_grid, read_png, save_grid, to_uint8, write_png
from .metrics import MetricsWriter, ProgressBar, read_metrics

__all__ = [
    "TrainConfig",
    "TrainingDivergedError",
    "train",
    "load_run",
    "sample_images",
    "compute_bpd",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_params",
    "read_metadata",
    "ImageDataset",
    "ArrayDataset",
    "DigitsDataset",
    "DataStream",
    "digits",
    "load_data",
    "load_cifar10",
    "load_image_folder",
    "load_npy",
    "make_grid",
    "save_grid",
    "write_png",
    "read_png",
    "to_uint8",
    "MetricsWriter",
    "read_metrics",
    "ProgressBar",
]
