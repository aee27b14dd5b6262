"""refdiff as the oracle inside *your* project's pytest suite.

Suppose your project has its own DDIM scheduler (below: ``MyDDIM``, written the way many projects
write one — float32 tables, ``set_timesteps`` + ``step``). These tests check it against refdiff:

1. one ``step`` against ``refdiff.samplers.discrete.ddim_step_at`` at every timestep, with the
   tolerance your dtype deserves (float32: a few ulp of the result);
2. the full loop against refdiff's exact answer on analytic data: with point-mass data the exact
   model's x0-prediction is constant, so DDIM is exact for any number of steps — your loop must
   land on the data point (this catches a wrong final ᾱ_prev, e.g. ᾱ_0 instead of 1, or a
   dropped term);
3. the stochastic loop (η = 1) as a distribution: with Gaussian data the whole loop is affine in
   (x_T, noise), so ``refdiff.analytic.linear_sampler_law`` gives its exact output mean and
   covariance — compare yours with refdiff's ``sample_ddim`` run on the same schedule (this
   catches a wrong previous-timestep rule, such as ``t - T // n`` with linspace spacing).

Run: ``python examples/oracle_in_your_tests.py`` (runs pytest on this file), or copy the test
functions into your suite.
"""

from __future__ import annotations

import numpy as np

import refdiff.analytic as A
from refdiff.samplers.discrete import ddim_step_at, sample_ddim
from refdiff.schedules import linear, respace


# ----------------------------------------------------------------------------------------------
# "Your" code: a typical hand-written DDIM scheduler (float32 tables, linspace spacing).
# ----------------------------------------------------------------------------------------------


class MyDDIM:
    def __init__(self, T=1000, beta_start=1e-4, beta_end=0.02, dtype=np.float32):
        self.T = T
        betas = np.linspace(beta_start, beta_end, T, dtype=dtype)
        self.alphas_cumprod = np.cumprod(1.0 - betas, dtype=dtype)
        self.dtype = dtype

    def set_timesteps(self, n):
        self.timesteps = np.round(np.linspace(self.T - 1, 0, n)).astype(np.int64)  # descending

    def prev_timestep(self, t):
        """The next timestep in the descending list (-1 after the last)."""
        idx = int(np.flatnonzero(self.timesteps == t)[0])
        return int(self.timesteps[idx + 1]) if idx + 1 < len(self.timesteps) else -1

    def step(self, eps, t, x, *, eta=0.0, noise=None):
        prev = self.prev_timestep(t)
        a = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.dtype(1.0)
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        std = eta * np.sqrt(var)
        out = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - std**2) * eps
        if eta > 0 and prev >= 0:
            out = out + std * noise
        return out.astype(self.dtype)

    def sample(self, model, x, *, eta=0.0, noise=None):
        for k, t in enumerate(self.timesteps):
            eps = model(x, np.full(x.shape[0], t))
            x = self.step(eps, t, x, eta=eta, noise=None if noise is None else noise[k])
        return x


# ----------------------------------------------------------------------------------------------
# The tests (this is what you would put in your suite).
# ----------------------------------------------------------------------------------------------

REF = linear(1000)  # refdiff's float64 tables, within 0.5 ulp of mpmath
MU = np.array([0.7, -0.4, 0.1])


def make_scheduler():
    return MyDDIM()


def test_one_step_matches_refdiff():
    rng = np.random.default_rng(0)
    sched = make_scheduler()
    sched.set_timesteps(25)
    for t in sched.timesteps:
        x = rng.standard_normal((4, 3)).astype(np.float32)
        eps = rng.standard_normal((4, 3)).astype(np.float32)
        prev = sched.prev_timestep(t)
        x64, e64 = x.astype(np.float64), eps.astype(np.float64)
        # one step between two training timesteps, shaped like diffusers' DDIMScheduler.step
        want = ddim_step_at(e64, int(t), prev, x64, schedule=REF).prev_sample
        a = float(REF.alphas_cumprod[t])
        got = sched.step(eps, t, x)
        # float32 tables and arithmetic; the x0 division amplifies at small ᾱ (large t)
        tol = 64 * np.finfo(np.float32).eps * (1 + np.abs(want)) / np.sqrt(a)
        assert np.all(np.abs(got - want) <= tol), (t, np.max(np.abs(got - want) / tol))


def test_full_loop_is_exact_on_point_mass_data():
    sched = make_scheduler()
    model = A.discrete_model(A.GaussianData(MU, 0.0), REF, "eps")
    x_T = np.random.default_rng(1).standard_normal((8, 3))
    for n in (1, 4, 10, 50):
        sched.set_timesteps(n)
        got = sched.sample(
            lambda x, t: model(x.astype(np.float64), t).astype(np.float32), x_T.astype(np.float32)
        )
        assert np.max(np.abs(got - MU)) < 1e-3, (n, np.max(np.abs(got - MU)))


def test_stochastic_loop_has_refdiffs_output_law():
    data = A.GaussianData(MU, [0.5, 0.2, 0.1])
    model = A.discrete_model(data, REF, "eps")
    sched = make_scheduler()
    sched.set_timesteps(10)
    S = respace(REF, sorted(int(t) for t in sched.timesteps))  # the same steps in refdiff
    n = len(sched.timesteps)

    def mine(x_T, noise):
        f = lambda x, t: model(x.astype(np.float64), t).astype(np.float32)  # noqa: E731
        return sched.sample(f, x_T.astype(np.float32), eta=1.0, noise=noise.astype(np.float32))

    def oracle(x_T, noise):
        return sample_ddim(model, x_T, schedule=S, eta=1.0, noise=noise)

    m, c = data.marginal(np.sqrt(REF.alphas_cumprod[-1]), np.sqrt(1 - REF.alphas_cumprod[-1]))
    law_mine = A.linear_sampler_law(mine, m, c, dim=3, n_noise=n, check=False)
    law_ref = A.linear_sampler_law(oracle, m, c, dim=3, n_noise=n)
    assert np.allclose(law_mine.mean, law_ref.mean, atol=1e-4)
    assert np.allclose(law_mine.cov, law_ref.cov, atol=1e-4)


if __name__ == "__main__":
    import sys

    import pytest

    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
