"""Guidance on analytic data: classifier guidance with the exact ∇log p(y|x_t) of a Gaussian-class
problem (computed here by torch autograd of a hand-written density, independent of refdiff.analytic),
classifier-free guidance conventions, guidance rescale, ILVR, EGSDE and Langevin dynamics."""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff import guidance as G
from refdiff._errors import RefdiffShapeError, RefdiffValueError, UnknownNameError
from refdiff.samplers.discrete import ddim_sample, ddpm_sample, p_sample
from refdiff.schedules import linear, respace

BASE = linear(1000)
S10 = respace(BASE, 10, spacing="trailing")
PI = np.array([0.4, 0.6])
MUS = np.array([[1.0, -0.5], [-0.8, 0.7]])
SIG = np.array([[0.3, 0.05], [0.05, 0.2]])
MIX = A.GaussianMixtureData(PI, MUS, [SIG, SIG])
CLASS = [A.GaussianData(MUS[k], SIG) for k in range(2)]


def _grad_log_p_y(x, alpha, sigma, k):
    """∇_x log p(y = k | x_t = x) by autograd of log π_k N_k − log Σ_j π_j N_j (written out here)."""
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    C = torch.tensor(alpha**2 * SIG + sigma**2 * np.eye(2))
    logs = []
    for j in range(2):
        d = xt - torch.tensor(alpha * MUS[j])
        quad = (d * torch.linalg.solve(C, d.T).T).sum(1)
        logs.append(np.log(PI[j]) - 0.5 * quad - 0.5 * torch.logdet(C) - np.log(2 * np.pi))
    L = torch.stack(logs, 1)
    lp = L[:, k] - torch.logsumexp(L, 1)
    (g,) = torch.autograd.grad(lp.sum(), xt)
    return g.numpy()


def _cond_fn(k, scale=1.0):
    def fn(x, t):
        ab = float(BASE.alphas_cumprod[int(t[0])])
        return scale * _grad_log_p_y(x, np.sqrt(ab), np.sqrt(1 - ab), k)

    return fn


# --------------------------------------------------------------------------------------------
# Classifier guidance
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ab", [0.99, 0.5, 0.01])
def test_condition_score_with_exact_gradient_gives_the_conditional_eps(ab):
    a, s = np.sqrt(ab), np.sqrt(1 - ab)
    x = np.random.default_rng(0).standard_normal((5, 2)) * 1.5
    for k in range(2):
        g = _grad_log_p_y(x, a, s, k)
        guided = G.condition_eps(MIX.eps(x, a, s), g, s)
        np.testing.assert_allclose(guided, CLASS[k].eps(x, a, s), rtol=1e-10, atol=1e-12)


def test_classifier_guided_samplers_equal_the_conditional_model():
    mix_model = A.discrete_model(MIX, BASE)
    rng = np.random.default_rng(1)
    xT, nz = rng.standard_normal((4, 2)), rng.standard_normal((10, 4, 2))
    for k in range(2):
        cond_model = A.discrete_model(CLASS[k], BASE)
        a = ddim_sample(mix_model, xT, schedule=S10, cond_fn=_cond_fn(k))
        b = ddim_sample(cond_model, xT, schedule=S10)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
        a = ddpm_sample(
            mix_model, xT, schedule=S10, noise=nz, cond_fn=_cond_fn(k), cond_mode="score"
        )
        b = ddpm_sample(cond_model, xT, schedule=S10, noise=nz)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    # cond_scale multiplies the gradient (guided-diffusion folds it into cond_fn)
    a = ddim_sample(mix_model, xT, schedule=S10, cond_fn=_cond_fn(0), cond_scale=3.0)
    b = ddim_sample(mix_model, xT, schedule=S10, cond_fn=_cond_fn(0, scale=3.0))
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


