"""The training driver: one loop for every backend (progress, metrics, sample grids, checkpoints, resume).

The driver owns everything that is not the training step itself: the data stream, the host RNG
that draws timesteps and label dropout, the loop, logging, sample grids, checkpoints and the
non-finite-loss stop. A backend supplies a *trainer* object (``backends/torch/train.py`` for
PyTorch) with this protocol::

    trainer.rank, trainer.world_size, trainer.is_main
    trainer.step(x0, y, t, weights, step)   # one optimizer step on the global batch (host arrays);
                                            # each rank uses its slice; may run asynchronously
    trainer.collect() -> dict               # sync: mean loss since the last collect (all ranks),
                                            # last grad norm and lr, first non-finite step or None
    trainer.last_losses() -> ndarray        # per-sample losses of the last global batch (host)
    trainer.export_state() -> dict          # params, ema, optimizer, rng arrays + JSON state
    trainer.load_state(checkpoint)
    trainer.model_fn(ema=True) -> (fn, xp, device, dtype)   # fn(x_t, t, y=None) on backend arrays
    trainer.describe() -> dict; trainer.close()

Exactness of resume rests on three facts: the data order is a pure function of (seed, position);
the host RNG's state is stored; the trainer stores its weights, EMA, optimizer moments and
generator states. Sampling and bits/dim never touch the training generators.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO
from collections.abc import Callable

import numpy as np

from .._errors import RefdiffError, RefdiffValueError, UnknownNameError, check_int, check_real, fail
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    _safetensors_numpy,
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
)
from .data import DataStream, ImageDataset, check_matches, describe_dataset, load_data
from .images import save_grid
from .metrics import MetricsWriter, ProgressBar

if TYPE_CHECKING:
    from typing import Protocol

    from .._typing import Array, Device, DType, Namespace
    from ..schedules import Schedule
    from ..unet.config import UNetConfig

    class _Trainer(Protocol):
        """The trainer a backend's ``make_trainer`` returns (``describe`` is optional)."""

        is_main: bool

        def step(
            self,
            x0: np.ndarray,
            y: np.ndarray | None,
            t: np.ndarray,
            weights: np.ndarray,
            step: int,
        ) -> None: ...
        def last_losses(self) -> np.ndarray: ...
        def collect(self) -> dict[str, Any]: ...
        def export_state(self) -> dict[str, Any]: ...
        def load_state(self, ck: Checkpoint) -> None: ...
        def model_fn(
            self, ema: bool = True
        ) -> tuple[Callable[..., Array], Namespace, Device, DType]: ...
        def describe(self) -> dict[str, Any]: ...
        def close(self) -> None: ...


__all__ = [
    "ema_decay",
    "TrainConfig",
    "TrainingDivergedError",
    "train",
    "build_unet_config",
    "build_schedule",
    "load_run",
    "sample_images",
    "sample_with",
    "compute_bpd",
    "resolve_backend",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "SAMPLES_DIR",
    "LOSSES",
    "BACKENDS",
]

CHECKPOINT_NAME = "checkpoint.safetensors"
_RUN_STATE = ("data_stream", "host_rng")
METRICS_NAME = "metrics.jsonl"
SAMPLES_DIR = "samples"

#: CLI loss names -> refdiff.losses.training_losses loss_type.
LOSSES = {
    "simple": "mse",
    "mse": "mse",
    "rescaled_mse": "rescaled_mse",
    "hybrid": "hybrid",
    "kl": "kl",
    "vlb": "kl",
    "rescaled_kl": "rescaled_kl",
}
BACKENDS = ("torch", "cupy")
T_SAMPLERS = ("uniform", "loss-second-moment")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def ema_decay(step: int, max_decay: float, *, warmup: bool = True) -> float:
    """EMA decay of the ``step``-th update (1-based): min(max_decay, (1+n)/(10+n)) with n = step − 1.

    The warm-up (as in diffusers' ``EMAModel`` and Keras-style trainers) lets the average follow
    the fast early weights instead of staying at the initialisation: with a constant 0.9999,
    0.9999^2000 ≈ 82 % of the EMA is still the initial weights after 2000 steps.
    """
    if not warmup:
        return float(max_decay)
    n = max(int(step) - 1, 0)
    return min(float(max_decay), (1.0 + n) / (10.0 + n))


class TrainingDivergedError(RefdiffError, FloatingPointError):
    """The loss (or gradient norm) became NaN or infinite; training stopped."""


