"""The UNet description: one frozen, JSON-able config shared by the reference and every backend.

The default is Ho et al. (2020)'s CIFAR-10 network (App. B): base 128 channels, multipliers
(1, 2, 2, 2), two residual blocks per level, self-attention at 16×16, GroupNorm(32), SiLU,
sinusoidal time embedding, dropout 0.1 — 35,746,307 parameters. The options of Dhariwal & Nichol
(2021, §3: several heads, attention at several resolutions, AdaGN, BigGAN up/down residual blocks)
and Nichol & Dhariwal (2021, §3.1: learned variance) are fields of the same config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping

from .._errors import RefdiffValueError, UnknownNameError, check_int, check_real, fail

__all__ = ["UNetConfig", "PRESETS", "get_preset"]


def _as_int_tuple(name: str, value: Any, *, minimum: int, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        fail(name, value, f"expected a sequence of integers >= {minimum}")
    out = tuple(check_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(value))
    if not out and not allow_empty:
        raise RefdiffValueError(f"{name}=() is invalid: expected a non-empty sequence of integers")
    return out


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the DDPM/ADM UNet (Ho et al. 2020, App. B; Dhariwal & Nichol 2021, §3).

    Parameters
    ----------
    image_size : int
        Height and width of the (square) input; must be divisible by ``2**(len(channel_mult)-1)``.
    in_channels : int
        Channels of the input image x_t.
    model_channels : int
        Base channel count; level ``i`` has ``model_channels * channel_mult[i]`` channels.
    out_channels : int or None
        Channels of the ε (or x0, v) prediction; ``None`` means ``in_channels``. The network's
        actual output has :attr:`output_channels` = ``2 * out_channels`` channels when
        ``learn_sigma`` (the second half is the variance interpolation v of Nichol & Dhariwal 2021, Eq. 15).
    channel_mult : tuple of int
        Channel multiplier per resolution level (one level per entry, halving the resolution between levels).
    num_res_blocks : int
        Residual blocks per level on the down path (the up path has one more per level).
    attention_resolutions : tuple of int
        Spatial resolutions (feature-map side length, e.g. 16 for 16×16) that get self-attention
        after each residual block. The middle block always has one attention layer.
    dropout : float
        Dropout probability inside each residual block (applied with an explicit mask).
    num_heads : int
        Attention heads when ``num_head_channels == -1``.
    num_head_channels : int
        If not -1, channels per head; the head count is then ``C // num_head_channels`` (ADM).
    use_scale_shift_norm : bool
        AdaGN: ``GN(h)·(1 + s) + b`` with (s, b) from the time embedding (Dhariwal & Nichol 2021, §3).
    resblock_updown : bool
        BigGAN-style residual blocks for down/up-sampling instead of strided conv / upsample+conv.
    num_classes : int or None
        Class conditioning: a label embedding with ``num_classes + 1`` rows is added to the time
        embedding; label ``num_classes`` is the null label for classifier-free guidance.
    learn_sigma : bool
        Double the output channels for a learned variance (Nichol & Dhariwal 2021, §3.1).
    num_groups : int
        GroupNorm groups; must divide every channel count of the network.
    conv_resample : bool
        Down/up-sampling with a 3×3 conv (strided conv; nearest ×2 then conv). If False, average
        pooling / plain nearest upsampling without parameters (ignored when ``resblock_updown``).
    """

    image_size: int = 32
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int | None = None
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_heads: int = 1
    num_head_channels: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    num_classes: int | None = None
    learn_sigma: bool = False
    num_groups: int = 32
    conv_resample: bool = True

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for k in (
            "image_size",
            "in_channels",
            "model_channels",
            "num_res_blocks",
            "num_heads",
            "num_groups",
        ):
            set_(k, check_int(k, getattr(self, k), minimum=1))
        if self.out_channels is not None:
            set_("out_channels", check_int("out_channels", self.out_channels, minimum=1))
        if self.num_classes is not None:
            set_("num_classes", check_int("num_classes", self.num_classes, minimum=1))
        nhc = check_int("num_head_channels", self.num_head_channels, minimum=-1)
        if nhc == 0:
            fail("num_head_channels", nhc, "expected -1 (use num_heads) or a positive integer")
        set_("num_head_channels", nhc)
        set_(
            "channel_mult",
            _as_int_tuple("channel_mult", self.channel_mult, minimum=1, allow_empty=False),
        )
        set_(
            "attention_resolutions",
            _as_int_tuple(
                "attention_resolutions", self.attention_resolutions, minimum=1, allow_empty=True
            ),
        )
        set_("dropout", check_real("dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True))
        for k in ("use_scale_shift_norm", "resblock_updown", "learn_sigma", "conv_resample"):
            if not isinstance(getattr(self, k), bool):
                fail(k, getattr(self, k), "expected True or False")
        # structural checks
        if self.model_channels < 4:
            fail(
                "model_channels",
                self.model_channels,
                "expected at least 4 (the sinusoidal time embedding has model_channels entries)",
            )
        levels = len(self.channel_mult)
        factor = 2 ** (levels - 1)
        if self.image_size % factor:
            fail(
                "image_size",
                self.image_size,
                f"must be divisible by 2**(len(channel_mult)-1) = {factor} for "
                f"channel_mult={self.channel_mult}",
            )
        resolutions = [self.image_size // 2**i for i in range(levels)]
        for r in self.attention_resolutions:
            if r not in resolutions:
                fail(
                    "attention_resolutions",
                    self.attention_resolutions,
                    f"each entry must be a feature-map resolution of this network, one of "
                    f"{resolutions} (got {r})",
                )
        for m in (1,) + self.channel_mult:
            c = self.model_channels * m
            if c % self.num_groups:
                fail(
                    "num_groups",
                    self.num_groups,
                    f"must divide every channel count; {c} channels (model_channels="
                    f"{self.model_channels} × {m}) are not divisible by it",
                )
        for c in self.attention_channels():
            if nhc == -1:
                if c % self.num_heads:
                    fail(
                        "num_heads",
                        self.num_heads,
                        f"must divide the {c} channels of every attention layer",
                    )
            elif c % nhc:
                fail(
                    "num_head_channels",
                    nhc,
                    f"must divide the {c} channels of every attention layer",
                )

    # ------------------------------------------------------------------ derived quantities
    @property
    def output_channels(self) -> int:
        """Channels of the network output: out_channels (or in_channels), doubled when learn_sigma."""
        base = self.in_channels if self.out_channels is None else self.out_channels
        return 2 * base if self.learn_sigma else base

    @property
    def time_embed_dim(self) -> int:
        """Width of the time-embedding MLP, 4 × model_channels (Ho et al. 2020, App. B)."""
        return 4 * self.model_channels

    def attention_channels(self) -> list[int]:
        """Channel counts of the attention layers (levels at an attention resolution, and the middle)."""
        out = []
        for i, m in enumerate(self.channel_mult):
            if self.image_size // 2**i in self.attention_resolutions:
                out.append(self.model_channels * m)
        out.append(self.model_channels * self.channel_mult[-1])
        return out

    def heads_for(self, channels: int) -> int:
        """Number of attention heads for a layer with ``channels`` channels."""
        if self.num_head_channels == -1:
            return self.num_heads
        return channels // self.num_head_channels

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the fields (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys raise."""
        if not isinstance(d, Mapping):
            fail("d", d, "expected a mapping of UNetConfig fields")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            raise RefdiffValueError(
                f"d has unknown UNetConfig field(s) {unknown}; allowed: {', '.join(names)}"
            )
        kw = dict(d)
        for k in ("channel_mult", "attention_resolutions"):
            if k in kw and isinstance(kw[k], list):
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def replace(self, **changes: Any) -> UNetConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, UNetConfig] = {
    # Ho et al. 2020, App. B (CIFAR-10): 35,746,307 parameters.
    "ddpm-cifar10": UNetConfig(),
    # CPU training demos (16×16 digits, toy images): a few minutes per thousand steps on a laptop.
    "small": UNetConfig(
        image_size=16,
        model_channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        dropout=0.1,
        num_groups=32,
    ),
    # Finite-difference gradient checks in float64 within seconds.
    "tiny": UNetConfig(
        image_size=8,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        dropout=0.1,
        num_groups=8,
    ),
}


def get_preset(name: str, **overrides: Any) -> UNetConfig:
    """The named preset config, with any fields overridden (``get_preset("tiny", num_classes=10)``).

    Parameters
    ----------
    name : str
        One of ``PRESETS`` (``"ddpm-cifar10"``, ``"small"``, ``"tiny"``).
    **overrides
        UNetConfig fields to change.

    Returns
    -------
    UNetConfig
    """
    if name not in PRESETS:
        raise UnknownNameError(
            f"name={name!r} is not a known UNet preset; allowed: {', '.join(map(repr, PRESETS))}"
        )
    names = {f.name for f in dataclasses.fields(UNetConfig)}
    bad = [k for k in overrides if k not in names]
    if bad:
        raise RefdiffValueError(
            f"overrides {bad} are not UNetConfig fields; allowed: {', '.join(sorted(names))}"
        )
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
