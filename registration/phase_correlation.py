"""Sub-pixel translation between two images by phase correlation, refined with an upsampled DFT.

Used where only a shift is left to find: refinement patches already brought
together by the global transform, and checks that aligned tiles agree.
OpenCV's ``phaseCorrelate`` is not fit for either: it reports (0.5, 0.5) px
for two identical 224-px images (OpenCV 5.0; it pads to its optimal DFT size)
and its 5 × 5 centroid misses a 0.5 px shift by 0.3 px. Here the coarse
peak of the (Hann-windowed) cross-correlation is refined by evaluating its
inverse transform on a ``1 / upsample`` px grid around the peak with two
small matrix products (Guizar-Sicairos, Thurman & Fienup, Opt. Lett. 2008).
"""

from __future__ import annotations

import numpy as np

_REFINE_HALF_WIDTH_PX = 1.5  # the true peak lies within a pixel of the coarse one
# Each frequency of the cross-power spectrum is divided by its magnitude to this power: 1 is pure phase
# correlation, 0 a plain (windowed) cross-correlation. Two patches resampled from a slide at different sub-pixel
# phases differ most at the highest frequencies, which whitening weighs as much as the tissue's structure: on 40
# CMU patches with known shifts (benchmarks/phase_correlation.py) the median error was 0.058 µm at 0.5, 0.044 at
# 0.25 and 0.028 at 0, against 0.024 for an elastix translation and 0.018 for an elastix affine fit.
_WHITENING = 0.0


def _hann(shape: tuple[int, int]) -> np.ndarray:
    """Separable Hann window: the image edges, where two patches differ by what the shift brought in, weigh 0."""
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1]))


def phase_shift_px(reference: np.ndarray, moved: np.ndarray, upsample: int = 50) -> tuple[np.ndarray, float]:
    """``(x, y)`` shift ``s`` with ``moved(p) ≈ reference(p − s)``, to ``1 / upsample`` px, and the peak height.

    Both are ``[H, W]`` images of one shape. A positive ``s[0]`` means the
    content of ``moved`` lies further right. The peak height (0 to 1) is the
    phase-correlation coefficient at the shift: near 1 for the same content,
    near 0 for unrelated images.
    """
    if reference.shape != moved.shape or reference.ndim != 2:
        raise ValueError(f"need two 2-D images of one shape, got {reference.shape} and {moved.shape}")
    window = _hann(reference.shape)
    a = np.fft.fft2((reference - reference.mean()) * window)
    b = np.fft.fft2((moved - moved.mean()) * window)
    cross = b * np.conj(a)
    cross /= np.maximum(np.abs(cross), 1e-12) ** _WHITENING
    rows, cols = reference.shape
    coarse = np.fft.ifft2(cross).real
    peak = np.array(np.unravel_index(np.argmax(coarse), coarse.shape), dtype=np.float64)
    peak = np.where(peak > np.array([rows, cols]) // 2, peak - np.array([rows, cols]), peak)  # wrap to signed
    steps = np.arange(-_REFINE_HALF_WIDTH_PX, _REFINE_HALF_WIDTH_PX + 1e-9, 1.0 / upsample)
    # The inverse DFT of `cross` at rows peak_y + steps and columns peak_x + steps, only there.
    kernel_y = np.exp(2j * np.pi * np.outer(peak[0] + steps, np.fft.fftfreq(rows)))
    kernel_x = np.exp(2j * np.pi * np.outer(np.fft.fftfreq(cols), peak[1] + steps))
    fine = (kernel_y @ cross @ kernel_x).real / np.abs(cross).sum()
    best = np.unravel_index(np.argmax(fine), fine.shape)
    shift_yx = peak + steps[np.array(best)]
    return np.array([shift_yx[1], shift_yx[0]]), float(fine[best])
