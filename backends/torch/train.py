"""PyTorch training of the refdiff UNet: autograd, Adam/AdamW, EMA, clipping, warm-up, bf16, DDP.

:func:`make_trainer` returns a :class:`TorchTrainer` that ``refdiff.train.driver`` drives (see its
protocol). The mathematics is refdiff's: ``refdiff.losses.training_losses`` (which calls
``refdiff.diffusion.q_sample``) runs on torch tensors through array-api-compat, with the schedule
tables moved once with ``Schedule.to``; the network is :class:`refdiff.backends.torch.unet.TorchUNet`.

Randomness. The forward noise ε is drawn for the whole global batch from one ``torch.Generator``
on the training device (its state is checkpointed), and each rank keeps its slice; timesteps,
label dropout and the data order come from the driver's host RNG. Dropout uses torch's global
generator of each rank (checkpointed per rank). So an interrupted run resumes exactly, and with
dropout 0, N data-parallel processes compute the same update as one process with the whole
batch (up to the order of floating-point summation in the gradient all-reduce).

Data parallelism: launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), the trainer
joins the process group (NCCL on CUDA, gloo on CPU), wraps the module in
``DistributedDataParallel`` and takes rows ``[r·B/W, (r+1)·B/W)`` of each global batch.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import numpy as np
import torch

from refdiff._errors import RefdiffValueError
from refdiff.train.driver import ema_decay
from refdiff.backends.torch.unet import from_config

__all__ = ["TorchTrainer", "make_trainer", "resolve_device", "init_distributed"]


def init_distributed(device_pref: str = "auto") -> tuple[int, int, int, bool]:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1: returns (rank, world, local_rank, joined_here)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    joined = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        joined = True
    return dist.get_rank(), dist.get_world_size(), local, joined


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA GPU if there is one, else CPU; ``cuda`` -> ``cuda:LOCAL_RANK``."""
    if pref in ("auto", None):
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RefdiffValueError(
                f"device={pref!r} was requested but no CUDA GPU is available (torch {torch.__version__}, "
                f"CUDA runtime {torch.version.cuda or 'none: a CPU-only build'}); use --device cpu"
            )
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


