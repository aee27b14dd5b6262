"""CuPy training of the refdiff UNet: the reference forward and hand-written backward with fused kernels.

:func:`make_trainer` returns a :class:`CupyTrainer` that ``refdiff.train.driver`` drives (see the
trainer protocol there), exactly like ``backends/torch/train.py``. One step:

1. ε and the dropout masks are drawn on the device from a counter-based stream keyed by
   (seed, step, purpose) — no generator state to checkpoint, so a resumed run draws the same
   numbers as an uninterrupted one;
2. x_t = q_sample(x0, t, ε) and the regression target (ε, x0, v or μ̃) with ``refdiff.diffusion``
   / ``refdiff.losses`` on the device (array-API code);
3. the UNet's forward and backward are ``refdiff.unet.model.unet_forward`` / ``unet_backward``
   with the operation overrides of :func:`refdiff.backends.cupy.unet.make_ops` (shifted-GEMM
   convolutions, fused GroupNorm + SiLU); ∂L/∂out of the importance-weighted L_simple is written
   by hand (it is linear in the output);
4. the gradients are copied into one flat buffer; the squared global norm is one float64
   reduction kernel and the clipping coefficient stays on the device; Adam (or AdamW) and the
   EMA are one fused elementwise kernel over flat parameter / moment / EMA arenas whose views
   are the parameter dict the model reads.

The parameter names, the initialisation (``refdiff.unet.init_params(config, seed)``) and the
checkpoint layout (``optim/exp_avg/<name>``, ``optim/exp_avg_sq/<name>``, ``optim/step/<name>``)
are those of the torch trainer, so a checkpoint written here samples with torch or NumPy, and
either trainer can resume the other's moments.

``device="cpu"`` runs the same step with NumPy in place of CuPy and the NumPy reference of every
kernel (``backends/cupy/_kernel_ref.py``) — for tests and smoke runs, not speed. Supported losses:
L_simple (``loss="simple"``/``"mse"``) with a fixed variance and any mean type; the learned-variance
(hybrid / VLB) losses need the VLB term's gradient, which is not hand-written yet.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import numpy as np

from refdiff._errors import RefdiffValueError, fail
from refdiff.train.driver import ema_decay

from .unet import adam_ema_scalars, get_device, make_ops, PRECISIONS

__all__ = ["CupyTrainer", "make_trainer", "stream_seed", "inference_fn", "DEFAULT_PRECISION"]

#: GEMM precision of float32 training when none is given (``REFDIFF_CUPY_PRECISION`` overrides).
DEFAULT_PRECISION = "tf32"

_NOISE, _DROPOUT = 0, 1

#: cupy._core._routines_linalg COMPUTE_TYPE_* values (DEFAULT, TF32, BF16, FP16) by precision.
_CUPY_COMPUTE_TYPE = {"fp32": 1, "tf32": 7, "bf16": 6, "fp16": 3}


def stream_seed(seed: int, step: int, purpose: int) -> int:
    """A 63-bit seed for the random numbers of one (seed, step, purpose), via NumPy's SeedSequence."""
    w = np.random.SeedSequence([int(seed), int(step), int(purpose), 0x7EF1FF]).generate_state(
        2, np.uint32
    )
    return int((int(w[0]) << 31) ^ int(w[1])) & ((1 << 63) - 1)


def _resolve_kernels(device: str) -> str:
    if device == "cpu":
        return "numpy"
    if device in ("auto", "cuda", "gpu") or str(device).startswith(("cuda:", "gpu:")):
        return "cupy"
    fail(
        "device",
        device,
        "the cupy trainer runs on 'auto', 'cuda', 'cuda:N', or 'cpu' (NumPy "
        "in place of CuPy, for tests)",
    )


@contextlib.contextmanager
def _matmul_precision(cupy, precision: str):
    """Set CuPy's own matmul compute type (attention and dense layers) for float32 while training."""
    try:
        lin = cupy._core._routines_linalg
        want = _CUPY_COMPUTE_TYPE[precision]
        old = lin.get_compute_type(cupy.float32)
        lin.set_compute_type(cupy.float32, want)
    except Exception:  # noqa: BLE001 - a CuPy without this internal API: leave the default
        yield
        return
    try:
        yield
    finally:
        lin.set_compute_type(cupy.float32, old)


