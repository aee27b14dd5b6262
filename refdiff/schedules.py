"""Discrete noise schedules with improved-diffusion's table names, exact to about one ulp.

Every table is computed in double-double arithmetic (``refdiff._dd``, ~106 bits) from the
schedule's defining formula and rounded to float64 once, so cancellations such as 1 - ᾱ at small t,
log(1 - ᾱ) at large t, the log-SNR near zero or the cosine schedule near π/2 cost nothing.
log ᾱ_t = Σ_{s<=t} log(1 - β_s) is carried as the double-double product Π(1 - β_s).

Index convention: t = 0..T-1 and index 0 is one diffusion step (Ho et al. 2020 use 1..T;
improved-diffusion's 0-based convention is used throughout refdiff).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

from . import _dd
from ._cache import IdentityCache
from ._dd import DD
from ._errors import UnknownNameError, check_choice, check_int, check_real, fail
from ._typing import Array, Device, DType, Namespace

__all__ = [
    "Schedule",
    "from_betas",
    "from_alphas_cumprod",
    "linear",
    "scaled_linear",
    "quadratic",
    "sigmoid",
    "cosine",
    "get_schedule",
    "list_schedules",
    "register_schedule",
    "zero_terminal_snr",
    "space_timesteps",
    "spaced_timesteps",
    "respace",
    "TABLE_NAMES",
    "SPACINGS",
    "DIFFUSERS_SPACINGS",
]

#: The float64 tables every Schedule carries (improved-diffusion's names plus log-SNR tables).
TABLE_NAMES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "alphas_cumprod_next",
    "one_minus_alphas_cumprod",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_log_variance_clamped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "log_snr",
    "lambdas",
)

#: The floor of the "clamp" t=0 convention for the posterior log-variance (diffusers, lucidrains).
POSTERIOR_VARIANCE_CLAMP = 1e-20


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete diffusion schedule: float64 tables indexed by t = 0..T-1 (index 0 = one step).

    Attributes are read-only arrays named as in improved-diffusion's ``GaussianDiffusion``:
    ``betas`` β_t, ``alphas`` 1-β_t, ``alphas_cumprod`` ᾱ_t, ``alphas_cumprod_prev`` ᾱ_{t-1}
    (1 at t=0), ``alphas_cumprod_next`` ᾱ_{t+1} (0 at t=T-1), the square roots and logs of ᾱ and
    1-ᾱ, ``sqrt_recip_alphas_cumprod`` 1/√ᾱ, ``sqrt_recipm1_alphas_cumprod`` √(1/ᾱ-1) (also the
    Karras σ of the step, see :attr:`sigmas`), ``posterior_variance`` β̃_t (Ho et al. 2020 Eq. 7),
    ``posterior_log_variance_clipped`` (log β̃_t with β̃_1 substituted at t=0, improved-diffusion),
    ``posterior_log_variance_clamped`` (log max(β̃_t, 1e-20), diffusers), the posterior mean
    coefficients, ``log_snr`` log(ᾱ/(1-ᾱ)) and ``lambdas`` = log_snr/2 = log(α_t/σ_t) (DPM-Solver).

    ``timestep_map[i]`` is the index in the original schedule that step i stands for (identity
    unless respaced). Use :meth:`to` to move the tables to another array namespace.
    """

    name: str
    num_timesteps: int
    timestep_map: Array
    betas: Array
    alphas: Array
    alphas_cumprod: Array
    alphas_cumprod_prev: Array
    alphas_cumprod_next: Array
    one_minus_alphas_cumprod: Array
    sqrt_alphas_cumprod: Array
    sqrt_one_minus_alphas_cumprod: Array
    log_alphas_cumprod: Array
    log_one_minus_alphas_cumprod: Array
    sqrt_recip_alphas_cumprod: Array
    sqrt_recipm1_alphas_cumprod: Array
    posterior_variance: Array
    posterior_log_variance_clipped: Array
    posterior_log_variance_clamped: Array
    posterior_mean_coef1: Array
    posterior_mean_coef2: Array
    log_snr: Array
    lambdas: Array
    xp: Namespace | None = None
    _beta_dd: Any = field(default=None, repr=False)
    _ab_dd: Any = field(default=None, repr=False)

    @property
    def T(self) -> int:
        """Number of timesteps (alias of ``num_timesteps``)."""
        return self.num_timesteps

    @property
    def sigmas(self) -> Array:
        """Karras/k-diffusion noise levels σ_t = √((1-ᾱ_t)/ᾱ_t) (Karras et al. 2022, Eq. 7 with s=1)."""
        return self.sqrt_recipm1_alphas_cumprod

    @property
    def zero_terminal_snr(self) -> bool:
        """True when ᾱ_{T-1} = 0 exactly (Lin et al. 2023)."""
        return float(self.alphas_cumprod[-1]) == 0.0

    def tables(self) -> dict[str, Array]:
        """All tables as a name -> array dict."""
        return {n: getattr(self, n) for n in TABLE_NAMES}

    def to(
        self, xp: Namespace, *, device: Device | None = None, dtype: DType | None = None
    ) -> Schedule:
        """Copy the float64 tables into namespace ``xp`` (cast once to ``dtype``, on ``device``)."""
        _check_host(self, "Schedule.to")
        dtype = xp.float64 if dtype is None else dtype
        if not _is_real_floating(xp, dtype):
            fail(
                "dtype",
                getattr(dtype, "__name__", None) or str(dtype),
                "expected a real floating dtype (float64, float32, ...); the tables lie in "
                "(0, 1) and an integer or complex dtype would not hold them",
            )
        # writable host copies: torch warns on (and may alias) read-only NumPy buffers
        conv = {
            n: xp.asarray(np.array(getattr(self, n)), dtype=dtype, device=device)
            for n in TABLE_NAMES
        }
        tmap = xp.asarray(np.array(self.timestep_map), dtype=xp.int64, device=device)
        return dataclasses.replace(
            self, timestep_map=tmap, xp=xp, _beta_dd=None, _ab_dd=None, **conv
        )

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, T={self.num_timesteps})"


