"""Unit roundoffs for the suite's numeric tolerances, and the one rounding rule they share.

Every tolerance in ``tests/`` is u times a stated amplification, with the derivation in a comment beside it:
u = 2⁻²⁴ for float32 and 2⁻⁵³ for float64 (round to nearest), and a sum of n products of float32 operands is
off by at most γ_n·Σ|terms|, γ_n = n·u/(1 − n·u) ≈ n·u (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., 2002, §3.1). A wrong formula (a sign error, an off-by-one timestep, a wrong
coefficient) moves a sample by ≥ 1e-2 relative, far above every bound here.

Defaults: ``pytest.approx()`` (rel 1e-6) and ``torch.testing.assert_close`` without tolerances (float32: rtol
1.3e-6 ≈ 22·u, atol 1e-5; float64: 1e-7) are left only on identities of a few operations on O(1) values, whose
derived bound is ≤ 10·u. Statistical checks state their number of standard deviations where they are made;
the scheduler parity tests derive theirs step by step (``tests/scratch_schedulers/rounding.py``).
"""

from __future__ import annotations

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff


def gamma(n: int, u: float = U32) -> float:
    """γ_n = n·u/(1 − n·u): the relative bound of n successive roundings (Higham, 2002, Lemma 3.1)."""
    return n * u / (1 - n * u)