def test_zero_classifier_gradient_leaves_sampling_unchanged():
    model = A.discrete_model(MIX, BASE)
    rng = np.random.default_rng(2)
    xT, nz = rng.standard_normal((3, 2)), rng.standard_normal((10, 3, 2))
    zero = lambda x, t: np.zeros_like(x)  # noqa: E731
    for mode in ("mean", "score"):
        # the guided loop forms x̂0 and then the posterior mean; the unguided one folds both into
        # a·x + b·ε on the host: the same numbers up to a few roundings over the ten steps
        np.testing.assert_array_max_ulp(
            ddpm_sample(model, xT, schedule=S10, noise=nz, cond_fn=zero, cond_mode=mode),
            ddpm_sample(model, xT, schedule=S10, noise=nz),
            maxulp=8,
        )
    np.testing.assert_array_equal(
        ddim_sample(model, xT, schedule=S10, cond_fn=zero, eta=0.5, noise=nz),
        ddim_sample(model, xT, schedule=S10, eta=0.5, noise=nz),
    )


def test_condition_mean_shifts_by_the_model_variance():
    model = A.discrete_model(MIX, BASE)
    x = np.random.default_rng(3).standard_normal((3, 2))
    i = 5
    out = model(x, np.full(3, int(S10.timestep_map[i])))
    g = np.random.default_rng(4).standard_normal((3, 2))
    for var_type in ("fixed_small", "fixed_large"):
        plain, pmv = p_sample(out, x, i, schedule=S10, var_type=var_type, add_noise=False)
        guided, _ = p_sample(out, x, i, schedule=S10, var_type=var_type, add_noise=False, grad=g)
        np.testing.assert_allclose(guided - plain, pmv.variance * g, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(G.condition_mean(x, 0.5, g, scale=2.0), x + g, rtol=1e-15)


# --------------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------------


def test_cfg_conventions_differ_by_one_in_w():
    rng = np.random.default_rng(5)
    u, c = rng.standard_normal((2, 3, 4))
    for w in (0.0, 0.5, 3.0, -0.7):
        np.testing.assert_allclose(
            G.cfg_combine(u, c, w + 1.0, convention="guidance_scale"),
            G.cfg_combine(u, c, w, convention="ho_salimans"),
            rtol=1e-13,
            atol=1e-15,
        )
        assert G.cfg_weight(w, "ho_salimans") == w + 1.0 and G.cfg_weight(w) == w
    np.testing.assert_array_equal(G.cfg_combine(u, c, 1.0), c)  # s = 1: no guidance
    np.testing.assert_array_equal(G.cfg_combine(u, c, 0.0, convention="ho_salimans"), c)  # w = 0
    np.testing.assert_allclose(G.cfg_combine(u, c, 0.0), u, rtol=1e-15, atol=1e-15)


def test_cfg_of_exact_models_is_the_tilted_score():
    """ε_u + s(ε_c − ε_u) = −σ(∇log p_t + s∇log p(y|x_t)) for exact class models."""
    ab = 0.4
    a, s = np.sqrt(ab), np.sqrt(1 - ab)
    x = np.random.default_rng(6).standard_normal((5, 2))
    g = _grad_log_p_y(x, a, s, 1)
    for scale in (1.0, 2.5, 7.5):
        got = G.cfg_combine(MIX.eps(x, a, s), CLASS[1].eps(x, a, s), scale)
        np.testing.assert_allclose(
            got, -s * (MIX.score(x, a, s) + scale * g), rtol=1e-10, atol=1e-12
        )


def test_guidance_rescale():
    rng = np.random.default_rng(7)
    g, c = rng.standard_normal((2, 3, 2, 4, 4)) * np.array([1.0, 3.0])[:, None, None, None, None]
    np.testing.assert_array_equal(G.rescale_cfg(g, c, phi=0.0), g)
    r = G.rescale_cfg(g, c, phi=1.0)
    np.testing.assert_allclose(
        r.reshape(3, -1).std(1, ddof=1), c.reshape(3, -1).std(1, ddof=1), rtol=1e-13
    )
    half = G.rescale_cfg(g, c, phi=0.7)
    ratio = c.reshape(3, -1).std(1, ddof=1) / g.reshape(3, -1).std(
        1, ddof=1
    )  # torch's unbiased std
    np.testing.assert_allclose(half, 0.7 * g * ratio[:, None, None, None] + 0.3 * g, rtol=1e-13)


def test_cfg_model_wraps_a_conditional_model():
    calls = []

    def model(x, t, y):
        calls.append(y)
        return x * (2.0 if y == "c" else 1.0)

    x = np.ones((2, 3))
    guided = G.cfg_model(model, cond="c", uncond=None, scale=4.0)
    np.testing.assert_allclose(guided(x, np.zeros(2, dtype=np.int64)), x + 4.0 * (2 * x - x))
    assert calls == ["c", None]
    guided = G.cfg_model(model, cond="c", uncond=None, scale=3.0, convention="ho_salimans")
    np.testing.assert_allclose(guided(x, np.zeros(2, dtype=np.int64)), 4.0 * 2 * x - 3.0 * x)


# --------------------------------------------------------------------------------------------
# ILVR
# --------------------------------------------------------------------------------------------


def test_low_pass_is_block_mean_and_a_projection():
    x = np.random.default_rng(8).standard_normal((2, 3, 8, 4))
    lp = G.low_pass(x, 2)
    ref = x.reshape(2, 3, 4, 2, 2, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(lp, np.repeat(np.repeat(ref, 2, axis=2), 2, axis=3), rtol=1e-15)
    np.testing.assert_allclose(G.low_pass(lp, 2), lp, rtol=1e-15)
    np.testing.assert_array_equal(G.low_pass(x, 1), x)


def test_ilvr_output_has_the_reference_low_frequencies():
    d = 16
    data = A.GaussianData(np.zeros(d), 0.5)
    model = A.discrete_model(data, BASE)
    rng = np.random.default_rng(9)
    xT = rng.standard_normal((2, 1, 4, 4))
    ref = rng.standard_normal((2, 1, 4, 4))
    nz, rn = rng.standard_normal((2, 10, 2, 1, 4, 4))
    out = G.ilvr_sample(
        model, xT, schedule=S10, reference=ref, noise=nz, reference_noise=rn, factor=2
    )
    np.testing.assert_allclose(G.low_pass(out, 2), G.low_pass(ref, 2), rtol=1e-12, atol=1e-13)
    assert np.max(np.abs(out - ref)) > 0.1  # the high frequencies are the model's
    # factor 1: φ = identity, so every step is replaced by the noised reference; the last is y itself
    out1 = G.ilvr_sample(
        model, xT, schedule=S10, reference=ref, noise=nz, reference_noise=rn, factor=1
    )
    np.testing.assert_array_equal(out1, ref)  # x' − φ(x') = 0 exactly, so y + 0 is y
    # range_t: no refinement at training steps t <= range_t (the ILVR code's test)
    plain = ddpm_sample(model, xT, schedule=S10, noise=nz)
    off = G.ilvr_sample(
        model, xT, schedule=S10, reference=ref, noise=nz, reference_noise=rn, factor=2, range_t=1000
    )
    np.testing.assert_allclose(off, plain, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ilvr_refine_adds_the_high_pass_to_the_low_pass_of_y(dtype):
    """φ(y) + (x − φ(x)): y's low frequencies are not rounded to x's precision on the way."""
    rng = np.random.default_rng(11)
    x = (100.0 * rng.standard_normal((2, 3, 4, 4))).astype(dtype)
    y = (1e-4 * rng.standard_normal((2, 3, 4, 4))).astype(dtype)
    np.testing.assert_array_equal(G.ilvr_refine(x, y, factor=1), y)
    smooth = np.broadcast_to(x[:, :, :1, :1], x.shape).copy()  # φ_2(smooth) = smooth exactly
    np.testing.assert_array_equal(G.ilvr_refine(smooth, y, factor=2), G.low_pass(y, 2))


# --------------------------------------------------------------------------------------------
# EGSDE
# --------------------------------------------------------------------------------------------


def test_egsde_step_and_sampler():
    S = linear(20, 1e-3, 0.2)
    data = A.GaussianData([0.2, -0.1], [0.4, 0.3])
    model = A.discrete_model(data, S)
    rng = np.random.default_rng(10)
    y0, xi = rng.standard_normal((2, 3, 2))
    nz = rng.standard_normal((11, 3, 2))
    zero = lambda x, t: np.zeros_like(x)  # noqa: E731
    got = G.egsde_sample(
        model, y0, schedule=S, energy_grad=zero, t_start=10, noise=nz, start_noise=xi
    )
    # hand-written reference: perturb to t = 10, then the VP ancestral predictor with the exact score
    x = np.sqrt(S.alphas_cumprod[10]) * y0 + np.sqrt(1 - S.alphas_cumprod[10]) * xi
    for k, t in enumerate(range(10, -1, -1)):
        ab = S.alphas_cumprod[t]
        score = data.score(x, np.sqrt(ab), np.sqrt(1 - ab))
        b = S.betas[t]
        x = (x + b * score) / np.sqrt(1 - b) + (np.sqrt(b) * nz[k] if t > 0 else 0.0)
    np.testing.assert_allclose(got, x, rtol=1e-10, atol=1e-12)
    # a constant energy gradient c shifts a step by −β c / √(1 − β)
    c = np.array([[0.3, -0.2]])
    s = np.zeros((1, 2))
    step = G.egsde_step(np.zeros((1, 2)), s, c, beta=0.04)
    np.testing.assert_allclose(step, -0.04 * c / np.sqrt(0.96), rtol=1e-15)
    for kind in ("x0", "v", "score"):
        other = G.egsde_sample(
            A.discrete_model(data, S, kind),
            y0,
            schedule=S,
            energy_grad=zero,
            t_start=10,
            noise=nz,
            start_noise=xi,
            mean_type=kind,
        )
        np.testing.assert_allclose(other, got, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Langevin dynamics
# --------------------------------------------------------------------------------------------


def test_langevin_law_is_the_closed_form_ar1_law():
    """x_{k+1} = a x_k + (1−a)μ + √ε z with a = 1 − ε/(2λ): Var_n = a^{2n}v0 + ε(1−a^{2n})/(1−a²)."""
    lam = np.array([0.5, 2.0])
    mu = np.array([1.0, -1.0])
    data = A.GaussianData(mu, lam)
    score_fn = lambda x: data.score(x, 1.0, 0.0)  # noqa: E731
    eps, n = 0.05, 60
    law = A.linear_sampler_law(
        lambda x, nz: G.langevin_dynamics(score_fn, x, step_size=eps, n_steps=n, noise=nz),
        np.zeros(2),
        np.eye(2),
        dim=2,
        n_noise=n,
    )
    a = 1 - eps / (2 * lam)
    np.testing.assert_allclose(law.mean, (1 - a**n) * mu, rtol=1e-12)
    var = a ** (2 * n) + eps * (1 - a ** (2 * n)) / (1 - a**2)
    np.testing.assert_allclose(np.diag(law.cov), var, rtol=1e-12)
    # the stationary variance λ/(1 − ε/(4λ)) tends to λ as ε → 0
    np.testing.assert_allclose(eps / (1 - a**2), lam / (1 - eps / (4 * lam)), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_guidance_scale(bad):
    u = np.zeros((1, 2))
    with pytest.raises(
        RefdiffValueError,
        match=r"guidance_scale=(nan|inf|-inf) is invalid: expected a finite real number",
    ):
        G.cfg_combine(u, u, bad)
    with pytest.raises(
        RefdiffValueError, match=r"guidance_scale=.* is invalid: expected a finite real number"
    ):
        G.cfg_model(lambda x, t, y: x, cond=1, uncond=0, scale=bad)
    with pytest.raises(
        RefdiffValueError, match=r"scale=.* is invalid: expected a finite real number"
    ):
        G.condition_mean(u, 1.0, u, scale=bad)
    with pytest.raises(
        RefdiffValueError, match=r"cond_scale=.* is invalid: expected a finite real number"
    ):
        ddim_sample(lambda x, t: x, u, schedule=S10, cond_fn=lambda x, t: x, cond_scale=bad)
    with pytest.raises(
        RefdiffValueError, match=r"cond_scale=.* is invalid: expected a finite real number"
    ):
        ddpm_sample(
            lambda x, t: x,
            u,
            schedule=S10,
            noise=np.zeros((10, 1, 2)),
            cond_fn=lambda x, t: x,
            cond_scale=bad,
        )


def test_guidance_bad_input_messages():
    u = np.zeros((1, 2))
    with pytest.raises(
        UnknownNameError,
        match=r"convention='imagen' is not a known classifier-free guidance convention",
    ):
        G.cfg_combine(u, u, 2.0, convention="imagen")
    with pytest.raises(RefdiffValueError, match=r"guidance_scale=True is invalid"):
        G.check_scale(True)
    with pytest.raises(
        RefdiffShapeError, match=r"cond has shape \(1, 3\) but x has shape \(1, 2\)"
    ):
        G.cfg_combine(u, np.zeros((1, 3)), 2.0)
    with pytest.raises(
        RefdiffValueError, match=r"phi=1.5 is invalid: expected a value in \[0.0, 1.0\]"
    ):
        G.rescale_cfg(u + 1, u, phi=1.5)
    with pytest.raises(
        RefdiffValueError,
        match=r"factor=3 is invalid: every spatial size \(4, 4\) must be divisible",
    ):
        G.low_pass(np.zeros((1, 1, 4, 4)), 3)
    with pytest.raises(RefdiffValueError, match=r"step_size=0.0 is invalid"):
        G.langevin_step(u, u, step_size=0.0, noise=u)
    with pytest.raises(RefdiffValueError, match=r"n_steps=0 is invalid: expected an integer >= 1"):
        G.langevin_dynamics(lambda x: x, u, step_size=0.1, n_steps=0, noise=np.zeros((1, 1, 2)))
    with pytest.raises(
        RefdiffShapeError, match=r"classifier gradient has shape \(1, 3\) but x has shape \(1, 2\)"
    ):
        ddim_sample(lambda x, t: x, u, schedule=S10, cond_fn=lambda x, t: np.zeros((1, 3)))
    with pytest.raises(
        RefdiffValueError, match=r"t_start=20 is invalid: expected an index in \[0, 20\)"
    ):
        G.egsde_sample(
            lambda x, t: x,
            u,
            schedule=linear(20),
            energy_grad=lambda x, t: x,
            t_start=20,
            noise=None,
            start_noise=u,
        )


def test_guidance_loops_report_each_step():
    """ILVR, EGSDE and Langevin dynamics call callback(info) once per step before it, with the state it starts from."""
    rng = np.random.default_rng(23)
    model = A.discrete_model(A.GaussianData(np.zeros(16), 0.5), BASE)
    xT, ref = rng.standard_normal((2, 2, 1, 4, 4))
    nz, rn = rng.standard_normal((2, 10, 2, 1, 4, 4))
    infos, done = [], []
    G.ilvr_sample(
        model,
        xT,
        schedule=S10,
        reference=ref,
        noise=nz,
        reference_noise=rn,
        factor=2,
        callback=infos.append,
        progress=lambda k, n: done.append((k, n)),
    )
    assert [(i.i, i.n, i.t) for i in infos] == [
        (k, 10, int(S10.timestep_map[9 - k])) for k in range(10)
    ]
    assert done == [(k, 10) for k in range(1, 11)]
    np.testing.assert_array_equal(infos[0].x, xT)
    S = linear(20, 1e-3, 0.2)
    y0, xi = rng.standard_normal((2, 3, 2))
    infos = []
    G.egsde_sample(
        A.discrete_model(A.GaussianData([0.2, -0.1], [0.4, 0.3]), S),
        y0,
        schedule=S,
        energy_grad=lambda x, t: np.zeros_like(x),
        t_start=5,
        noise=rng.standard_normal((6, 3, 2)),
        start_noise=xi,
        callback=infos.append,
    )
    assert [(i.i, i.n, i.t, i.denoised) for i in infos] == [(k, 6, 5 - k, None) for k in range(6)]
    infos = []
    x0 = rng.standard_normal((4, 2))
    G.langevin_dynamics(
        lambda x: -x,
        x0,
        step_size=0.1,
        n_steps=3,
        noise=rng.standard_normal((3, 4, 2)),
        callback=infos.append,
    )
    assert [(i.i, i.n) for i in infos] == [(0, 3), (1, 3), (2, 3)]
    np.testing.assert_array_equal(infos[0].x, x0)