# --------------------------------------------------------------------------------------------
# Building the tables
# --------------------------------------------------------------------------------------------


def _concat(a: DD, b: DD) -> DD:
    return DD(np.concatenate([a.hi, b.hi]), np.concatenate([a.lo, b.lo]))


def _frozen(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x)
    x.flags.writeable = False
    return x


def _build(name: str, beta: DD, ab: DD, timestep_map: np.ndarray) -> Schedule:
    """Every table from β_t and ᾱ_t given in double-double (ᾱ_{T-1} may be exactly 0)."""
    T = len(beta)
    one, zero = DD(np.ones(1)), DD(np.zeros(1))
    zero_snr = ab.hi == 0.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alpha = 1.0 - beta
        ab_prev = _concat(one, ab[:-1])
        ab_next = _concat(ab[1:], zero)
        omab = 1.0 - ab
        omab_prev = 1.0 - ab_prev
        sqrt_ab = _dd.sqrt(ab)
        safe_ab = DD(np.where(zero_snr, 1.0, ab.hi), np.where(zero_snr, 0.0, ab.lo))
        log_ab = _dd.log(safe_ab)
        log_omab = _dd.log1p(-ab)
        sqrt_recip = 1.0 / _dd.sqrt(safe_ab)
        sqrt_recipm1 = _dd.sqrt(omab / safe_ab)
        pv = beta * omab_prev / omab
        safe_pv = DD(np.where(pv.hi > 0, pv.hi, 1.0), np.where(pv.hi > 0, pv.lo, 0.0))
        log_pv = _dd.log(safe_pv).to_float()
        coef1 = beta * _dd.sqrt(ab_prev) / omab
        coef2 = omab_prev * _dd.sqrt(alpha) / omab
        log_snr = (log_ab - log_omab).to_float()

    inf = np.inf
    log_ab_f = np.where(zero_snr, -inf, log_ab.to_float())
    log_snr = np.where(zero_snr, -inf, log_snr)
    pvf = pv.to_float()
    log_pv = np.where(pvf > 0, log_pv, -inf)
    clipped = log_pv.copy()
    # improved-diffusion: the t=0 posterior variance is 0, so β̃_1 stands in for it.
    clipped[0] = log_pv[1] if T > 1 else float(_dd.log(beta[:1]).to_float()[0])
    clamped = np.log(np.maximum(pvf, POSTERIOR_VARIANCE_CLAMP))
    clamped = np.where(pvf > POSTERIOR_VARIANCE_CLAMP, log_pv, clamped)
    tables = dict(
        betas=beta.to_float(),
        alphas=alpha.to_float(),
        alphas_cumprod=ab.to_float(),
        alphas_cumprod_prev=ab_prev.to_float(),
        alphas_cumprod_next=ab_next.to_float(),
        one_minus_alphas_cumprod=omab.to_float(),
        sqrt_alphas_cumprod=sqrt_ab.to_float(),
        sqrt_one_minus_alphas_cumprod=_dd.sqrt(omab).to_float(),
        log_alphas_cumprod=log_ab_f,
        log_one_minus_alphas_cumprod=log_omab.to_float(),
        sqrt_recip_alphas_cumprod=np.where(zero_snr, inf, sqrt_recip.to_float()),
        sqrt_recipm1_alphas_cumprod=np.where(zero_snr, inf, sqrt_recipm1.to_float()),
        posterior_variance=pvf,
        posterior_log_variance_clipped=clipped,
        posterior_log_variance_clamped=clamped,
        posterior_mean_coef1=coef1.to_float(),
        posterior_mean_coef2=coef2.to_float(),
        log_snr=log_snr,
        lambdas=0.5 * log_snr,
    )
    tables = {k: _frozen(v) for k, v in tables.items()}
    return Schedule(
        name=name,
        num_timesteps=T,
        timestep_map=_frozen(np.asarray(timestep_map, np.int64)),
        xp=np,
        _beta_dd=beta,
        _ab_dd=ab,
        **tables,
    )


