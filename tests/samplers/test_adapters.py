"""The bridges from a discrete-schedule network to the other families, against the exact models."""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import analytic as A
from refdiff import schedules as S
from refdiff.samplers import adapters, get_sampler, list_samplers

DATA = A.GaussianData([0.3, -0.2, 0.1], [0.5, 0.2, 0.1])


@pytest.mark.parametrize("pt", ["eps", "x0", "v", "score", "noise", "v_prediction"])
def test_karras_denoiser_on_the_table_levels_is_the_exact_denoiser(pt):
    s = S.linear(200)
    model = A.discrete_model(DATA, s, pt)
    den = adapters.karras_denoiser(model, s, prediction_type=pt)
    rng = np.random.default_rng(0)
    t = np.array([0, 7, 120, 199])
    sigma = np.asarray(s.sigmas)[t]
    x = rng.standard_normal((4, 3)) * np.sqrt(1 + sigma[:, None] ** 2)
    np.testing.assert_allclose(
        den(x, sigma), A.karras_denoiser(DATA)(x, sigma), rtol=1e-11, atol=1e-12
    )


def test_karras_denoiser_timestep_modes():
    s = S.cosine(50)
    seen = []

    def model(x, t):
        seen.append(np.asarray(t))
        return np.zeros_like(x)

    table = np.log(np.asarray(s.sigmas))
    sig = np.exp(np.array([table[3] * 0.3 + table[4] * 0.7, table[10]]))
    x = np.ones((2, 3))
    adapters.karras_denoiser(model, s, timestep="nearest")(x, sig)
    assert seen[-1].dtype == np.int64 and seen[-1].tolist() == [4, 10]
    adapters.karras_denoiser(model, s, timestep="interp")(x, sig)
    np.testing.assert_allclose(seen[-1], [3.7, 10.0], rtol=1e-12)  # linear in log σ


@pytest.mark.parametrize("timestep", ["nearest", "interp"])
@pytest.mark.parametrize("pt", ["eps", "x0", "v"])
def test_karras_denoiser_at_one_sigma_is_the_per_sample_denoiser(pt, timestep):
    """The loops' shared-σ entry point gives the same D and calls the network at the same t."""
    s = S.cosine(60)
    seen = []

    def model(x, t):
        seen.append(np.asarray(t))
        return np.sin(x) * (1.0 + np.asarray(t, dtype=np.float64)[:, None] / 60)

    den = adapters.karras_denoiser(model, s, prediction_type=pt, timestep=timestep)
    table = np.log(np.asarray(s.sigmas))
    mid = float(np.exp(0.5 * (table[20] + table[21])))  # a tie of the nearest index: the lower
    levels = [float(np.exp(table[0])) * 0.5, float(np.exp(table[7])), mid, 0.3, 2.5, 1e4]
    x = np.random.default_rng(3).standard_normal((3, 4))
    for sigma in levels:
        full = den(x, np.full(3, sigma))
        t_full = seen[-1]
        one = den.at_sigma(x, sigma)
        assert seen[-1].dtype == t_full.dtype
        np.testing.assert_allclose(seen[-1], t_full, rtol=1e-15, atol=0)
        np.testing.assert_allclose(one, full, rtol=1e-15, atol=1e-15)


def test_vp_model_calls_the_network_at_the_training_index():
    s = S.linear(100)
    seen = []

    def model(x, t):
        seen.append(np.asarray(t))
        return x

    fn, ns = adapters.vp_model(model, s)
    fn(np.zeros((3, 2)), (np.array([0, 41, 99]) + 1.0) / ns.total_N)
    assert seen[-1].tolist() == [0, 41, 99]
    # the noise schedule reproduces the discrete ᾱ at t_n = (n + 1)/N
    n = np.arange(100)
    np.testing.assert_allclose(
        ns.marginal_alpha((n + 1.0) / 100) ** 2, s.alphas_cumprod, rtol=1e-13
    )


def test_score_fn_is_minus_eps_over_sigma_and_the_sde_discretises_to_the_schedule():
    s = S.linear(100)
    score, sde = adapters.score_fn(A.discrete_model(DATA, s, "eps"), s)
    np.testing.assert_allclose(sde.discrete_betas, s.betas, rtol=1e-13)
    i = np.array([0, 30, 99])
    x = np.random.default_rng(1).standard_normal((3, 3))
    got = score(x, i / 99.0)
    a, sg = np.sqrt(s.alphas_cumprod[i]), np.sqrt(1 - s.alphas_cumprod[i])
    np.testing.assert_allclose(got, DATA.score(x, a, sg), rtol=1e-10, atol=1e-12)


def test_score_fn_rejects_a_schedule_without_a_linear_vp_sde():
    with pytest.raises(
        Exception, match=r"schedule=.* is invalid: the score-SDE samplers need the linear VP-SDE"
    ):
        adapters.score_fn(lambda x, t: x, S.cosine(100))


POINT = A.GaussianData([0.25, -0.5], 0.0)
SMOOTH = A.GaussianData([0.25, -0.5], [0.5, 0.2])
FAMILIES = ("discrete", "karras", "vp", "sde")


def _loose(n: str) -> bool:
    spec = get_sampler(n)
    exact_vp = spec.family == "vp" and not spec.stochastic  # the exact test below covers these
    return (
        spec.family in FAMILIES and not exact_vp and n not in ("ode_rk45", "ncsn_annealed_langevin")
    )


