"""The schedule cases checked against mpmath: (label, refdiff schedule builder, exact ᾱ and β builder)."""

from __future__ import annotations

from refdiff import schedules as S

from . import mp_reference as R


def _plain(build, betas):
    def exact():
        b = betas()
        return R.alphas_cumprod(b), b

    return build, exact


def _zero_snr(build, betas):
    def exact():
        return R.zero_snr(R.alphas_cumprod(betas())), None

    return (lambda: S.zero_terminal_snr(build())), exact


CASES = {}
for _T in (10, 1000, 4000):
    CASES[f"linear-T{_T}"] = _plain(lambda T=_T: S.linear(T), lambda T=_T: R.betas_linear(T))
    CASES[f"cosine-T{_T}"] = _plain(lambda T=_T: S.cosine(T), lambda T=_T: R.betas_cosine(T))
    CASES[f"sigmoid-T{_T}"] = _plain(lambda T=_T: S.sigmoid(T), lambda T=_T: R.betas_sigmoid(T))
    CASES[f"linear-zero_snr-T{_T}"] = _zero_snr(
        lambda T=_T: S.linear(T), lambda T=_T: R.betas_linear(T)
    )
    CASES[f"cosine-zero_snr-T{_T}"] = _zero_snr(
        lambda T=_T: S.cosine(T), lambda T=_T: R.betas_cosine(T)
    )


def respaced_case():
    """linear T=1000 respaced to 'ddim50': exact ᾱ is the subset, β recomputed from ratios."""
    s = S.respace(S.linear(1000), "ddim50")
    ab = R.alphas_cumprod(R.betas_linear(1000))
    return s, [ab[i] for i in s.timestep_map]


def worst_table_errors(schedule, ab, betas):
    """{table: (worst ulp, index)} of a refdiff schedule against the exact tables."""
    from .ulp import worst_ulp

    ref = R.tables(ab, betas)
    return {name: worst_ulp(getattr(schedule, name), exact) for name, exact in ref.items()}