class CupyTrainer:
    """One training process on one GPU (or on the CPU with NumPy standing in for CuPy)."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(
        self, cfg, unet_cfg, schedule, *, kernels: str | None = None, precision: str | None = None
    ):
        from refdiff.unet.params import init_params, param_shapes

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RefdiffValueError(
                "backend='cupy' trains on one GPU; data-parallel training "
                "(torchrun, WORLD_SIZE > 1) needs --backend torch"
            )
        if cfg.loss_type != "mse" or cfg.learn_sigma:
            raise RefdiffValueError(
                f"backend='cupy' trains L_simple (loss='simple'/'mse') with a fixed variance; "
                f"loss={cfg.loss!r} with var_type={cfg.var_type!r} needs the VLB term's "
                "hand-written gradient, which the cupy trainer does not have yet; use --backend torch"
            )
        self.cfg, self.unet_cfg = cfg, unet_cfg
        self.kernels = kernels or _resolve_kernels(cfg.device)
        dt_name = cfg.dtype
        if precision is None:
            precision = os.environ.get("REFDIFF_CUPY_PRECISION") or (
                "bf16" if cfg.bf16 else DEFAULT_PRECISION
            )
        if precision not in PRECISIONS:
            fail("precision", precision, f"expected one of {', '.join(PRECISIONS)}")
        self.precision = precision
        if self.kernels == "cupy":
            import array_api_compat.cupy as xp

            dev_arg = None if cfg.device in ("auto", "cuda", "gpu") else cfg.device
            self.kdev = get_device("cupy", precision=precision, device=dev_arg)
            self.device = self.kdev.cuda_device
            self.device.use()
            self._cupy = self.kdev.xp
        else:
            import array_api_compat.numpy as xp

            self.kdev = get_device(self.kernels, precision=precision)
            self.device = "cpu"
            self._cupy = None
        self.xp = xp
        self.np_dtype = np.dtype(dt_name)
        self.dtype = getattr(xp, dt_name)
        self.ops = make_ops(self.kdev)
        self.sched = schedule.to(xp, device=self.device, dtype=self.dtype)
        # flat arenas: the parameter dict is views into them
        self.shapes = param_shapes(unet_cfg)
        self.names = list(self.shapes)
        sizes = [int(np.prod(s)) for s in self.shapes.values()]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.numel = int(self.offsets[-1])
        mod = self.kdev.xp
        self.flat_p = mod.empty((self.numel,), dtype=self.np_dtype)
        self.flat_ema = mod.empty_like(self.flat_p)
        self.flat_m = mod.zeros_like(self.flat_p)
        self.flat_v = mod.zeros_like(self.flat_p)
        self.flat_g = mod.empty_like(self.flat_p)
        self.params = self._views(self.flat_p)
        self.ema = self._views(self.flat_ema)
        self._load_flat(self.flat_p, init_params(unet_cfg, cfg.seed))
        self.flat_ema[...] = self.flat_p
        self.adam_step = 0
        self._reset_counters()
        self._last_losses = None
        self._grad_norm = float("nan")
        self._lr = cfg.lr

    # ------------------------------------------------------------------ arenas
    def _views(self, flat) -> dict[str, Any]:
        return {
            k: flat[int(self.offsets[i]) : int(self.offsets[i + 1])].reshape(s)
            for i, (k, s) in enumerate(self.shapes.items())
        }

    def _load_flat(self, flat, host: dict[str, np.ndarray]) -> None:
        from refdiff.unet.model import check_params

        check_params(host, self.unet_cfg)
        buf = np.concatenate(
            [np.asarray(host[k], dtype=self.np_dtype).reshape(-1) for k in self.names]
        )
        flat[...] = self.kdev.xp.asarray(buf)

    def _host(self, flat) -> dict[str, np.ndarray]:
        h = self._to_numpy(flat)
        return {
            k: h[int(self.offsets[i]) : int(self.offsets[i + 1])].reshape(s).copy()
            for i, (k, s) in enumerate(self.shapes.items())
        }

    def _to_numpy(self, a) -> np.ndarray:
        return self._cupy.asnumpy(a) if self._cupy is not None else np.asarray(a)

    def _to_device(self, a: np.ndarray, dtype=None):
        return self.xp.asarray(np.ascontiguousarray(a), dtype=dtype, device=self.device)

    # ------------------------------------------------------------------ randomness
    def _rng(self, step: int, purpose: int):
        seed = stream_seed(self.cfg.seed, step, purpose)
        if self._cupy is None:
            return np.random.default_rng(seed)
        cupy = self._cupy
        philox = getattr(getattr(cupy.cuda, "curand", None), "CURAND_RNG_PSEUDO_PHILOX4_32_10", 161)
        return cupy.random.RandomState(np.uint64(seed), method=philox)

    def _normal(self, step: int, shape):
        rng = self._rng(step, _NOISE)
        if self._cupy is None:
            return rng.standard_normal(shape, dtype=self.np_dtype)
        return rng.standard_normal(size=shape, dtype=self.np_dtype)

    def _masks(self, step: int, batch: int):
        from refdiff.unet.model import dropout_shapes

        p = self.unet_cfg.dropout
        if p == 0.0:
            return None
        shapes = dropout_shapes(self.unet_cfg, batch)
        total = sum(int(np.prod(s)) for s in shapes.values())
        rng = self._rng(step, _DROPOUT)
        if self._cupy is None:
            u = rng.random(total, dtype=self.np_dtype)
        else:
            u = rng.random_sample(size=(total,), dtype=self.np_dtype)
        xp, keep = self.xp, 1.0 - p
        flat = xp.astype(u < keep, self.dtype) * (1.0 / keep)
        out, off = {}, 0
        for k, s in shapes.items():
            n = int(np.prod(s))
            out[k] = xp.reshape(flat[off : off + n], s)
            off += n
        return out

    # ------------------------------------------------------------------ the step
    def _reset_counters(self) -> None:
        self._losses: list = []
        self._mses: list = []
        self._norms: list = []
        self._steps: list[int] = []

    def _precision_ctx(self):
        if self._cupy is None or self.np_dtype != np.float32:
            return contextlib.nullcontext()
        return _matmul_precision(self._cupy, self.precision)

    def loss_and_grads(self, x0, y, t, weights, step: int):
        """Device (loss, per-sample losses, grads) of the importance-weighted L_simple (no update)."""
        from refdiff.diffusion import q_sample
        from refdiff.losses import l_simple, training_target
        from refdiff.unet.model import unet_backward, unet_forward

        cfg, xp = self.cfg, self.xp
        B = x0.shape[0]
        noise = self._normal(step, tuple(x0.shape))
        x0_d = self._to_device(x0, self.dtype)
        t_d = self._to_device(np.asarray(t).astype(np.int64))
        w_d = self._to_device(weights, self.dtype)
        y_d = None if y is None else self._to_device(np.asarray(y).astype(np.int64))
        masks = self._masks(step, B)
        x_t = q_sample(self.sched, x0_d, t_d, noise=noise)
        t_model = xp.take(self.sched.timestep_map, t_d, axis=0)
        target = training_target(self.sched, x0_d, x_t, t_d, noise, mean_type=cfg.mean_type)
        out, cache = unet_forward(
            self.params,
            self.unet_cfg,
            x_t,
            t_model,
            y=y_d,
            dropout_masks=masks,
            train=masks is not None,
            ops=self.ops,
        )
        diff = out - target
        n_pix = math.prod(diff.shape[1:])
        per_sample = l_simple(out, target)
        loss = xp.mean(per_sample * w_d)
        g_out = diff * xp.reshape(w_d * (2.0 / (B * n_pix)), (B,) + (1,) * (diff.ndim - 1))
        grads = unet_backward(self.params, self.unet_cfg, cache, g_out)
        return loss, per_sample, grads

    def step(
        self, x0: np.ndarray, y: np.ndarray | None, t: np.ndarray, weights: np.ndarray, step: int
    ) -> None:
        """One optimizer step on the global batch (asynchronous on the GPU)."""
        from refdiff.unet.optim import warmup_lr

        cfg, xp, mod = self.cfg, self.xp, self.kdev.xp
        with self._precision_ctx():
            loss, per_sample, grads = self.loss_and_grads(x0, y, t, weights, step)
        mod.concatenate([mod.reshape(grads[k], (-1,)) for k in self.names], out=self.flat_g)
        del grads
        norm = xp.sqrt(self.kdev.sumsq(self.flat_g))
        if cfg.grad_clip is not None:
            c = cfg.grad_clip / (norm + 1e-6)
            coef = xp.where(c < 1.0, c, xp.ones_like(c))
        else:
            coef = xp.ones_like(norm)
        coef = mod.reshape(xp.astype(coef, self.dtype), (1,))
        lr = warmup_lr(step, cfg.lr, cfg.warmup)
        scal = adam_ema_scalars(
            self.np_dtype,
            lr=lr,
            betas=cfg.adam_betas,
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
            decoupled=cfg.optimizer == "adamw",
            step=self.adam_step + 1,
            ema_decay=ema_decay(step, cfg.ema, warmup=getattr(cfg, "ema_warmup", False)),
        )
        self.kdev.adam_ema(
            self.flat_p, self.flat_g, self.flat_m, self.flat_v, self.flat_ema, coef, scal
        )
        self.adam_step += 1
        self._lr = lr
        self._losses.append(xp.astype(loss, xp.float64))
        self._mses.append(xp.astype(xp.mean(per_sample), xp.float64))
        self._norms.append(xp.astype(norm, xp.float64))
        self._steps.append(step)
        self._last_losses = per_sample

    def last_losses(self) -> np.ndarray:
        """Per-sample losses of the last batch, on the host (float64)."""
        return self._to_numpy(self._last_losses).astype(np.float64)

    def collect(self) -> dict[str, Any]:
        """Synchronise: mean loss since the last call, last grad norm, lr, first non-finite step."""
        out: dict[str, Any] = {"lr": float(self._lr)}
        if not self._losses:
            out.update(loss=float("nan"), grad_norm=float(self._grad_norm))
            return out
        xp = self.xp
        losses = self._to_numpy(xp.stack(self._losses))
        mses = self._to_numpy(xp.stack(self._mses))
        norms = self._to_numpy(xp.stack(self._norms))
        self._grad_norm = float(norms[-1])
        out.update(
            loss=float(np.mean(losses)), grad_norm=self._grad_norm, loss_mse=float(np.mean(mses))
        )
        for s, lv, gv in zip(self._steps, losses, norms):
            if not (math.isfinite(lv) and math.isfinite(gv)):
                out["bad_step"] = s
                out["bad_what"] = "loss" if not math.isfinite(lv) else "gradient norm"
                out["bad_value"] = float(lv if not math.isfinite(lv) else gv)
                break
        self._reset_counters()
        return out

    # ------------------------------------------------------------------ state
    def export_state(self) -> dict[str, Any]:
        """Host copies of weights, EMA and Adam moments (torch's slot names) + JSON state."""
        params, ema = self._host(self.flat_p), self._host(self.flat_ema)
        m, v = self._host(self.flat_m), self._host(self.flat_v)
        optim: dict[str, np.ndarray] = {}
        for k in self.names:
            optim[f"exp_avg/{k}"] = m[k]
            optim[f"exp_avg_sq/{k}"] = v[k]
            optim[f"step/{k}"] = np.array(float(self.adam_step), dtype=np.float32)
        cfg = self.cfg
        group = {
            "lr": float(self._lr),
            "betas": list(cfg.adam_betas),
            "eps": cfg.adam_eps,
            "weight_decay": cfg.weight_decay,
        }
        state = {
            "backend": "cupy",
            "kernels": self.kdev.name,
            "precision": self.precision,
            "adam_step": self.adam_step,
            "optimizer": {
                "class": "AdamW" if cfg.optimizer == "adamw" else "Adam",
                "param_groups": [group],
                "names": self.names,
            },
        }
        if self._cupy is not None:
            state["cupy_version"] = self._cupy.__version__
        return {"params": params, "ema": ema, "optimizer": optim, "rng": {}, "state": state}

    def load_state(self, ck) -> None:
        """Restore weights, EMA and Adam moments (from a cupy or a torch checkpoint)."""
        self._load_flat(self.flat_p, ck.params)
        self._load_flat(self.flat_ema, ck.ema if ck.ema else ck.params)
        opt = ck.optimizer or {}
        have = [k for k in self.names if f"exp_avg/{k}" in opt and f"exp_avg_sq/{k}" in opt]
        if have and len(have) != len(self.names):
            raise RefdiffValueError(
                f"checkpoint={str(getattr(ck, 'path', '?'))!r} holds Adam moments "
                f"for {len(have)} of {len(self.names)} parameters"
            )
        if have:
            self._load_flat(self.flat_m, {k: opt[f"exp_avg/{k}"] for k in self.names})
            self._load_flat(self.flat_v, {k: opt[f"exp_avg_sq/{k}"] for k in self.names})
            step_key = f"step/{self.names[0]}"
            self.adam_step = (
                int(round(float(np.asarray(opt[step_key]))))
                if step_key in opt
                else int(ck.state.get("adam_step", ck.step))
            )
        else:
            self.flat_m[...] = 0
            self.flat_v[...] = 0
            self.adam_step = 0

    # ------------------------------------------------------------------ inference
    def model_fn(self, ema: bool = True):
        """``(fn, xp, device, dtype)``: ``fn(x_t, t, y=None)`` runs the (EMA) network without dropout."""
        from refdiff.unet.model import unet_apply

        params = self.ema if ema else self.params

        def fn(x, t, y=None):
            with self._precision_ctx():
                return unet_apply(params, self.unet_cfg, x, t, y=y, ops=self.ops)

        return fn, self.xp, self.device, self.dtype

    def describe(self) -> dict[str, Any]:
        """Backend, kernels, precision, dtype and the GPU (for logs)."""
        d = {
            "backend": "cupy",
            "kernels": self.kdev.name,
            "precision": self.precision,
            "dtype": self.np_dtype.name,
            "device": str(self.device),
            "world_size": 1,
        }
        if self._cupy is not None:
            cupy = self._cupy
            d["cupy"] = cupy.__version__
            try:
                props = cupy.cuda.runtime.getDeviceProperties(self.device.id)
                name = props["name"]
                d["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
            except Exception:  # noqa: BLE001 - logging must not fail
                pass
        return d

    def close(self) -> None:
        """Nothing to release (memory returns to CuPy's pool)."""


def make_trainer(cfg, unet_cfg, schedule, **kw) -> CupyTrainer:
    """The CuPy trainer for ``refdiff.train.driver.train`` (``kernels=``, ``precision=`` optional)."""
    return CupyTrainer(cfg, unet_cfg, schedule, **kw)


def inference_fn(
    params: dict, unet_cfg, *, device: str = "auto", dtype: str = "float32", precision: str = "fp32"
):
    """``(fn, xp, device, dtype)`` running the reference UNet with the CuPy kernels on ``params``."""
    from refdiff.unet.model import check_params, unet_apply

    check_params(params, unet_cfg)
    kernels = _resolve_kernels(device)
    kdev = get_device(
        kernels,
        precision=precision,
        **({} if kernels != "cupy" or device in ("auto", "cuda", "gpu") else {"device": device}),
    )
    if kernels == "cupy":
        import array_api_compat.cupy as xp

        dev = kdev.cuda_device
    else:
        import array_api_compat.numpy as xp

        dev = "cpu"
    dt = getattr(xp, dtype)
    p = {k: xp.asarray(np.asarray(v), dtype=dt, device=dev) for k, v in params.items()}
    ops = make_ops(kdev)

    def fn(x, t, y=None):
        return unet_apply(p, unet_cfg, x, t, y=y, ops=ops)

    return fn, xp, dev, dt