@dataclass
class TrainConfig:
    """Every option of a training run (the CLI's ``refdiff train`` flags, JSON-able).

    Options in :data:`TrainConfig.FIXED` define the run and must not change on ``--resume``.
    """

    backend: str = "torch"
    preset: str = "small"
    unet: dict = field(default_factory=dict)  # UNetConfig overrides
    data: str = "digits"
    data_size: int | None = None  # images in the embedded digits set
    hflip: bool = False
    steps: int = 1000
    batch: int = 64
    lr: float = 2e-4
    warmup: int = 0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    ema: float = 0.9999
    ema_warmup: bool = True  # decay min(ema, (1+n)/(10+n)) after n updates
    grad_clip: float | None = 1.0
    schedule: str = "linear"
    T: int = 1000
    loss: str = "simple"
    mean_type: str = "eps"
    var_type: str | None = None  # None: learned_range for hybrid losses
    lambda_vlb: float = 0.001
    t_sampler: str = "uniform"
    label_dropout: float = 0.1
    seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    tf32: bool | None = None  # TF32 on CUDA: True/False set torch's flags, None leaves them
    log_every: int = 10
    ckpt_every: int = 0  # 0: only at the end
    sample_every: int = 0  # 0: only at the end
    n_samples: int = 16
    sampler: str = "ddim"
    sample_steps: int | None = None  # None: min(50, T)

    FIXED = (
        "backend",
        "preset",
        "unet",
        "data",
        "data_size",
        "hflip",
        "batch",
        "optimizer",
        "schedule",
        "T",
        "loss",
        "mean_type",
        "var_type",
        "lambda_vlb",
        "t_sampler",
        "seed",
        "dtype",
        "label_dropout",
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> TrainConfig:
        """Check every field (raises naming the option)."""
        if self.backend not in BACKENDS:
            raise UnknownNameError(
                f"backend={self.backend!r} is not a training backend; allowed: "
                f"{', '.join(map(repr, BACKENDS))}"
            )
        self.steps = check_int("steps", self.steps, minimum=0)
        self.batch = check_int("batch", self.batch, minimum=1)
        self.lr = check_real("lr", self.lr, lo=0.0, lo_open=True)
        self.warmup = check_int("warmup", self.warmup, minimum=0)
        if self.optimizer not in ("adam", "adamw"):
            fail("optimizer", self.optimizer, "expected 'adam' or 'adamw'")
        self.weight_decay = check_real("weight_decay", self.weight_decay, lo=0.0)
        self.adam_betas = tuple(
            check_real(f"adam_betas[{i}]", b, lo=0.0, hi=1.0, hi_open=True)
            for i, b in enumerate(self.adam_betas)
        )
        self.adam_eps = check_real("adam_eps", self.adam_eps, lo=0.0, lo_open=True)
        self.ema = check_real("ema", self.ema, lo=0.0, hi=1.0)
        if not isinstance(self.ema_warmup, bool):
            fail("ema_warmup", self.ema_warmup, "expected True or False")
        if self.grad_clip is not None:
            self.grad_clip = check_real("grad_clip", self.grad_clip, lo=0.0)
            if self.grad_clip == 0.0:
                self.grad_clip = None
        self.T = check_int("T", self.T, minimum=1)
        if self.loss not in LOSSES:
            raise UnknownNameError(
                f"loss={self.loss!r} is not a known loss; allowed: {', '.join(map(repr, LOSSES))}"
            )
        if self.mean_type not in ("eps", "x0", "v", "mu"):
            fail("mean_type", self.mean_type, "expected 'eps', 'x0', 'v' or 'mu'")
        if self.var_type is None:
            self.var_type = (
                "learned_range"
                if LOSSES[self.loss] in ("hybrid", "rescaled_mse")
                else "fixed_small"
            )
        if self.var_type not in ("fixed_small", "fixed_large", "learned", "learned_range"):
            fail(
                "var_type",
                self.var_type,
                "expected 'fixed_small', 'fixed_large', 'learned' or 'learned_range'",
            )
        if LOSSES[self.loss] in ("hybrid", "rescaled_mse") and self.var_type not in (
            "learned",
            "learned_range",
        ):
            fail(
                "var_type",
                self.var_type,
                f"loss {self.loss!r} trains a learned variance; use 'learned' or 'learned_range'",
            )
        self.lambda_vlb = check_real("lambda_vlb", self.lambda_vlb, lo=0.0)
        if self.t_sampler not in T_SAMPLERS:
            raise UnknownNameError(
                f"t_sampler={self.t_sampler!r} is not known; allowed: "
                f"{', '.join(map(repr, T_SAMPLERS))}"
            )
        self.label_dropout = check_real("label_dropout", self.label_dropout, lo=0.0, hi=1.0)
        self.seed = check_int("seed", self.seed, minimum=0)
        if self.dtype not in ("float32", "float64"):
            fail(
                "dtype",
                self.dtype,
                "expected 'float32' or 'float64' (use --bf16 for bfloat16 autocast)",
            )
        if self.bf16 and self.dtype != "float32":
            fail("bf16", self.bf16, "bfloat16 autocast needs dtype float32 weights")
        self.log_every = check_int("log_every", self.log_every, minimum=1)
        self.ckpt_every = check_int("ckpt_every", self.ckpt_every, minimum=0)
        self.sample_every = check_int("sample_every", self.sample_every, minimum=0)
        self.n_samples = check_int("n_samples", self.n_samples, minimum=0)
        if self.sample_steps is not None:
            self.sample_steps = check_int("sample_steps", self.sample_steps, minimum=1)
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            fail("device", self.device, "expected auto, cpu, cuda, cuda:N or mps")
        if not isinstance(self.unet, dict):
            fail("unet", self.unet, "expected a dict of UNetConfig overrides")
        if self.data_size is not None:
            self.data_size = check_int("data_size", self.data_size, minimum=1)
        return self

    def to_dict(self) -> dict:
        """JSON-able dict of the fields."""
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Rebuild from :meth:`to_dict` (unknown keys raise)."""
        names = {f.name for f in dataclasses.fields(cls)}
        bad = [k for k in d if k not in names]
        if bad:
            raise RefdiffValueError(
                f"unknown training option(s) {bad}; allowed: {', '.join(sorted(names))}"
            )
        kw = dict(d)
        if "adam_betas" in kw:
            kw["adam_betas"] = tuple(kw["adam_betas"])
        return cls(**kw)

    @property
    def grid_steps(self) -> int:
        """Sampler steps of the sample grids: ``sample_steps``, by default min(50, T)."""
        return min(50, self.T) if self.sample_steps is None else self.sample_steps

    def check_run(self) -> TrainConfig:
        """The checks that need the registry or relate options (run before training starts)."""
        from .sampling import check_sampler

        if self.sample_steps is not None and self.sample_steps > self.T:
            fail("sample_steps", self.sample_steps, f"expected at most T={self.T} sampler steps")
        check_sampler(self.sampler, steps=self.grid_steps, T=self.T)
        return self

    @property
    def loss_type(self) -> str:
        """The ``refdiff.losses.training_losses`` loss type."""
        return LOSSES[self.loss]

    @property
    def learn_sigma(self) -> bool:
        """Whether the UNet outputs a variance too."""
        return self.var_type in ("learned", "learned_range")


# --------------------------------------------------------------------------------------------
# Building the pieces from a config
# --------------------------------------------------------------------------------------------


def build_unet_config(cfg: TrainConfig, dataset: ImageDataset | None = None) -> UNetConfig:
    """The UNetConfig of a run: the preset, the data's image size/channels (for files), overrides."""
    from ..unet.config import get_preset

    over = dict(cfg.unet)
    if dataset is not None and not cfg.data.startswith("digits"):
        c, h, _ = dataset.image_shape
        over.setdefault("image_size", h)
        over.setdefault("in_channels", c)
    if cfg.learn_sigma:
        over["learn_sigma"] = True
    return get_preset(cfg.preset, **over)


def build_schedule(name: str, T: int) -> Schedule:
    """The host float64 schedule named ``name`` with ``T`` steps (``NAME+ztsnr`` adds zero terminal SNR)."""
    from .. import schedules

    base, _, mod = name.partition("+")
    s = schedules.get_schedule(base, T)
    if mod == "ztsnr":
        s = schedules.zero_terminal_snr(s)
    elif mod:
        fail("schedule", name, "expected a schedule name, optionally with '+ztsnr'")
    return s


def resolve_backend(name: str) -> ModuleType:
    """The module implementing ``make_trainer`` for a backend (imported lazily).

    ``name`` is ``torch`` or ``cupy``, optionally ``NAME@DEVICE``: ``cupy@cpu`` is the CuPy
    trainer with NumPy standing in for CuPy (tests and smoke runs, not speed), which needs no CuPy.
    """
    import importlib
    import importlib.util

    base, _, device = str(name).partition("@")
    if base == "torch":
        if importlib.util.find_spec("torch") is None:
            raise RefdiffValueError(
                "backend='torch' needs PyTorch; install it with: pip install 'refdiff[torch,train]'"
            )
        return importlib.import_module("refdiff.backends.torch.train")
    if base == "cupy":
        mod = importlib.import_module("refdiff.backends.cupy.train")  # imports no CuPy itself
        if device != "cpu":
            try:
                importlib.import_module("cupy")  # a CUDA initialisation failure shows here too
            except Exception:  # noqa: BLE001 - ImportError or a CUDA initialisation failure
                raise RefdiffValueError(
                    "backend='cupy' is not available here: CuPy is not importable (install cupy-cuda12x "
                    "on a CUDA machine); use --backend torch, or --device cpu "
                    "for the CuPy trainer's NumPy stand-in (slow)"
                ) from None
        return mod
    raise UnknownNameError(
        f"backend={base!r} is not a training backend; allowed: {', '.join(map(repr, BACKENDS))}"
    )


# --------------------------------------------------------------------------------------------
# Sampling and bits/dim (any backend's model function, host noise)
# --------------------------------------------------------------------------------------------


def _host_noise(
    rng: np.random.Generator, shape: tuple[int, ...], xp: Namespace, device: Device, dtype: DType
) -> Array:
    return xp.asarray(rng.standard_normal(shape), dtype=dtype, device=device)


def sample_images(
    model_fn: Callable[..., Array],
    schedule: Schedule,
    *,
    shape: tuple[int, ...],
    xp: Namespace,
    device: Device = None,
    dtype: DType = None,
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    y: Array | None = None,
    eta: float = 0.0,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: bool = True,
    spacing: str = "trailing",
    progress: Callable | None = None,
    check_finite: bool = True,
) -> np.ndarray:
    """Draw images with a registered sampler; returns host NumPy (N, C, H, W) in [-1, 1] (not clipped).

    ``schedule`` is the host (float64) training schedule; it is respaced and moved here.

    The noise is drawn on the host with ``numpy.random.default_rng(seed)`` and moved to the
    backend, so the same checkpoint and seed give the same images on every backend.
    ``model_fn(x_t, t, y)`` returns the raw network output on the backend. With
    ``check_finite`` (default) sampling stops at the first step whose state or predicted x0 is
    not finite, naming it (``refdiff.samplers.check_finite``), and a non-finite result raises.
    """
    from .sampling import run_sampler

    dtype = xp.float32 if dtype is None else dtype
    rng = np.random.default_rng(seed)
    x_T = _host_noise(rng, shape, xp, device, dtype)

    def noise_sampler(*_args: object, **_kw: object) -> Array:
        return _host_noise(rng, shape, xp, device, dtype)

    out = run_sampler(
        sampler,
        lambda x, t: model_fn(x, t, y),
        schedule,
        x_T,
        steps=steps,
        noise_sampler=noise_sampler,
        eta=eta,
        mean_type=mean_type,
        var_type=var_type,
        clip_x0=clip_x0,
        spacing=spacing,
        progress=progress,
        callback=_finite_guard() if check_finite else None,
        require_finite=check_finite,
    )
    return np.asarray(_to_numpy(out), dtype=np.float64)


def _finite_guard() -> Callable[..., None]:
    from ..samplers import check_finite

    return check_finite()


def _to_numpy(a: Array) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach()
        if a.dtype.is_floating_point and a.dtype.itemsize < 4:
            a = a.float()
        return a.cpu().numpy()
    if hasattr(a, "get"):  # cupy
        return a.get()
    return np.asarray(a)


def compute_bpd(
    model_fn: Callable[..., Array],
    schedule: Schedule,
    x0_host: np.ndarray,
    *,
    xp: Namespace,
    device: Device = None,
    dtype: DType = None,
    seed: int = 0,
    y_host: np.ndarray | None = None,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    progress: Callable | None = None,
) -> dict[str, np.ndarray]:
    """VLB bits/dim of a batch with ``refdiff.kl.calc_bpd_loop``; host noise drawn per timestep.

    Returns host arrays ``total_bpd`` (B,), ``prior_bpd`` (B,), ``vb`` (B, T), ``mse`` (B, T).
    """
    from ..kl import calc_bpd_loop

    dtype = xp.float32 if dtype is None else dtype
    x0 = xp.asarray(x0_host, dtype=dtype, device=device)
    y = None if y_host is None else xp.asarray(y_host, dtype=xp.int64, device=device)

    def noise(t: int | Array) -> Array:
        # the draw for timestep t depends only on (seed, t), whatever order the loop asks in
        return _host_noise(
            np.random.default_rng([seed, int(t)]), tuple(x0.shape), xp, device, dtype
        )

    res = calc_bpd_loop(
        schedule,
        lambda x, t: model_fn(x, t, y),
        x0,
        noise=noise,
        mean_type=mean_type,
        var_type=var_type,
        progress=progress,
    )
    return {
        k: _to_numpy(res[k]).astype(np.float64) for k in ("total_bpd", "prior_bpd", "vb", "mse")
    }


def sample_with(
    trainer: _Trainer,
    run_cfg: TrainConfig,
    schedule: Schedule,
    unet_cfg: UNetConfig,
    *,
    n: int,
    sampler: str,
    steps: int,
    seed: int,
    ema: bool = True,
    eta: float = 0.0,
    labels: np.ndarray | None = None,
    progress: Callable | None = None,
) -> np.ndarray:
    """Sample ``n`` images from a trainer's model (EMA weights by default)."""
    fn, xp, device, dtype = trainer.model_fn(ema=ema)
    y = None
    if unet_cfg.num_classes is not None:
        lab = labels if labels is not None else np.arange(n) % unet_cfg.num_classes
        y = xp.asarray(np.asarray(lab, dtype=np.int64), device=device)
    shape = (n, unet_cfg.in_channels, unet_cfg.image_size, unet_cfg.image_size)
    return sample_images(
        fn,
        schedule,
        shape=shape,
        xp=xp,
        device=device,
        dtype=dtype,
        sampler=sampler,
        steps=steps,
        seed=seed,
        y=y,
        eta=eta,
        mean_type=run_cfg.mean_type,
        var_type=str(run_cfg.var_type),
        progress=progress,
    )


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _merge_resume(cfg: TrainConfig, saved: dict, explicit: set[str] | None) -> TrainConfig:
    """The config to resume with.

    Options in ``explicit`` (default: all of ``cfg``) override the checkpoint's, except those in
    :attr:`TrainConfig.FIXED`, which must then equal the checkpoint's; the rest come from the
    checkpoint (so a bare ``--resume`` continues to the interrupted run's own ``--steps``).
    """
    merged = TrainConfig.from_dict(saved).to_dict()
    new = cfg.to_dict()
    explicit = set(new) if explicit is None else set(explicit)
    for k in new:
        if k not in explicit:
            continue
        if k in TrainConfig.FIXED:
            if new[k] != merged[k]:
                raise RefdiffValueError(
                    f"{k}={new[k]!r} differs from the checkpoint's {k}={merged[k]!r}; a resumed run keeps "
                    f"the options that define it ({', '.join(TrainConfig.FIXED)}); drop the option or "
                    "start a new run in another --out folder"
                )
        else:
            merged[k] = new[k]
    return TrainConfig.from_dict(merged)


def load_run(path: str | os.PathLike) -> tuple[Checkpoint, TrainConfig, UNetConfig, Schedule]:
    """Read a training checkpoint: ``(checkpoint, TrainConfig, UNetConfig, host schedule)``."""
    from ..unet.config import UNetConfig

    ck = load_checkpoint(path)
    if "train" not in ck.config or "unet" not in ck.config:
        raise CheckpointError(
            f"checkpoint={str(path)!r} has no training config (metadata 'config' "
            "lacks 'train'/'unet'); it was not written by refdiff train"
        )
    cfg = TrainConfig.from_dict(ck.config["train"])
    unet_cfg = UNetConfig.from_dict(ck.config["unet"])
    return ck, cfg, unet_cfg, build_schedule(cfg.schedule, cfg.T)


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: str | os.PathLike | bool | None = None,
    explicit: set[str] | None = None,
    progress: bool | None = None,
    stream: TextIO | None = None,
    step_hook: Callable[[int, Any], None] | None = None,
    weights_only: bool = False,
) -> dict[str, Any]:
    """Train a UNet as ``cfg`` says, writing checkpoints, metrics and sample grids to ``out``.

    Parameters
    ----------
    cfg : TrainConfig
    out : folder for ``checkpoint.safetensors``, ``metrics.jsonl``, ``samples/``, ``config.json``.
    resume : None (a fresh run; refuses a folder that already holds a checkpoint), True (resume
        from ``out/checkpoint.safetensors``) or a checkpoint path. ``cfg.steps`` is the total step
        count to reach.
    explicit : names of the options the user set (the CLI passes the flags given); on resume these
        override the checkpoint's (run-defining ones must equal it). Default: every field of ``cfg``.
    progress : show the progress bar (default: on when ``stream`` is a terminal or a log).
    step_hook : called as ``step_hook(step, trainer)`` after each step (tests inject faults here).
    weights_only : with ``resume``, accept a checkpoint without the run state (data order and
        host generator): continue from its weights (and optimizer moments if present) with a
        fresh data order; the continuation is then not bit-identical to an uninterrupted run.

    Returns
    -------
    dict with ``step``, ``checkpoint`` (path), ``metrics`` (path), ``samples`` (last grid or None),
    ``last`` (the last collected statistics).

    Raises
    ------
    TrainingDivergedError
        When a loss or gradient norm is not finite; the checkpoint on disk is the last good one.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        fail(
            "out",
            str(out),
            "expected a folder for the run (checkpoint, metrics, samples); "
            "this is an existing file",
        )
    _safetensors_numpy()  # checkpoints need safetensors: fail before training
    ckpt_path = out / CHECKPOINT_NAME
    ck: Checkpoint | None = None
    if resume:
        src = ckpt_path if resume is True else Path(resume)
        if src.is_dir():
            src = src / CHECKPOINT_NAME
        if not src.exists():
            raise CheckpointError(f"resume={str(src)!r}: no checkpoint to resume from")
        ck = load_checkpoint(src)
        if "train" not in ck.config:
            raise CheckpointError(f"checkpoint={str(src)!r} was not written by refdiff train")
        missing = [k for k in _RUN_STATE if k not in ck.state]
        if missing and not weights_only:
            raise CheckpointError(
                f"checkpoint={str(src)!r} lacks the run state an exact resume needs (metadata "
                f"'state' has no {', '.join(map(repr, missing))}); to continue from its weights "
                "only, with a fresh data order, pass --weights-only (weights_only=True)"
            )
        cfg = _merge_resume(cfg, ck.config["train"], explicit)
    elif ckpt_path.exists():
        raise RefdiffValueError(
            f"out={str(out)!r} already holds {CHECKPOINT_NAME}; pass --resume to "
            "continue that run, or choose another --out folder"
        )
    cfg.validate().check_run()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail("out", str(out), f"cannot create the run folder ({exc.strerror or exc})")
    backend_mod = resolve_backend(
        f"{cfg.backend}@{cfg.device}" if cfg.device == "cpu" else cfg.backend
    )

    # data and model description
    probe = None if cfg.data.startswith("digits") else load_data(cfg.data, split="train")
    unet_cfg = build_unet_config(cfg, probe)
    dataset = probe or load_data(
        cfg.data,
        split="train",
        image_size=unet_cfg.image_size,
        channels=unet_cfg.in_channels,
        seed=cfg.seed,
        digits_size=cfg.data_size,
    )
    check_matches(dataset, image_size=unet_cfg.image_size, channels=unet_cfg.in_channels)
    if unet_cfg.num_classes is not None and dataset.num_classes is None:
        raise RefdiffValueError(
            f"the model is class-conditional (num_classes={unet_cfg.num_classes}) but "
            f"data={dataset.name!r} has no labels"
        )
    if (
        unet_cfg.num_classes is not None
        and dataset.num_classes is not None  # (None raised above)
        and dataset.num_classes > unet_cfg.num_classes
    ):
        raise RefdiffValueError(
            f"data={dataset.name!r} has {dataset.num_classes} classes but the model "
            f"has num_classes={unet_cfg.num_classes}"
        )
    schedule = build_schedule(cfg.schedule, cfg.T)
    run_config = {
        "train": cfg.to_dict(),
        "unet": unet_cfg.to_dict(),
        "schedule": {"name": cfg.schedule, "T": cfg.T},
        "data": describe_dataset(dataset),
    }

    trainer = backend_mod.make_trainer(cfg, unet_cfg, schedule)
    try:
        return _loop(
            cfg,
            trainer,
            dataset,
            unet_cfg,
            schedule,
            run_config,
            out,
            ck,
            progress=progress,
            stream=stream,
            step_hook=step_hook,
        )
    finally:
        trainer.close()


def _loop(
    cfg: TrainConfig,
    trainer: _Trainer,
    dataset: ImageDataset,
    unet_cfg: UNetConfig,
    schedule: Schedule,
    run_config: dict[str, Any],
    out: Path,
    ck: Checkpoint | None,
    *,
    progress: bool | None,
    stream: TextIO | None,
    step_hook: Callable[[int, Any], None] | None,
) -> dict[str, Any]:
    from ..losses import LossSecondMomentResampler, UniformSampler

    main = trainer.is_main
    np_dtype = np.float64 if cfg.dtype == "float64" else np.float32
    data_stream = DataStream(len(dataset), seed=cfg.seed, hflip=cfg.hflip)
    host_rng = np.random.default_rng([cfg.seed, 0x74])  # timesteps and label dropout
    t_sampler = (
        LossSecondMomentResampler(cfg.T)
        if cfg.t_sampler == "loss-second-moment"
        else UniformSampler(cfg.T)
    )
    start = 0
    if ck is not None:
        trainer.load_state(ck)
        st = ck.state
        if all(k in st for k in _RUN_STATE):
            data_stream.load_state(st["data_stream"])
            host_rng.bit_generator.state = st["host_rng"]
        if isinstance(t_sampler, LossSecondMomentResampler) and "t_sampler/history" in ck.rng:
            t_sampler.load_state_dict(
                {"history": ck.rng["t_sampler/history"], "count": ck.rng["t_sampler/count"]}
            )
        start = ck.step
    ckpt_path = out / CHECKPOINT_NAME
    stream = stream if stream is not None else sys.stderr
    if main:
        for tmp, size in remove_partial_writes(ckpt_path):
            print(
                f"removed {tmp.name} ({size} bytes), a checkpoint write an interrupted run left "
                "behind",
                file=stream,
                flush=True,
            )
        if ck is not None:
            dropped = trim_metrics(out / METRICS_NAME, ck.step)
            if dropped:
                print(
                    f"dropped {dropped} metrics records after step {ck.step} (written after the "
                    "checkpoint this run resumes from)",
                    file=stream,
                    flush=True,
                )
    metrics = MetricsWriter(out / METRICS_NAME, append=ck is not None) if main else None
    if main:
        info = dict(
            run_config,
            runtime=_json_safe(trainer.describe()) if hasattr(trainer, "describe") else {},
        )
        (out / "config.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    bar = ProgressBar(
        cfg.steps,
        initial=start,
        desc="train",
        stream=stream,
        enabled=main and (progress if progress is not None else True),
    )
    last_grid = None
    last_stats: dict[str, Any] = {}
    last_good = ck.step if ck is not None else None
    last_good_path = ck.path if ck is not None else None
    t_last, imgs_since = time.perf_counter(), 0

    def where() -> str:
        return (
            f"the last good checkpoint (step {last_good}) is {last_good_path}"
            if last_good is not None
            else "no checkpoint was written"
        )

    def save(step: int) -> None:
        nonlocal last_good, last_good_path
        state = trainer.export_state()
        bad = [k for k, v in state["params"].items() if not np.all(np.isfinite(v))]
        if bad:
            raise TrainingDivergedError(
                f"training diverged: the weights are not finite after step {step} ({len(bad)} tensors, "
                f"e.g. {bad[0]}); the checkpoint was not written; {where()}"
            )
        rng = dict(state.get("rng", {}))
        if isinstance(t_sampler, LossSecondMomentResampler):
            sd = t_sampler.state_dict()
            rng["t_sampler/history"], rng["t_sampler/count"] = sd["history"], sd["count"]
        js = dict(state.get("state", {}))
        js.update({"data_stream": data_stream.state(), "host_rng": host_rng.bit_generator.state})
        if main:
            try:
                save_checkpoint(
                    ckpt_path,
                    params=state["params"],
                    ema=state.get("ema"),
                    optimizer=state.get("optimizer"),
                    rng=rng,
                    step=step,
                    config=run_config,
                    state=_json_safe(js),
                )
            except OSError as exc:
                raise CheckpointError(
                    f"could not write the checkpoint of step {step} to {ckpt_path} "
                    f"({exc.strerror or exc}); training stopped; {where()} (intact)"
                ) from None
        last_good, last_good_path = step, ckpt_path

    def grid(step: int) -> Path | None:
        if cfg.n_samples == 0:
            return None
        imgs = sample_with(
            trainer,
            cfg,
            schedule,
            unet_cfg,
            n=cfg.n_samples,
            sampler=cfg.sampler,
            steps=cfg.grid_steps,
            seed=cfg.seed + 1,
        )
        path = out / SAMPLES_DIR / f"step_{step:07d}.png"
        save_grid(path, imgs)
        return path

    try:
        if start >= cfg.steps and main:
            bar.write(f"checkpoint is at step {start} >= --steps {cfg.steps}; nothing to train")
        for step in range(start, cfg.steps):
            s = step + 1
            idx, flip = data_stream.next(cfg.batch)
            x0, y = dataset.batch(idx, dtype=np_dtype, flip=flip)
            t, w = t_sampler.sample(cfg.batch, host_rng)
            if unet_cfg.num_classes is not None:
                drop = host_rng.random(cfg.batch) < cfg.label_dropout
                assert y is not None  # train() checked: a class-conditional model's data has labels
                y = np.where(drop, unet_cfg.num_classes, y).astype(np.int64)
            else:
                y = None
            trainer.step(x0, y, t, w.astype(np_dtype), s)
            imgs_since += cfg.batch
            if isinstance(t_sampler, LossSecondMomentResampler):
                t_sampler.update(t, trainer.last_losses())
            if step_hook is not None:
                step_hook(s, trainer)
            final = s == cfg.steps
            do_log = s % cfg.log_every == 0 or final
            do_ckpt = final or (cfg.ckpt_every and s % cfg.ckpt_every == 0)
            do_samp = (cfg.sample_every and s % cfg.sample_every == 0) or final
            if do_log or do_ckpt or do_samp:
                stats = trainer.collect()
                if stats.get("bad_step") is not None:
                    raise TrainingDivergedError(
                        f"training diverged: the {stats.get('bad_what', 'loss')} is not finite "
                        f"({stats.get('bad_value')}) at step {stats['bad_step']}; stopped at step {s}; "
                        f"{where()}. Try a lower --lr, a --warmup, or --grad-clip"
                    )
                now = time.perf_counter()
                rec = {
                    "step": s,
                    "loss": stats["loss"],
                    "grad_norm": stats["grad_norm"],
                    "lr": stats["lr"],
                    "img_per_s": imgs_since / max(now - t_last, 1e-12),
                    "epoch": data_stream.position / len(dataset),
                }
                for k, v in stats.items():
                    if (
                        k not in rec
                        and k not in ("bad_step", "bad_what", "bad_value")
                        and np.isscalar(v)
                    ):
                        rec[k] = v
                t_last, imgs_since = now, 0
                last_stats = rec
                if metrics is not None:  # main rank: every collection is a record
                    metrics.write(rec)
                bar.set_postfix(
                    loss=rec["loss"],
                    gnorm=rec["grad_norm"],
                    lr=rec["lr"],
                    img_s=round(rec["img_per_s"], 1),
                )
            if do_ckpt:
                save(s)
            if do_samp and main:
                last_grid = grid(s)
            if do_ckpt or do_samp:
                t_last = time.perf_counter()  # img/s counts training time only
            bar.update(1)
        if start >= cfg.steps and main and not ckpt_path.exists():
            save(start)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    return {
        "step": max(start, cfg.steps),
        "checkpoint": ckpt_path,
        "metrics": out / METRICS_NAME,
        "samples": last_grid,
        "last": last_stats,
        "unet": unet_cfg,
        "config": cfg,
    }


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def trim_metrics(path: Path, step: int) -> int:
    """Drop the records of ``path`` after ``step`` (written after the checkpoint a run resumes
    from); returns how many were dropped. The file is rewritten atomically."""
    path = Path(path)
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec_step = json.loads(line).get("step") if line.strip() else None
        except ValueError:  # a line cut short by a kill: drop it
            dropped += 1
            continue
        if rec_step is not None and rec_step > step:
            dropped += 1
            continue
        if line.strip():
            keep.append(line)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        os.replace(tmp, path)
    return dropped
