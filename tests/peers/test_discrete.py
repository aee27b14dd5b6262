"""The discrete family against its peers: live diffusers schedulers and improved-diffusion re-derived.

Each diffusers row runs the scheduler's own loop (``set_timesteps``, then ``step`` per timestep, as
its pipelines do) and compares it with ONE refdiff sampler call with named options. Both sides use
the same float64 ᾱ table (refdiff's, written into the scheduler), so the agreement measures the
algorithms, not float32 tables. improved-diffusion is not on the package registry; its formulas
(``respace.space_timesteps``, ``SpacedDiffusion``, ``p_sample`` with learned_range,
``ddim_sample`` / ``ddim_reverse_sample``) are written out here in NumPy from its published code.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from refdiff.diffusion import dynamic_threshold
from refdiff.samplers.discrete import ddim_invert, ddim_step_at, sample_ddim, sample_ddpm
from refdiff.schedules import linear, space_timesteps

T = 1000
S = linear(T)
SHAPE = (2, 3, 4, 4)
ATOL = 1e-11


def _eps_np(x, t):
    """A smooth nonlinear stand-in for a network: depends on x and on the timestep."""
    t = float(t)
    return 0.8 * np.tanh(x * (1.0 + t / 700.0)) + 0.1 * np.sin(0.01 * t + x)


def _var_np(x, t):
    """The learned-range variance channels, in [-1, 1]."""
    return np.tanh(0.5 * x - float(t) / 1000.0)


def _output(x, t, prediction):
    e = _eps_np(x, t)
    if prediction == "epsilon":
        return e
    if prediction == "sample":
        return 1.5 * np.tanh(x) + 0.3 * np.cos(float(t) / 100.0)  # leaves [-1, 1] often
    return 0.7 * e - 0.2 * x  # v_prediction


def _x_T(seed=0):
    return np.random.default_rng(seed).standard_normal(SHAPE)


# --------------------------------------------------------------------------------------------
# diffusers
# --------------------------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch", reason="the diffusers peer rows run diffusers on CPU torch")


def _diffusers():
    _torch()
    return pytest.importorskip("diffusers", reason="the live peer rows need diffusers (test extra)")


def _float64_tables(sched, torch):
    """Write refdiff's float64 ᾱ (and β, α) into a diffusers scheduler, so both sides use one table."""
    sched.alphas_cumprod = torch.from_numpy(np.array(S.alphas_cumprod))
    sched.betas = torch.from_numpy(np.array(S.betas))
    sched.alphas = torch.from_numpy(np.array(S.alphas))
    one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(sched, "one"):
        sched.one = one
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = (
            one if sched.config.set_alpha_to_one else sched.alphas_cumprod[0]
        )
    if hasattr(sched, "initial_alpha_cumprod"):
        sched.initial_alpha_cumprod = (
            one if sched.config.set_alpha_to_one else sched.alphas_cumprod[0]
        )
    return sched


def _scheduler(cls_name, **config):
    diffusers = _diffusers()
    torch = _torch()
    cls = getattr(diffusers, cls_name)
    sched = cls(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **config
    )
    return _float64_tables(sched, torch), torch


def _refdiff_model(prediction, learned=False):
    def model(x, t):
        out = _output(x, t[0], prediction)
        return np.concatenate([out, _var_np(x, t[0])], axis=1) if learned else out

    return model


DDPM_CASES = [
    # (config, refdiff options)
    (dict(timestep_spacing="leading"), dict(spacing="leading", final_noise="none")),
    (
        dict(timestep_spacing="leading", steps_offset=1),
        dict(spacing="leading", steps_offset=1, final_noise="always", t0="clamped"),
    ),
    (dict(timestep_spacing="linspace"), dict(spacing="linspace", final_noise="none")),
    # diffusers' trailing grid ends at timestep T/n - 1, not 0, so its last step adds noise
    (
        dict(timestep_spacing="trailing"),
        dict(spacing="trailing", final_noise="always", t0="clamped"),
    ),
]


