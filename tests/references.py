"""Reference formulations from the papers' code, re-stated independently of synthseg (used by tests and bench/)."""
import numpy as np


def fda_reference(src: np.ndarray, trg: np.ndarray, beta: float) -> np.ndarray:
    """FDA on one C×H×W image, written after the reference NumPy formulation (github.com/YanchaoYang/FDA,
    utils/__init__.py: FDA_source_to_target_np + low_freq_mutate_np): full fft2, amplitude/phase, fftshift, swap the
    centred (2b+1)² window of the amplitude, ifftshift, recombine with the source phase, ifft2, real part."""
    f_src, f_trg = np.fft.fft2(src, axes=(-2, -1)), np.fft.fft2(trg, axes=(-2, -1))
    amp, phase = np.abs(f_src), np.angle(f_src)
    amp_s = np.fft.fftshift(amp, axes=(-2, -1))
    amp_t = np.fft.fftshift(np.abs(f_trg), axes=(-2, -1))
    h, w = src.shape[-2:]
    b = int(np.floor(min(h, w) * beta))
    ch, cw = h // 2, w // 2
    amp_s[:, ch - b:ch + b + 1, cw - b:cw + b + 1] = amp_t[:, ch - b:ch + b + 1, cw - b:cw + b + 1]
    amp = np.fft.ifftshift(amp_s, axes=(-2, -1))
    return np.real(np.fft.ifft2(amp * np.exp(1j * phase), axes=(-2, -1)))