class TorchTrainer:
    """One training process (one rank): module, EMA module, optimizer, noise generator, counters."""

    def __init__(self, cfg, unet_cfg, schedule):
        import array_api_compat.torch as xp

        self.cfg, self.unet_cfg, self.xp = cfg, unet_cfg, xp
        self.rank, self.world_size, local, self._joined = init_distributed(cfg.device)
        self.is_main = self.rank == 0
        if cfg.batch % self.world_size:
            raise RefdiffValueError(
                f"batch={cfg.batch} must be divisible by the number of processes "
                f"({self.world_size})"
            )
        self.device = resolve_device(cfg.device, local)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        # dropout draws from the global generator of this process: one seed per rank
        torch.manual_seed(cfg.seed * 1_000_003 + 7919 * self.rank + 1)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(cfg.seed * 1_000_003 + 7919 * self.rank + 1)
        self.module = from_config(unet_cfg, seed=cfg.seed, dtype=self.dtype, device=self.device)
        self.ema_module = from_config(unet_cfg, seed=cfg.seed, dtype=self.dtype, device=self.device)
        self.ema_module.requires_grad_(False).eval()
        if cfg.channels_last:
            self.module.to(memory_format=torch.channels_last)
            self.ema_module.to(memory_format=torch.channels_last)
        self.names = [n for n, _ in self.module.named_parameters()]
        self.params = [p for _, p in self.module.named_parameters()]
        self.ema_params = [p for _, p in self.ema_module.named_parameters()]
        self.model = self.module
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.compile:
            self.model = torch.compile(self.model)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        kw: dict[str, Any] = {}
        if self.device.type == "cuda":
            kw["fused"] = True
        self.optimizer = opt_cls(
            self.params,
            lr=cfg.lr,
            betas=tuple(cfg.adam_betas),
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
            **kw,
        )
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(cfg.seed * 1_000_003 + 104729)
        self.sched = schedule.to(xp, device=self.device, dtype=self.dtype)
        self._reset_counters()
        self._last_losses = None
        self._grad_norm = torch.zeros((), dtype=torch.float64, device=self.device)
        self._lr = cfg.lr
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            if cfg.tf32 is not None:  # None: leave the process's TF32 flags as they are
                torch.backends.cuda.matmul.allow_tf32 = bool(cfg.tf32)
                torch.backends.cudnn.allow_tf32 = bool(cfg.tf32)

    # ------------------------------------------------------------------ helpers
    def _reset_counters(self):
        dev = self.device
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self._parts: dict[str, torch.Tensor] = {}
        self._count = 0
        self._bad_step = torch.full((), -1, dtype=torch.int64, device=dev)
        self._bad_what = torch.zeros((), dtype=torch.int64, device=dev)
        self._bad_value = torch.zeros((), dtype=torch.float64, device=dev)

    def _autocast(self):
        if self.cfg.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, a: np.ndarray, dtype=None) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=self.device, dtype=dtype)

    def _net(self, model):
        cl = self.cfg.channels_last

        def fn(x, t, y=None):
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x, t, y)
            return out.to(self.dtype)

        return fn

    # ------------------------------------------------------------------ the step
    def step(
        self, x0: np.ndarray, y: np.ndarray | None, t: np.ndarray, weights: np.ndarray, step: int
    ) -> None:
        """One optimizer step on this rank's slice of the global batch (asynchronous on CUDA)."""
        from refdiff.losses import training_losses
        from refdiff.unet.optim import warmup_lr

        cfg = self.cfg
        B = x0.shape[0]
        per = B // self.world_size
        sl = slice(self.rank * per, (self.rank + 1) * per)
        noise = torch.randn(
            tuple(x0.shape), generator=self.gen, device=self.device, dtype=self.dtype
        )[sl]
        x0_d = self._to_device(x0[sl], self.dtype)
        t_d = self._to_device(t[sl].astype(np.int64))
        w_d = self._to_device(weights[sl], self.dtype)
        y_d = None if y is None else self._to_device(y[sl].astype(np.int64))
        lr = warmup_lr(step, cfg.lr, cfg.warmup)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self._lr = lr
        self.model.train()
        net = self._net(self.model)
        with self._autocast():
            terms = training_losses(
                self.sched,
                lambda x, tt: net(x, tt, y_d),
                x0_d,
                t_d,
                noise=noise,
                loss_type=cfg.loss_type,
                mean_type=cfg.mean_type,
                var_type=cfg.var_type,
                lambda_vlb=cfg.lambda_vlb,
                stop_gradient=torch.Tensor.detach,
            )
        per_sample = terms["loss"]
        loss = torch.mean(per_sample * w_d)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        else:
            gnorm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.params if p.grad is not None]
            )
        self.optimizer.step()
        with torch.no_grad():
            d = ema_decay(step, cfg.ema, warmup=getattr(cfg, "ema_warmup", False))
            torch._foreach_mul_(self.ema_params, d)
            torch._foreach_add_(self.ema_params, [p.detach() for p in self.params], alpha=1.0 - d)
            ld = loss.detach().to(torch.float64)
            gd = gnorm.detach().to(torch.float64)
            self._loss_sum += ld
            for k, v in terms.items():
                if k != "loss":
                    self._parts[k] = self._parts.get(k, 0.0) + torch.mean(v.detach()).to(
                        torch.float64
                    )
            self._count += 1
            self._grad_norm = gd
            lbad, gbad = ~torch.isfinite(ld), ~torch.isfinite(gd)
            first = (self._bad_step < 0) & (lbad | gbad)
            self._bad_step = torch.where(
                first, torch.full_like(self._bad_step, step), self._bad_step
            )
            self._bad_what = torch.where(
                first, torch.where(lbad, 1, 2).to(torch.int64), self._bad_what
            )
            self._bad_value = torch.where(first, torch.where(lbad, ld, gd), self._bad_value)
        self._last_losses = per_sample.detach()

    def last_losses(self) -> np.ndarray:
        """Per-sample losses of the last global batch (gathered from every rank), on the host."""
        v = self._last_losses.to(torch.float64)
        if self.world_size > 1:
            import torch.distributed as dist

            parts = [torch.empty_like(v) for _ in range(self.world_size)]
            dist.all_gather(parts, v)
            v = torch.cat(parts)
        return v.cpu().numpy()

    def collect(self) -> dict[str, Any]:
        """Synchronise: mean loss since the last call (over steps and ranks), grad norm, lr, divergence."""
        n = max(self._count, 1)
        keys = sorted(self._parts)
        vals = (
            torch.stack(
                [self._loss_sum]
                + [
                    torch.as_tensor(self._parts[k], dtype=torch.float64, device=self.device)
                    for k in keys
                ]
            )
            / n
        )
        # (first bad step or +inf, what, value) of this rank; the earliest over ranks is reported
        bad = torch.stack(
            [
                torch.where(
                    self._bad_step < 0,
                    torch.full_like(self._bad_value, math.inf),
                    self._bad_step.to(torch.float64),
                ),
                self._bad_what.to(torch.float64),
                self._bad_value,
            ]
        )
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(vals)
            vals = vals / self.world_size
            gathered = [torch.empty_like(bad) for _ in range(self.world_size)]
            dist.all_gather(gathered, bad)
            bad = min(gathered, key=lambda g: float(g[0]))
        host = vals.cpu().numpy()
        bad_h = bad.cpu().numpy()
        out = {"loss": float(host[0]), "grad_norm": float(self._grad_norm), "lr": float(self._lr)}
        for i, k in enumerate(keys):
            out[f"loss_{k}"] = float(host[i + 1])
        if math.isfinite(bad_h[0]):
            out["bad_step"] = int(bad_h[0])
            out["bad_what"] = "loss" if int(bad_h[1]) == 1 else "gradient norm"
            out["bad_value"] = float(bad_h[2])
        self._reset_counters()
        return out

    # ------------------------------------------------------------------ state
    def export_state(self) -> dict[str, Any]:
        """Host copies of everything a resume needs (collective under DDP: every rank must call it)."""
        params = self.module.export_params()
        ema = self.ema_module.export_params()
        optim: dict[str, np.ndarray] = {}
        for name, p in zip(self.names, self.params):
            st = self.optimizer.state.get(p, {})
            for slot, v in st.items():
                if isinstance(v, torch.Tensor):
                    optim[f"{slot}/{name}"] = v.detach().cpu().numpy().copy()
        rng = {"noise": self.gen.get_state().cpu().numpy().copy()}
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        if self.world_size > 1:
            import torch.distributed as dist

            states = [None] * self.world_size
            dist.all_gather_object(
                states,
                (
                    cpu_state.numpy().copy(),
                    None if cuda_state is None else cuda_state.numpy().copy(),
                ),
            )
            for r, (c, g) in enumerate(states):
                rng[f"torch_cpu/{r}"] = c
                if g is not None:
                    rng[f"torch_cuda/{r}"] = g
        else:
            rng["torch_cpu/0"] = cpu_state.numpy().copy()
            if cuda_state is not None:
                rng["torch_cuda/0"] = cuda_state.cpu().numpy().copy()
        groups = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
            for g in self.optimizer.param_groups
        ]
        state = {
            "backend": "torch",
            "torch_version": torch.__version__,
            "world_size": self.world_size,
            "optimizer": {
                "class": type(self.optimizer).__name__,
                "param_groups": groups,
                "names": self.names,
            },
        }
        return {"params": params, "ema": ema, "optimizer": optim, "rng": rng, "state": state}

    def load_state(self, ck) -> None:
        """Restore weights, EMA, optimizer moments and generator states from a checkpoint."""
        self.module.load_params(ck.params)
        self.ema_module.load_params(ck.ema if ck.ema else ck.params)
        sd = self.optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for i, name in enumerate(self.names):
            slots = {
                k.split("/", 1)[0]: torch.from_numpy(np.array(v))
                for k, v in ck.optimizer.items()
                if k.split("/", 1)[1] == name
            }
            if slots:
                state[i] = slots
        if state:
            if len(state) != len(self.names):
                raise RefdiffValueError(
                    f"checkpoint={str(ck.path)!r} holds optimizer state for "
                    f"{len(state)} of {len(self.names)} parameters"
                )
            sd["state"] = state
            self.optimizer.load_state_dict(sd)
        if "noise" in ck.rng:
            self.gen.set_state(torch.from_numpy(np.array(ck.rng["noise"], dtype=np.uint8)))
        key = f"torch_cpu/{self.rank}"
        if key in ck.rng:
            torch.set_rng_state(torch.from_numpy(np.array(ck.rng[key], dtype=np.uint8)))
        key = f"torch_cuda/{self.rank}"
        if key in ck.rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(
                torch.from_numpy(np.array(ck.rng[key], dtype=np.uint8)), self.device
            )

    # ------------------------------------------------------------------ inference
    def model_fn(self, ema: bool = True):
        """``(fn, xp, device, dtype)``: ``fn(x_t, t, y=None)`` runs the (EMA) network in eval mode without grad."""
        module = self.ema_module if ema else self.module
        net = self._net(module)

        def fn(x, t, y=None):
            was = module.training
            module.eval()
            try:
                with torch.no_grad(), self._autocast():
                    return net(x, t, y)
            finally:
                module.train(was)

        return fn, self.xp, self.device, self.dtype

    def describe(self) -> dict[str, Any]:
        """Device, dtype, world size and torch version (for logs)."""
        d = {
            "backend": "torch",
            "torch": torch.__version__,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "world_size": self.world_size,
            "bf16": self.cfg.bf16,
            "channels_last": self.cfg.channels_last,
            "compile": self.cfg.compile,
            "tf32": (
                bool(torch.backends.cuda.matmul.allow_tf32),
                bool(torch.backends.cudnn.allow_tf32),
            )
            if self.device.type == "cuda"
            else None,
        }
        if self.device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.device)
        return d

    def close(self) -> None:
        """Leave the process group if this trainer joined it."""
        if self._joined:
            import torch.distributed as dist

            if dist.is_initialized():
                # every rank leaves together: gloo aborts a rank whose peer tears the group down
                # while it is still finishing (rank 0 writes the last checkpoint alone)
                dist.barrier()
                dist.destroy_process_group()
            self._joined = False