@pytest.mark.parametrize("name", [n for n in list_samplers() if _loose(n)])
def test_every_sampler_runs_with_a_discrete_network(name):
    """Every bridge against the exact model of its own family (a wrong scale or time would not agree).

    Point-mass data for the discrete, Karras and vp families (their ideal-denoiser samplers land
    on the point); for the score-SDE family, whose Euler–Maruyama steps are not accurate on a
    point mass, the same run with the exact continuous score of Gaussian data.
    """
    family = get_sampler(name).family
    s = S.linear(1000)
    data = SMOOTH if family == "sde" else POINT
    model = A.discrete_model(data, s, "eps")
    x_T = np.random.default_rng(3).standard_normal((2, 2))

    def run(fn, **kw):
        rng = np.random.default_rng(4)
        return fn(noise=lambda i: rng.standard_normal((2, 2)), **kw)

    out = run(
        lambda **kw: adapters.sample_with_discrete_model(
            name, model, x_T, schedule=s, steps=100 if family == "sde" else 6, **kw
        )
    )
    assert out.shape == x_T.shape
    if family != "sde":
        np.testing.assert_allclose(out, np.broadcast_to(POINT.mean, out.shape), atol=0.06)
        return
    _, sde = adapters.score_fn(model, s)
    exact = run(
        lambda **kw: get_sampler(name).fn(
            A.vp_model(data, sde, "score"), x_T, sde=sde, steps=100, **kw
        )
    )
    np.testing.assert_allclose(out, exact, atol=0.03)


def test_an_unknown_sampler_lists_the_known_ones():
    with pytest.raises(
        KeyError, match=r"sampler='ddimm' is not a known sampler; allowed: .*'ddim'"
    ):
        adapters.sample_with_discrete_model(
            "ddimm", lambda x, t: x, np.zeros((1, 2)), schedule=S.linear(10), steps=2
        )


@pytest.mark.parametrize(
    "name",
    [n for n in list_samplers() if get_sampler(n).family == "vp" and not get_sampler(n).stochastic],
)
def test_vp_bridge_is_exact_on_a_point_mass(name):
    """With fractional model times, every deterministic vp solver follows the exact flow.

    For point-mass data the probability-flow ODE keeps ε constant, x_t = α_t·μ + σ_t·c, so the
    exact end state is α_end·μ + σ_end·(x_T − α_T·μ)/σ_T; the network is the exact ε of the
    bridge's interpolated schedule, evaluated at the fractional index the bridge passes.
    """
    s = S.linear(1000)
    _, ns = adapters.vp_model(lambda x, t: x, s)
    exact_eps = A.vp_model(POINT, ns, "eps")
    model = lambda x, idx: exact_eps(x, (idx + 1.0) / ns.total_N)
    x_T = np.random.default_rng(5).standard_normal((2, 2))
    out = adapters.sample_with_discrete_model(
        name, model, x_T, schedule=s, steps=9, timestep="interp"
    )
    t_T, t_end = 1.0, 1.0 / ns.total_N
    a_T, s_T = ns.marginal_alpha(t_T), ns.marginal_std(t_T)
    a_e, s_e = ns.marginal_alpha(t_end), ns.marginal_std(t_end)
    want = a_e * POINT.mean + s_e * (x_T - a_T * POINT.mean) / s_T
    np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("pt", ["eps", "x0", "v", "score", "mean", "mu", "epsilon", "v_prediction"])
def test_host_float_conversion_equals_the_table_form_for_every_name(pt):
    """x0_from_output_at (host floats, the loops' step plans) = x0_from_output (table gathers)."""
    from refdiff import parameterizations as P

    s = S.cosine(50)
    rng = np.random.default_rng(8)
    x, out = rng.standard_normal((2, 1, 3))
    c = P.level_coefficients(s, 17)
    np.testing.assert_array_equal(
        P.x0_from_output_at(out, x, c, pt), P.x0_from_output(s, x, np.array([17]), out, pt)
    )


@pytest.mark.parametrize("grid", [{}, {"spacing": "leading", "steps_offset": 1}])
def test_discrete_family_on_another_namespace_gets_the_respaced_schedule_moved(grid):
    torch = pytest.importorskip("torch")
    s = S.linear(1000)
    model_np = A.discrete_model(POINT, s, "eps")

    def model_t(x, t):
        return torch.as_tensor(model_np(x.numpy(), t.numpy()))

    x_T = np.random.default_rng(5).standard_normal((2, 2))
    want = adapters.sample_with_discrete_model("ddim", model_np, x_T, schedule=s, steps=7, **grid)
    got = adapters.sample_with_discrete_model(
        "ddim", model_t, torch.as_tensor(x_T), schedule=s, steps=7, **grid
    )
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("timestep", ["nearest", "interp"])
def test_karras_denoiser_of_a_one_level_schedule_calls_index_zero(timestep):
    seen = []

    def model(x, t):
        seen.append(np.asarray(t))
        return np.zeros_like(x)

    den = adapters.karras_denoiser(model, S.linear(1), timestep=timestep)
    x = np.ones((2, 3))
    with np.errstate(all="raise"):
        den(x, np.full(2, 0.5))
        den.at_sigma(x, 0.5)
    assert [v.tolist() for v in seen] == [[0, 0], [0, 0]]


@pytest.mark.parametrize("timestep", ["nearest", "interp"])
def test_karras_denoiser_at_sigma_zero_is_the_identity(timestep):
    """D(x; 0) = x, the network called at the first index, without a log(0) warning."""
    seen = []

    def model(x, t):
        seen.append(np.asarray(t))
        return np.sin(x)

    den = adapters.karras_denoiser(model, S.linear(100), timestep=timestep)
    x = np.random.default_rng(2).standard_normal((2, 3))
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(den.at_sigma(x, 0.0), x)
    assert seen[-1].tolist() == [0, 0]
