"""Colour statistics of the weight-free backend: Gaussian mixtures over RGB as OpenCV's GrabCut fits them, and
how much commoner a colour is inside a box than outside it."""
from __future__ import annotations

import cv2
import numpy as np


class ColourModel:
    """A Gaussian mixture over RGB, as OpenCV's GrabCut stores it, giving log P(colour)."""

    def __init__(self, packed: np.ndarray) -> None:
        """packed: (1, 13 K) float64 from cv2.grabCut: K weights, K means (3), K covariances (3x3)."""
        k = packed.size // 13
        flat = packed.ravel()
        weights = flat[:k]
        means = flat[k:4 * k].reshape(k, 3)
        covs = flat[4 * k:].reshape(k, 3, 3) + np.eye(3) * 1e-2
        keep = weights > 0
        self.means = means[keep].astype(np.float32)
        self.inv = np.linalg.inv(covs[keep]).astype(np.float32)
        _, logdet = np.linalg.slogdet(covs[keep])
        self.log_norm = (np.log(weights[keep]) - 0.5 * logdet - 1.5 * np.log(2 * np.pi)).astype(np.float32)
        self._coefficients, self._constants = self._quadratic_form()

    def _quadratic_form(self) -> tuple[np.ndarray, np.ndarray]:
        """Each component's log density as a linear function of `colour_features`: (K, 9) and (K,)."""
        rows, constants = [], []
        for mean, inv, norm in zip(self.means.astype(np.float64) - _CENTRE, self.inv.astype(np.float64),
                                   self.log_norm.astype(np.float64)):
            # -(x - m)' A (x - m) / 2 = -x'Ax / 2 + m'A x - m'A m / 2
            quadratic = [inv[0, 0], inv[1, 1], inv[2, 2], 2 * inv[0, 1], 2 * inv[0, 2], 2 * inv[1, 2]]
            rows.append([*(-0.5 * np.array(quadratic)), *(inv @ mean)])
            constants.append(norm - 0.5 * mean @ inv @ mean)
        return np.array(rows), np.array(constants)

    def log_prob(self, pixels: np.ndarray) -> np.ndarray:
        """(..., 3) colours -> (...) float32 log density."""
        return self.log_prob_of(colour_features(pixels)).reshape(pixels.shape[:-1])

    def log_prob_of(self, features: np.ndarray) -> np.ndarray:
        """(9, N) `colour_features` -> (N,) float32 log density."""
        terms = self._coefficients @ features  # (K, N): one product for all components
        terms += self._constants[:, None]
        best = terms.max(0)
        terms -= best
        np.exp(terms, out=terms)
        return (best + np.log(terms.sum(0))).astype(np.float32)


_CENTRE = 128.0  # colours are centred before squaring, which keeps float64 exact to far below a nat


def colour_features(pixels: np.ndarray) -> np.ndarray:
    """(..., 3) colours -> (9, N) float64: the quadratic and linear monomials of the centred colour, which
    every Gaussian's log density is linear in (one matrix product per mixture instead of one per component)."""
    out = np.empty((9, pixels.size // 3))
    out[6:] = pixels.reshape(-1, 3).T
    out[6:] -= _CENTRE
    r, g, b = out[6:]
    for row, (u, v) in enumerate(((r, r), (g, g), (b, b), (r, g), (r, b), (g, b))):
        np.multiply(u, v, out=out[row])
    return out


_HIST_BINS = 16  # per channel, for `inside_over_outside`


def inside_over_outside(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(H, W) float32: how much commoner each pixel's colour is inside `box` than outside it (shares of
    a 16-bin-per-channel colour histogram); large where a colour is only the object's."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    inside = np.zeros((h, w), np.uint8)
    inside[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = 1
    shape, ranges = [_HIST_BINS] * 3, [0, 256] * 3
    hist_in = cv2.calcHist([image], [0, 1, 2], inside, shape, ranges).ravel()
    hist_out = cv2.calcHist([image], [0, 1, 2], 1 - inside, shape, ranges).ravel()
    if hist_out.sum() == 0 or hist_in.sum() == 0:
        return np.full((h, w), np.inf, np.float32)
    ratio = (hist_in / hist_in.sum()) / np.maximum(hist_out / hist_out.sum(), 1e-6)
    bins = image.astype(np.intp) // (256 // _HIST_BINS)
    return ratio[(bins[..., 0] * _HIST_BINS + bins[..., 1]) * _HIST_BINS + bins[..., 2]].astype(np.float32)