def _from_beta_dd(name: str, beta: DD) -> Schedule:
    return _build(name, beta, _dd.cumprod(1.0 - beta), np.arange(len(beta)))


#: The largest number of diffusion steps a schedule may have (its tables take about 0.5 kB per step).
MAX_T = 100_000


def _check_T(T: object) -> int:
    T = check_int("T", T, minimum=1)
    if T > MAX_T:
        fail("T", T, f"expected an integer in [1, {MAX_T}] (refdiff.schedules.MAX_T)")
    return T


def _is_real_floating(xp: Namespace, dtype: DType) -> bool:
    """Whether ``dtype`` of namespace ``xp`` is a real floating dtype (array API ``isdtype``)."""
    from ._xp import array_namespace

    try:
        return bool(xp.isdtype(dtype, "real floating"))
    except (AttributeError, TypeError, ValueError):
        pass
    try:  # a bare library module (torch, cupy): ask its array-api-compat namespace
        z = xp.zeros((), dtype=dtype)
        return bool(array_namespace(z).isdtype(z.dtype, "real floating"))
    except Exception:  # noqa: BLE001 - not a dtype of xp at all
        return False


def _check_betas_dd(name: str, beta: DD) -> DD:
    b = beta.to_float()
    bad = ~np.isfinite(b) | (b <= 0) | (b >= 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        fail(name, b, f"every beta must be finite and lie in (0, 1); index {i} is {float(b[i])!r}")
    return beta


# --------------------------------------------------------------------------------------------
# Constructors
# --------------------------------------------------------------------------------------------


def from_betas(betas: Sequence[float], *, name: str = "custom") -> Schedule:
    """Schedule from β_1..β_T (Ho et al. 2020, Eq. 2); the last β may be exactly 1 (zero terminal SNR)."""
    b = np.array(betas, dtype=np.float64)  # a host float64 copy: the tables are built from it
    if b.ndim != 1 or b.size < 1:
        fail("betas", b, "expected a 1-D array with at least one value (T >= 1)")
    head = b[:-1] if b[-1] == 1.0 and b.size > 1 else b
    _check_betas_dd("betas", DD(head))
    return _from_beta_dd(name, DD(b))


def from_alphas_cumprod(alphas_cumprod: Sequence[float], *, name: str = "custom") -> Schedule:
    """Schedule from ᾱ_1..ᾱ_T, strictly decreasing in (0, 1); the last may be 0 (zero terminal SNR)."""
    ab = np.array(alphas_cumprod, dtype=np.float64)
    if ab.ndim != 1 or ab.size < 1:
        fail("alphas_cumprod", ab, "expected a 1-D array with at least one value (T >= 1)")
    if not np.all(np.isfinite(ab)):
        fail("alphas_cumprod", ab, "every value must be finite")
    inner = ab[:-1] if ab.size > 1 else ab
    if np.any(inner <= 0) or np.any(ab >= 1) or ab[-1] < 0:
        fail("alphas_cumprod", ab, "values must lie in (0, 1) (only the last may be 0)")
    if np.any(np.diff(ab) >= 0):
        i = int(np.flatnonzero(np.diff(ab) >= 0)[0])
        fail(
            "alphas_cumprod",
            ab,
            f"must be strictly decreasing; index {i + 1} ({float(ab[i + 1])!r}) "
            f"is not below index {i} ({float(ab[i])!r})",
        )
    abd = DD(ab)
    prev = _concat(DD(np.ones(1)), abd[:-1])
    beta = 1.0 - abd / prev
    return _build(name, beta, abd, np.arange(ab.size))


def linear(
    T: int, beta_start: float = 1e-4, beta_end: float = 0.02, *, scale_by_T: bool = False
) -> Schedule:
    """Linear β_t from beta_start to beta_end (Ho et al. 2020, §4).

    ``scale_by_T=True`` multiplies both ends by 1000/T first, as improved-diffusion's
    ``get_named_beta_schedule("linear")`` does; diffusers and Ho et al. do not.
    """
    T = _check_T(T)
    b0 = check_real("beta_start", beta_start, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    b1 = check_real("beta_end", beta_end, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    start, stop = DD(b0), DD(b1)
    if scale_by_T:
        scale = DD(1000.0) / float(T)
        start, stop = start * scale, stop * scale
    beta = _check_betas_dd("betas", _dd.linspace(start, stop, T))
    return _from_beta_dd("linear", beta)


def _sqrt_linspace_squared(name: str, T: int, beta_start: float, beta_end: float) -> Schedule:
    T = _check_T(T)
    b0 = check_real("beta_start", beta_start, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    b1 = check_real("beta_end", beta_end, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    r = _dd.linspace(_dd.sqrt(DD(b0)), _dd.sqrt(DD(b1)), T)
    return _from_beta_dd(name, _check_betas_dd("betas", r * r))


def scaled_linear(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> Schedule:
    """β_t = (linspace(√beta_start, √beta_end))² (diffusers "scaled_linear", Stable Diffusion defaults)."""
    return _sqrt_linspace_squared("scaled_linear", T, beta_start, beta_end)


def quadratic(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """β_t = (linspace(√beta_start, √beta_end))² (Ho et al. 2020 code's "quad"; same formula as scaled_linear)."""
    return _sqrt_linspace_squared("quadratic", T, beta_start, beta_end)


def sigmoid(
    T: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    *,
    start: float = -6.0,
    end: float = 6.0,
) -> Schedule:
    """β_t = sigmoid(linspace(start, end)) (beta_end - beta_start) + beta_start (Ho et al. 2020 code, diffusers)."""
    T = _check_T(T)
    b0 = check_real("beta_start", beta_start, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    b1 = check_real("beta_end", beta_end, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    x = _dd.linspace(DD(check_real("start", start)), DD(check_real("end", end)), T)
    s = 1.0 / (1.0 + _dd.exp(-x))
    beta = s * (DD(b1) - DD(b0)) + DD(b0)
    return _from_beta_dd("sigmoid", _check_betas_dd("betas", beta))


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Cosine schedule ᾱ(t) = f(t)/f(0), f(t) = cos²(((t+s)/(1+s))·π/2), β clipped at max_beta (Nichol & Dhariwal 2021, Eq. 17).

    β_i = min(1 - f((i+1)/T)/f(i/T), max_beta) as in improved-diffusion's ``betas_for_alpha_bar``.
    The cosine is evaluated as the sine of the complementary angle (π/2)(T-i)/(T(1+s)), whose
    numerator is formed exactly in integers.
    """
    T = _check_T(T)
    s = check_real("s", s, lo=0.0)
    max_beta = check_real("max_beta", max_beta, lo=0.0, hi=1.0, lo_open=True)
    i = np.arange(T + 1, dtype=np.float64)
    denom = DD(float(T)) * (DD(1.0) + DD(s))
    angle = _dd.pi().ldexp(-1) * DD(float(T) - i) / denom  # π/2 - ((t+s)/(1+s))π/2 at t = i/T
    c = _dd.sin(angle)
    f = c * c
    beta = 1.0 - f[1:] / f[:-1]
    clip = beta.hi > max_beta
    beta = DD(np.where(clip, max_beta, beta.hi), np.where(clip, 0.0, beta.lo))
    if max_beta < 1.0:
        _check_betas_dd("betas", beta)
    return _from_beta_dd("cosine", beta)


_REGISTRY: dict[str, Callable[..., Schedule]] = {
    "linear": linear,
    "scaled_linear": scaled_linear,
    "quadratic": quadratic,
    "sigmoid": sigmoid,
    "cosine": cosine,
}
_ALIASES = {"squaredcos_cap_v2": "cosine", "quad": "quadratic"}


def register_schedule(name: str, fn: Callable[..., Schedule]) -> None:
    """Register a named schedule constructor ``fn(T, **kwargs) -> Schedule``."""
    _REGISTRY[name] = fn


def list_schedules() -> list[str]:
    """Names accepted by :func:`get_schedule` (aliases excluded)."""
    return sorted(_REGISTRY)


def get_schedule(name: str, T: int, **kwargs: Any) -> Schedule:
    """Build a registered schedule by name ("linear", "cosine", ...; diffusers' "squaredcos_cap_v2" too)."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise UnknownNameError(
            f"schedule={name!r} is not a known schedule; allowed: "
            f"{', '.join(map(repr, sorted(_REGISTRY) + sorted(_ALIASES)))}"
        )
    return _REGISTRY[key](T, **kwargs)


# --------------------------------------------------------------------------------------------
# Transformations
# --------------------------------------------------------------------------------------------


def zero_terminal_snr(schedule: Schedule) -> Schedule:
    """Rescale √ᾱ so that ᾱ_{T-1} = 0 while ᾱ_0 is kept (Lin et al. 2023, Algorithm 1)."""
    _check_host(schedule, "zero_terminal_snr")
    if schedule.num_timesteps < 2:
        fail("schedule", schedule, "zero terminal SNR rescaling needs T >= 2")
    s = _dd.sqrt(schedule._ab_dd)
    s0, sT = s[:1], s[-1:]
    s_new = (s - DD(np.full(len(s), sT.hi[0]), np.full(len(s), sT.lo[0]))) * (
        DD(np.full(len(s), s0.hi[0]), np.full(len(s), s0.lo[0])) / (s0 - sT)
    )
    ab = s_new * s_new
    ab = DD(np.concatenate([ab.hi[:-1], [0.0]]), np.concatenate([ab.lo[:-1], [0.0]]))
    prev = _concat(DD(np.ones(1)), ab[:-1])
    beta = 1.0 - ab / prev
    beta = DD(np.concatenate([beta.hi[:-1], [1.0]]), np.concatenate([beta.lo[:-1], [0.0]]))
    return _build(schedule.name + "+zero_snr", beta, ab, schedule.timestep_map)


def space_timesteps(T: int, section_counts: str | Sequence[int]) -> np.ndarray:
    """improved-diffusion's respacing (Nichol & Dhariwal 2021, §4): "ddimN" or per-section step counts.

    ``"ddimN"`` takes ``range(0, T, stride)`` for the smallest integer stride giving exactly N
    steps. Otherwise [0, T) is split into len(counts) sections of equal size (the first T mod k
    one step longer); in a section of ``size`` steps starting at ``start`` the k-th kept index is
    ``start + round(cur_k)`` with ``cur_0 = 0.0`` and ``cur_{k+1} = cur_k + (size-1)/(count-1)``,
    the float stride accumulated by repeated addition and rounded half-to-even by Python's
    ``round`` (improved-diffusion's rule; ``round(k·stride)`` differs from it on ties, e.g. T=1000
    with one section of 21 steps). A count of 1 keeps the first index of its section (stride 1);
    ``"ddim1"`` keeps {0} (stride T; improved-diffusion's stride search stops at T-1 and raises
    there instead). Returns the sorted original indices.
    """
    T = _check_T(T)
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            n = section_counts[4:]
            if not n.isdigit() or int(n) < 1:
                fail("section_counts", section_counts, "expected 'ddimN' with a positive integer N")
            for stride in range(1, T + 1):
                if len(range(0, T, stride)) == int(n):
                    return np.arange(0, T, stride, dtype=np.int64)
            fail(
                "section_counts",
                section_counts,
                f"no integer stride gives exactly {n} steps out of T={T}",
            )
        parts = section_counts.split(",")
        if not all(p.strip().isdigit() for p in parts):
            fail(
                "section_counts",
                section_counts,
                "expected 'ddimN', a comma-separated list of step counts, or a list of ints",
            )
        counts = [int(p) for p in parts]
    else:
        counts = [check_int("section_counts[i]", c, minimum=1) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        fail("section_counts", section_counts, "every section needs at least one step")
    size_per, extra = divmod(T, len(counts))
    steps, start = [], 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            fail(
                "section_counts",
                section_counts,
                f"section {i} has {size} timesteps, fewer than the {count} steps requested",
            )
        frac_stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += frac_stride
        start += size
    return np.array(sorted(set(steps)), dtype=np.int64)


#: The timestep spacings a sampler's ``steps=`` accepts (one tuple for the whole package):
#: diffusers' "trailing" (Lin et al. 2023, Table 2), "leading" and "linspace"; improved-diffusion's
#: "ddim" ("ddimN") and "sections" (one section of N steps, ``space_timesteps(T, "N")``).
SPACINGS = ("trailing", "leading", "linspace", "ddim", "sections")

#: The members of :data:`SPACINGS` that :func:`spaced_timesteps` builds (diffusers'
#: ``timestep_spacing``, in diffusers' order).
DIFFUSERS_SPACINGS = ("leading", "trailing", "linspace")
assert set(DIFFUSERS_SPACINGS) <= set(SPACINGS)
_SPACINGS = DIFFUSERS_SPACINGS


def spaced_timesteps(
    T: int, n: int, spacing: str = "linspace", *, steps_offset: int = 0
) -> np.ndarray:
    """diffusers' timestep spacings (Lin et al. 2023, Table 2): sorted original indices of n steps.

    leading: (arange(n) · (T // n)) + steps_offset; trailing: round(arange(T, 0, -T/n)) - 1;
    linspace: round(linspace(0, T-1, n)).
    """
    T = _check_T(T)
    n = check_int("n", n, minimum=1)
    check_choice("spacing", spacing, DIFFUSERS_SPACINGS, "timestep spacing")
    if n > T:
        fail("n", n, f"cannot take more steps than T={T}")
    steps_offset = check_int("steps_offset", steps_offset, minimum=0)
    if spacing == "leading":
        ts = np.arange(n, dtype=np.int64) * (T // n) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(float(T), 0.0, -T / n)).astype(np.int64)[:n] - 1
    else:
        ts = np.round(np.linspace(0.0, T - 1.0, n)).astype(np.int64)
    ts = np.sort(ts)
    if ts[0] < 0 or ts[-1] >= T or np.unique(ts).size != ts.size:
        fail(
            "steps_offset", steps_offset, f"the {spacing} spacing leaves [0, {T}) or repeats a step"
        )
    return ts


#: Respaced schedules by (schedule, spec): schedules are immutable, so a loop given ``steps=``
#: pays the double-double rebuild once.
_RESPACE_CACHE = IdentityCache(64)


def _cache_key(timesteps: Any, spacing: str | None, steps_offset: int) -> tuple | None:
    if isinstance(timesteps, (str, int, np.integer)) and not isinstance(timesteps, bool):
        spec: Any = timesteps if isinstance(timesteps, str) else int(timesteps)
    elif isinstance(timesteps, (list, tuple)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in timesteps
    ):
        spec = tuple(int(v) for v in timesteps)
    else:
        return None
    return (
        type(timesteps).__name__ if isinstance(spec, tuple) else None,
        spec,
        spacing,
        steps_offset,
    )


def respace(
    schedule: Schedule, timesteps: Any, *, spacing: str | None = None, steps_offset: int = 0
) -> Schedule:
    """Keep a subset of steps, recomputing β'_i = 1 - ᾱ_i/ᾱ_{i-1} (Nichol & Dhariwal 2021, §4; DDIM §4.2).

    ``timesteps`` is an explicit sequence of original indices; a string ("ddim50", "10,15,20")
    or a list of section counts with ``spacing="sections"`` as in improved-diffusion; or an
    int n with ``spacing`` in {"leading", "trailing", "linspace"} as in diffusers.
    ``timestep_map`` of the result maps new indices back to the original ones. Results for a
    string, int or list spec are cached per (schedule, spec) (schedules are immutable).
    """
    _check_host(schedule, "respace")
    key = _cache_key(timesteps, spacing, steps_offset)
    build = lambda: _respace(schedule, timesteps, spacing=spacing, steps_offset=steps_offset)  # noqa: E731
    return build() if key is None else _RESPACE_CACHE.get(schedule, key, build)


def _respace(
    schedule: Schedule, timesteps: Any, *, spacing: str | None, steps_offset: int
) -> Schedule:
    T = schedule.num_timesteps
    if isinstance(timesteps, str) or spacing == "sections":
        use = space_timesteps(T, timesteps)
    elif spacing is not None:
        use = spaced_timesteps(T, timesteps, spacing, steps_offset=steps_offset)
    else:
        use = np.asarray(timesteps)
        if use.ndim != 1 or use.size == 0 or not np.issubdtype(use.dtype, np.integer):
            fail(
                "timesteps",
                timesteps,
                "expected a non-empty 1-D sequence of integer indices "
                "(or a spec string such as 'ddim50', or an int with spacing=...)",
            )
        if np.any(use < 0) or np.any(use >= T):
            fail("timesteps", timesteps, f"indices must lie in [0, {T})")
        if np.any(np.diff(np.sort(use)) == 0):
            fail("timesteps", timesteps, "indices must be distinct")
        use = np.sort(use).astype(np.int64)
    ab = schedule._ab_dd[use]
    prev = _concat(DD(np.ones(1)), ab[:-1])
    beta = 1.0 - ab / prev
    if ab.hi[-1] == 0.0:
        beta = DD(np.concatenate([beta.hi[:-1], [1.0]]), np.concatenate([beta.lo[:-1], [0.0]]))
    tmap = np.asarray(schedule.timestep_map)[use]
    return _build(f"{schedule.name}[{len(use)} of {T}]", beta, ab, tmap)


def _check_host(schedule: Schedule, what: str) -> None:
    if not isinstance(schedule, Schedule):
        fail("schedule", schedule, "expected a refdiff.schedules.Schedule")
    if schedule._ab_dd is None:
        fail(
            "schedule",
            schedule,
            f"{what} needs the host float64 schedule, not one moved with .to(); "
            "transform first, then move",
        )