@pytest.mark.parametrize(
    "config,opts", DDPM_CASES, ids=["leading", "leading-offset1", "linspace", "trailing"]
)
@pytest.mark.parametrize(
    "variance_type,var_type",
    [
        ("fixed_small", "fixed_small"),
        ("fixed_small_log", "fixed_small"),
        ("fixed_large", "fixed_large"),
        ("learned_range", "learned_range"),
    ],
)
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_ddpm_scheduler(config, opts, variance_type, var_type, prediction):
    """DDPMScheduler(clip_sample=True, ...) loop == sample_ddpm(clip_x0=True, mean_type=..., var_type=..., steps=n, spacing=..., t0="clamped", final_noise=...)."""
    sched, torch = _scheduler(
        "DDPMScheduler",
        variance_type=variance_type,
        prediction_type=prediction,
        clip_sample=True,
        **config,
    )
    n = 10
    learned = variance_type == "learned_range"
    sched.set_timesteps(n)
    x = torch.from_numpy(_x_T())
    gen = torch.Generator().manual_seed(3)
    for t in sched.timesteps:
        out = _refdiff_model(prediction, learned)(x.numpy(), np.array([int(t)]))
        x = sched.step(torch.from_numpy(out), t, x, generator=gen).prev_sample
    twin = torch.Generator().manual_seed(3)

    def noise(k):
        return torch.randn(SHAPE, generator=twin, dtype=torch.float64).numpy()

    got = sample_ddpm(
        _refdiff_model(prediction, learned),
        _x_T(),
        schedule=S,
        steps=n,
        noise=noise,
        mean_type=prediction,
        var_type=var_type,
        clip_x0=True,
        **{"t0": "clamped", **opts},
    )
    np.testing.assert_allclose(got, x.numpy(), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "grid,final_noise",
    [([999, 850, 600, 400, 250, 120, 40, 0], "none"), ([990, 700, 333, 97, 7], "always")],
)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_scheduler_custom_timesteps(grid, final_noise, variance_type):
    """DDPMScheduler.set_timesteps(timesteps=grid) loop == sample_ddpm(timesteps=grid, t0="clamped", final_noise=...)."""
    sched, torch = _scheduler("DDPMScheduler", variance_type=variance_type, clip_sample=False)
    sched.set_timesteps(timesteps=grid)
    x = torch.from_numpy(_x_T(9))
    gen = torch.Generator().manual_seed(7)
    for t in sched.timesteps:
        x = sched.step(
            torch.from_numpy(_eps_np(x.numpy(), int(t))), t, x, generator=gen
        ).prev_sample
    twin = torch.Generator().manual_seed(7)
    got = sample_ddpm(
        _refdiff_model("epsilon"),
        _x_T(9),
        schedule=S,
        timesteps=grid,
        var_type=variance_type,
        t0="clamped",
        final_noise=final_noise,
        noise=lambda k: torch.randn(SHAPE, generator=twin, dtype=torch.float64).numpy(),
    )
    np.testing.assert_allclose(got, x.numpy(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("ratio,max_value", [(0.995, 2.0), (0.9, 1.5)])
def test_ddpm_scheduler_thresholding(ratio, max_value):
    """DDPMScheduler(thresholding=True) == sample_ddpm(denoised_fn=partial(dynamic_threshold, ratio=..., max_value=sample_max_value))."""
    sched, torch = _scheduler(
        "DDPMScheduler",
        prediction_type="sample",
        thresholding=True,
        dynamic_thresholding_ratio=ratio,
        sample_max_value=max_value,
        timestep_spacing="leading",
    )
    n = 8
    sched.set_timesteps(n)
    x = torch.from_numpy(3.0 * _x_T(1))
    gen = torch.Generator().manual_seed(5)
    for t in sched.timesteps:
        out = _output(x.numpy(), int(t), "sample")
        x = sched.step(torch.from_numpy(out), t, x, generator=gen).prev_sample
    twin = torch.Generator().manual_seed(5)
    got = sample_ddpm(
        _refdiff_model("sample"),
        3.0 * _x_T(1),
        schedule=S,
        steps=n,
        spacing="leading",
        mean_type="x0",
        t0="clamped",
        denoised_fn=functools.partial(dynamic_threshold, ratio=ratio, max_value=max_value),
        noise=lambda k: torch.randn(SHAPE, generator=twin, dtype=torch.float64).numpy(),
    )
    np.testing.assert_allclose(got, x.numpy(), rtol=0, atol=ATOL)


def test_ddpm_scheduler_fixed_large_log_is_nan():
    """A diffusers bug, documented: variance_type="fixed_large_log" takes √(log β) (< 0) as the noise scale."""
    torch = _torch()
    sched, torch = _scheduler("DDPMScheduler", variance_type="fixed_large_log")
    sched.set_timesteps(5)
    x = torch.from_numpy(_x_T())
    t = sched.timesteps[0]
    out = sched.step(
        torch.from_numpy(_eps_np(x.numpy(), int(t))),
        t,
        x,
        generator=torch.Generator().manual_seed(0),
    ).prev_sample
    if not bool(torch.isnan(out).all()):
        pytest.skip("this diffusers no longer takes the square root of log β")
    assert bool(torch.isnan(out).all())


DDIM_SPACINGS = [
    (dict(timestep_spacing="leading"), dict(spacing="leading")),
    (dict(timestep_spacing="leading", steps_offset=1), dict(spacing="leading", steps_offset=1)),
    (dict(timestep_spacing="trailing"), dict(spacing="trailing")),
    (dict(timestep_spacing="linspace"), dict(spacing="linspace")),
]


@pytest.mark.parametrize(
    "config,opts", DDIM_SPACINGS, ids=["leading", "leading-offset1", "trailing", "linspace"]
)
@pytest.mark.parametrize("n", [10, 7])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_ddim_scheduler(config, opts, n, set_alpha_to_one, prediction):
    """DDIMScheduler(clip_sample=True) loop == sample_ddim(prev_timestep="stride", clip_x0=True, eps_from_clipped_x0=False, final_alpha_bar=...)."""
    sched, torch = _scheduler(
        "DDIMScheduler",
        prediction_type=prediction,
        clip_sample=True,
        set_alpha_to_one=set_alpha_to_one,
        **config,
    )
    sched.set_timesteps(n)
    x = torch.from_numpy(_x_T(2))
    for t in sched.timesteps:
        out = _output(x.numpy(), int(t), prediction)
        x = sched.step(torch.from_numpy(out), t, x).prev_sample
    got = sample_ddim(
        _refdiff_model(prediction),
        _x_T(2),
        schedule=S,
        steps=n,
        prev_timestep="stride",
        mean_type=prediction,
        clip_x0=True,
        eps_from_clipped_x0=False,
        final_alpha_bar="one" if set_alpha_to_one else "alpha_bar_0",
        **opts,
    )
    np.testing.assert_allclose(got, x.numpy(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("use_clipped", [False, True])
def test_ddim_scheduler_eta_with_variance_noise(spacing, use_clipped):
    """DDIMScheduler.step(eta=0.6, variance_noise=z_k, use_clipped_model_output=...) == sample_ddim(eta=0.6, noise=z, final_noise="always", prev_timestep="stride", ...)."""
    sched, torch = _scheduler("DDIMScheduler", clip_sample=True, timestep_spacing=spacing)
    n = 9
    sched.set_timesteps(n)
    z = np.random.default_rng(11).standard_normal((n,) + SHAPE)
    x = torch.from_numpy(_x_T(3))
    for k, t in enumerate(sched.timesteps):
        out = _eps_np(x.numpy(), int(t))
        x = sched.step(
            torch.from_numpy(out),
            t,
            x,
            eta=0.6,
            use_clipped_model_output=use_clipped,
            variance_noise=torch.from_numpy(z[k]),
        ).prev_sample
    got = sample_ddim(
        _refdiff_model("epsilon"),
        _x_T(3),
        schedule=S,
        steps=n,
        spacing=spacing,
        eta=0.6,
        noise=z,
        final_noise="always",
        prev_timestep="stride",
        clip_x0=True,
        eps_from_clipped_x0=use_clipped,
    )
    np.testing.assert_allclose(got, x.numpy(), rtol=0, atol=ATOL)


def test_ddim_listed_and_stride_rules_differ_for_linspace():
    """With linspace spacing diffusers' t − T//n is not the next listed timestep: the two refdiff rules differ."""
    a = sample_ddim(_refdiff_model("epsilon"), _x_T(), schedule=S, steps=10, spacing="linspace")
    b = sample_ddim(
        _refdiff_model("epsilon"),
        _x_T(),
        schedule=S,
        steps=10,
        spacing="linspace",
        prev_timestep="stride",
    )
    assert np.max(np.abs(a - b)) > 1e-3


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.8])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_step_at_reproduces_one_diffusers_step(prediction, eta, set_alpha_to_one):
    """One DDIMScheduler.step(model_output, t, sample, eta, variance_noise) == ddim_step_at(model_output, t, t - T//n, sample, ...)."""
    sched, torch = _scheduler(
        "DDIMScheduler",
        prediction_type=prediction,
        clip_sample=False,
        set_alpha_to_one=set_alpha_to_one,
    )
    n = 20
    sched.set_timesteps(n)
    x = _x_T(4)
    z = np.random.default_rng(12).standard_normal(SHAPE)
    for t in (int(sched.timesteps[0]), int(sched.timesteps[9]), int(sched.timesteps[-1])):
        out = _output(x, t, prediction)
        ref = sched.step(
            torch.from_numpy(out),
            t,
            torch.from_numpy(x),
            eta=eta,
            variance_noise=torch.from_numpy(z),
        )
        got = ddim_step_at(
            out,
            t,
            t - T // n,
            x,
            schedule=S,
            eta=eta,
            noise=z,
            prediction_type=prediction,
            final_alpha_bar="one" if set_alpha_to_one else "alpha_bar_0",
        )
        np.testing.assert_allclose(got.prev_sample, ref.prev_sample.numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            got.pred_original_sample, ref.pred_original_sample.numpy(), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("n", [10, 7])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_inverse_scheduler(spacing, n, set_alpha_to_one):
    """DDIMInverseScheduler loop == ddim_invert(model_time="next", prev_timestep="stride", clip_x0=True, final_alpha_bar=...)."""
    sched, torch = _scheduler(
        "DDIMInverseScheduler",
        clip_sample=True,
        timestep_spacing=spacing,
        set_alpha_to_one=set_alpha_to_one,
    )
    sched.set_timesteps(n)
    x0 = 0.5 * _x_T(5)
    x = torch.from_numpy(x0)
    for t in sched.timesteps:
        out = _eps_np(x.numpy(), int(t))
        x = sched.step(torch.from_numpy(out), t, x).prev_sample
    got = ddim_invert(
        _refdiff_model("epsilon"),
        x0,
        schedule=S,
        steps=n,
        spacing=spacing,
        model_time="next",
        prev_timestep="stride",
        clip_x0=True,
        final_alpha_bar="one" if set_alpha_to_one else "alpha_bar_0",
    )
    np.testing.assert_allclose(got, x.numpy(), rtol=0, atol=ATOL)


# --------------------------------------------------------------------------------------------
# improved-diffusion, re-derived from its published code
# --------------------------------------------------------------------------------------------


def _iddpm_space_timesteps(num_timesteps, section_counts):
    """improved_diffusion/respace.py::space_timesteps, rewritten: a float stride accumulated per section."""
    if isinstance(section_counts, str):
        section_counts = [int(c) for c in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return sorted(set(all_steps))


@pytest.mark.parametrize("T_", [300, 1000, pytest.param(4000, marks=pytest.mark.slow)])
def test_space_timesteps_every_single_section_count(T_):
    """space_timesteps(T, [c]) equals improved-diffusion's accumulated-stride rule for every c in 1..T."""
    for c in range(1, T_ + 1):
        assert space_timesteps(T_, [c]).tolist() == _iddpm_space_timesteps(T_, [c]), c


def test_space_timesteps_multi_section_and_the_tie_that_round_k_stride_gets_wrong():
    rng = np.random.default_rng(0)
    for T_ in (300, 1000, 4000):
        for _ in range(40):
            k = int(rng.integers(1, 6))
            size = T_ // k
            counts = [int(v) for v in rng.integers(1, size + 1, size=k)]
            assert space_timesteps(T_, counts).tolist() == _iddpm_space_timesteps(T_, counts), (
                counts
            )
            assert space_timesteps(
                T_, ",".join(map(str, counts))
            ).tolist() == _iddpm_space_timesteps(T_, counts)
    # T=1000, 21 steps: the accumulated stride and round(k·stride) differ on a tie
    acc = _iddpm_space_timesteps(1000, [21])
    direct = sorted({round(k * 999 / 20) for k in range(21)})
    assert acc != direct and space_timesteps(1000, [21]).tolist() == acc
    assert space_timesteps(1000, [1]).tolist() == [0]
    assert space_timesteps(1000, "ddim1").tolist() == [0]


class _IDDPM:
    """improved-diffusion's GaussianDiffusion tables and SpacedDiffusion respacing, in NumPy float64."""

    def __init__(self, betas, use_timesteps=None):
        ac = np.cumprod(1.0 - betas)
        self.timestep_map = list(range(len(betas)))
        if use_timesteps is not None:
            last, new_betas, self.timestep_map = 1.0, [], []
            for i, a in enumerate(ac):
                if i in use_timesteps:
                    new_betas.append(1 - a / last)
                    last = a
                    self.timestep_map.append(i)
            betas = np.array(new_betas)
            ac = np.cumprod(1.0 - betas)
        self.betas = betas
        self.ac = ac
        self.ac_prev = np.append(1.0, ac[:-1])
        self.ac_next = np.append(ac[1:], 0.0)
        self.sqrt_recip = np.sqrt(1.0 / ac)
        self.sqrt_recipm1 = np.sqrt(1.0 / ac - 1)
        self.post_var = betas * (1.0 - self.ac_prev) / (1.0 - ac)
        self.post_logvar = np.log(np.append(self.post_var[1], self.post_var[1:]))
        self.c1 = betas * np.sqrt(self.ac_prev) / (1.0 - ac)
        self.c2 = (1.0 - self.ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac)

    def p_mean_variance(self, model, x, t, *, clip, learned_range):
        out = model(x, np.full(x.shape[0], self.timestep_map[t]))
        if learned_range:
            c = x.shape[1]
            out, v = out[:, :c], out[:, c:]
            frac = (v + 1) / 2
            logvar = frac * np.log(self.betas[t]) + (1 - frac) * self.post_logvar[t]
        else:
            logvar = self.post_logvar[t]
        x0 = self.sqrt_recip[t] * x - self.sqrt_recipm1[t] * out
        if clip:
            x0 = np.clip(x0, -1, 1)
        return self.c1[t] * x0 + self.c2[t] * x, logvar, x0

    def eps_from_x0(self, x, t, x0):
        return (self.sqrt_recip[t] * x - x0) / self.sqrt_recipm1[t]


@pytest.mark.parametrize("clip", [False, True])
def test_improved_diffusion_p_sample_learned_range_on_a_spaced_chain(clip):
    """p_sample_loop of SpacedDiffusion(space_timesteps(T, "25")) with learned_range == sample_ddpm(var_type="learned_range", steps=25, spacing="sections")."""
    Ti = 400
    base = linear(Ti, scale_by_T=True)
    scale = 1000 / Ti
    d = _IDDPM(np.linspace(scale * 1e-4, scale * 0.02, Ti), set(_iddpm_space_timesteps(Ti, [25])))
    model = _refdiff_model("epsilon", learned=True)
    z = np.random.default_rng(13).standard_normal((25,) + SHAPE)
    x = _x_T(6)
    for k, t in enumerate(range(24, -1, -1)):
        mean, logvar, _ = d.p_mean_variance(model, x, t, clip=clip, learned_range=True)
        x = mean + (t != 0) * np.exp(0.5 * logvar) * z[k]
    got = sample_ddpm(
        model,
        _x_T(6),
        schedule=base,
        steps=25,
        spacing="sections",
        var_type="learned_range",
        clip_x0=clip,
        noise=z,
    )
    np.testing.assert_allclose(got, x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_improved_diffusion_ddim_sample_loop(eta):
    """ddim_sample_loop of SpacedDiffusion("ddim20", clip_denoised=True) == sample_ddim(steps=20, spacing="ddim", clip_x0=True, eta=...)."""
    d = _IDDPM(np.linspace(1e-4, 0.02, 1000), set(range(0, 1000, 50)))
    base = linear(1000)
    model = _refdiff_model("epsilon")
    z = np.random.default_rng(14).standard_normal((20,) + SHAPE)
    x = _x_T(7)
    for k, t in enumerate(range(19, -1, -1)):
        _, _, x0 = d.p_mean_variance(model, x, t, clip=True, learned_range=False)
        eps = d.eps_from_x0(x, t, x0)
        ab, abp = d.ac[t], d.ac_prev[t]
        sigma = eta * np.sqrt((1 - abp) / (1 - ab)) * np.sqrt(1 - ab / abp)
        mean = x0 * np.sqrt(abp) + np.sqrt(1 - abp - sigma**2) * eps
        x = mean + (t != 0) * sigma * z[k]
    got = sample_ddim(
        model, _x_T(7), schedule=base, steps=20, spacing="ddim", clip_x0=True, eta=eta, noise=z
    )
    np.testing.assert_allclose(got, x, rtol=0, atol=1e-10)


def test_improved_diffusion_ddim_reverse_sample_loop():
    """ddim_reverse_sample from t = 0 up (model at the current level, ᾱ_next) == ddim_invert(start=0, model_time="current")."""
    d = _IDDPM(np.linspace(1e-4, 0.02, 1000), set(range(0, 1000, 100)))
    model = _refdiff_model("epsilon")
    x = 0.5 * _x_T(8)
    for t in range(9):
        _, _, x0 = d.p_mean_variance(model, x, t, clip=False, learned_range=False)
        eps = d.eps_from_x0(x, t, x0)
        x = x0 * np.sqrt(d.ac_next[t]) + np.sqrt(1 - d.ac_next[t]) * eps
    got = ddim_invert(
        model, 0.5 * _x_T(8), schedule=S, steps=10, spacing="ddim", start=0, model_time="current"
    )
    np.testing.assert_allclose(got, x, rtol=0, atol=1e-10)
