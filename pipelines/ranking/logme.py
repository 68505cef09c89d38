"""LogME (You, Liu, Wang & Long, *LogME: Practical Assessment of Pre-trained Models for Transfer
Learning*, ICML 2021), written from the paper's equations.

Each class's one-hot column y is modelled as a Bayesian linear regression on the features F (N × D):
w ~ N(0, α⁻¹I), y | F, w ~ N(Fw, β⁻¹I). The evidence p(y | F, α, β) = N(y; 0, β⁻¹I + α⁻¹FFᵀ) is
maximised over α and β by MacKay's fixed-point iteration, which after one SVD of F costs O(D) per step:

    γ = Σᵢ βσᵢ / (α + βσᵢ),  m = β (αI + βFᵀF)⁻¹ Fᵀy,  α ← γ / mᵀm,  β ← (N − γ) / ‖Fm − y‖²

(σᵢ the eigenvalues of FᵀF). LogME is the maximised log evidence per example, averaged over classes:
higher means the labels are more linearly predictable from the features, with the model's own
Occam factor against over-fitting. The SVD costs O(N·D·min(N, D)) once; each class is then cheap.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = 1e-10  # relative change of the evidence that ends the iteration (the reference code: 1e-3, coarse)
MAX_STEPS = 100  # each step is O(min(N, D)): a slow creep (N ≤ D, β growing) costs nothing beside the SVD
EPS = 1e-12  # guards the divisions only: the reference's 1e-5 biases α where mᵀm is that small


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """The LogME score of features (N × D) for integer labels (N,): the mean over classes of the
    maximised log evidence divided by N."""
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    svd = np.linalg.svd(f, full_matrices=False)[:2]  # F = U S Vᵀ: one SVD serves every class
    return float(np.mean([maximise(f, (labels == k).astype(np.float64), svd)[0] for k in np.unique(labels)]))


def maximise(f: np.ndarray, y: np.ndarray,
             svd: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float, float]:
    """(max log evidence / N, α, β) of one target column y (N,) on features f (N × D)."""
    n, d = f.shape
    u, s = svd if svd is not None else np.linalg.svd(f, full_matrices=False)[:2]
    sigma = np.zeros(d)
    sigma[: s.size] = s**2  # FᵀF's eigenvalues: S², and 0 for the other D − rank
    uy = u.T @ y  # y's coordinates in F's column space
    tail = float(y @ y - uy @ uy)  # ‖y‖² outside it, which no weights can fit

    def log_evidence(alpha: float, beta: float) -> tuple[float, float, float]:
        """(log evidence, mᵀm, ‖Fm − y‖²) at α, β; m = V · (weights ∘ Uᵀy)."""
        weights = beta * s / (alpha + beta * s**2)
        m_norm2, residual = float(np.sum((weights * uy) ** 2)), float(np.sum(((s * weights - 1) * uy) ** 2)) + tail
        value = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi) - beta / 2 * residual
                 - alpha / 2 * m_norm2 - 0.5 * np.sum(np.log(alpha + beta * sigma)))
        return float(value), m_norm2, residual

    alpha, beta = 1.0, 1.0
    value, m_norm2, residual = log_evidence(alpha, beta)
    for _ in range(MAX_STEPS):
        gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))
        # with N ≤ D the labels can be fitted exactly: β then grows without bound while the evidence
        # converges (to that of the noiseless model), so the evidence is what the loop watches
        alpha, beta = gamma / (m_norm2 + EPS), max(n - gamma, EPS) / (residual + EPS)
        previous, (value, m_norm2, residual) = value, log_evidence(alpha, beta)
        if abs(value - previous) <= TOLERANCE * abs(previous):
            break
    return value / n, alpha, beta


def evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, β⁻¹I + α⁻¹FFᵀ) / N by brute force (an N × N covariance): for tests of the above."""
    from scipy import stats

    f = np.asarray(features, dtype=np.float64)
    cov = np.eye(len(f)) / beta + f @ f.T / alpha
    return float(stats.multivariate_normal(mean=np.zeros(len(f)), cov=cov).logpdf(y) / len(f))