def make_trainer(cfg, unet_cfg, schedule) -> TorchTrainer:
    """The PyTorch trainer for ``refdiff.train.driver.train``."""
    return TorchTrainer(cfg, unet_cfg, schedule)


def load_model(params: dict, unet_cfg, *, device: str = "auto", dtype: str = "float32"):
    """A :class:`TorchUNet` in eval mode holding ``params`` (for ``refdiff sample``/``bpd``)."""
    dev = resolve_device(device)
    dt = torch.float64 if dtype == "float64" else torch.float32
    m = from_config(unet_cfg, dtype=dt, device=dev).load_params(params).eval()
    m.requires_grad_(False)
    return m, dev, dt


def inference_fn(
    params: dict, unet_cfg, *, device: str = "auto", dtype: str = "float32", bf16: bool = False
):
    """``(fn, xp, device, dtype)`` for a parameter dict, like :meth:`TorchTrainer.model_fn`."""
    import array_api_compat.torch as xp

    m, dev, dt = load_model(params, unet_cfg, device=device, dtype=dtype)
    ctx = (
        (lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16))
        if bf16
        else contextlib.nullcontext
    )

    def fn(x, t, y=None):
        with torch.no_grad(), ctx():
            return m(x, t, y).to(dt)

    return fn, xp, dev, dt
