"""The demo camera's instrumental signature: bias, dark current, flat field, readout.

Everything here is fixed for a given seed and image size (a camera does not
change from night to night), so a calibration taken on one night is exactly
valid on another: fallbacks across nights lose nothing but their noise.
Tests import this module to know the true calibrations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TAG_BIAS = 21
TAG_HOT = 22
TAG_FLAT = 23
TAG_PRNU = 24


@dataclass(frozen=True)
class Camera:
    """Numbers a real CCD datasheet would give."""

    gain: float = 1.4  # e-/ADU
    read_noise: float = 9.0  # e-
    dark_rate: float = 0.02  # e-/s per unbinned pixel at -20 C
    saturate: int = 65535  # ADU, 16-bit converter
    pixel_scale: float = 0.6  # arcsec per unbinned pixel
    pixel_size_um: float = 9.0
    ccd_temp: float = -20.0
    hot_fraction: float = 5e-4  # fraction of pixels that are hot

    def bias_level(self, binning: int) -> float:
        """The bias offset differs a little between readout modes, as it does on real cameras."""
        return 1000.0 + 3.0 * (binning - 1)


CAMERA = Camera()


def bin_sum(a: np.ndarray, b: int) -> np.ndarray:
    """On-chip binning adds the charge of b x b pixels."""
    if b == 1:
        return a
    n = a.shape[0] // b
    return a[: n * b, : n * b].reshape(n, b, n, b).sum(axis=(1, 3))


@dataclass
class InstrumentModel:
    """Bias pattern, dark current and flat field of the camera for one seed and size."""

    seed: int
    size: int
    camera: Camera = CAMERA
    _cache: dict[tuple, np.ndarray] = field(default_factory=dict, repr=False)

    def shape(self, binning: int) -> tuple[int, int]:
        n = self.size // binning
        return (n, n)

    def bias_adu(self, binning: int) -> np.ndarray:
        """Bias level plus fixed pattern (column structure, row ramp, readout edge), ADU."""
        key = ("bias", binning)
        if key not in self._cache:
            rng = np.random.default_rng([self.seed, TAG_BIAS, binning])
            ny, nx = self.shape(binning)
            columns = rng.normal(0.0, 2.5, nx)
            columns[rng.choice(nx, size=max(1, nx // 64), replace=False)] += 12.0  # warm columns
            x = np.arange(nx)
            edge = 15.0 * np.exp(-x / 4.0)  # amplifier settling at the start of each row
            ramp = 4.0 * np.arange(ny)[:, None] / ny
            self._cache[key] = self.camera.bias_level(binning) + columns + edge + ramp
        return self._cache[key]

    def _hot_full(self) -> np.ndarray:
        """Per-pixel rate of the hot pixels (e-/s) at full resolution, zero elsewhere."""
        key = ("hot",)
        if key not in self._cache:
            rng = np.random.default_rng([self.seed, TAG_HOT])
            n = self.size * self.size
            count = max(3, round(n * self.camera.hot_fraction))
            where = rng.choice(n, size=count, replace=False)
            rates = np.exp(rng.uniform(np.log(2.0), np.log(60.0), count))
            hot = np.zeros(n)
            hot[where] = rates
            self._cache[key] = hot.reshape(self.size, self.size)
        return self._cache[key]

    def dark_rate(self, binning: int) -> np.ndarray:
        """Dark current per binned pixel, e-/s: uniform floor plus hot pixels."""
        key = ("dark", binning)
        if key not in self._cache:
            full = self.camera.dark_rate + self._hot_full()
            self._cache[key] = bin_sum(full, binning)
        return self._cache[key]

    def hot_mask(self, binning: int) -> np.ndarray:
        return bin_sum((self._hot_full() > 0).astype(np.int32), binning) > 0

    def flat_field(self, filt: str, binning: int) -> np.ndarray:
        """Relative response (mean exactly 1): vignetting x dust donuts x pixel response.

        The 2x2 flat is the block average of the 1x1 one, so both have mean 1
        and dividing by a mean-normalised master flat recovers the true signal.
        """
        key = ("flat", filt, binning)
        if key not in self._cache:
            if binning == 1:
                self._cache[key] = self._flat_full(filt)
            else:
                full = self._flat_full(filt)
                self._cache[key] = bin_sum(full, binning) / binning**2
        return self._cache[key]

    def _flat_full(self, filt: str) -> np.ndarray:
        n = self.size
        y, x = np.mgrid[0:n, 0:n].astype(float)
        # Vignetting: optical axis slightly off centre, ~20% loss in the corners.
        cx, cy = 0.53 * n, 0.47 * n
        r2 = ((x - cx) ** 2 + (y - cy) ** 2) / (0.5 * n) ** 2
        vignetting = 1.0 / (1.0 + 0.12 * r2)
        # Dust on the filter: out-of-focus donuts, different for each filter.
        rng = np.random.default_rng([self.seed, TAG_FLAT, ord(filt[0])])
        dust = np.ones((n, n))
        for _ in range(int(rng.integers(3, 6))):
            dx, dy = rng.uniform(0.1 * n, 0.9 * n, 2)
            radius = float(rng.uniform(0.04, 0.09)) * n
            width = 0.25 * radius
            depth = float(rng.uniform(0.03, 0.08))
            r = np.hypot(x - dx, y - dy)
            dust *= 1.0 - depth * np.exp(-0.5 * ((r - radius) / width) ** 2)
        # Pixel response non-uniformity, the same for both filters (a property of the silicon).
        prnu = 1.0 + np.random.default_rng([self.seed, TAG_PRNU]).normal(0.0, 0.01, (n, n))
        flat = vignetting * dust * prnu
        return flat / flat.mean()


def cosmic_rays(
    rng: np.random.Generator, shape: tuple[int, int], exptime: float, binning: int
) -> np.ndarray:
    """Sharp charge deposits: short straight tracks of 1-4 pixels, ~6 per 120 s on 256^2."""
    ny, nx = shape
    hits = np.zeros(shape)
    area = (ny * binning) * (nx * binning)
    rate = 6.0 / 120.0 / 256**2  # per second per unbinned pixel
    count = int(rng.poisson(rate * exptime * area))
    for _ in range(count):
        x, y = rng.uniform(0, nx), rng.uniform(0, ny)
        length = int(rng.integers(1, 5))
        angle = rng.uniform(0, np.pi)
        energy = rng.uniform(800.0, 6000.0, length)
        for i in range(length):
            px = int(x + i * np.cos(angle))
            py = int(y + i * np.sin(angle))
            if 0 <= px < nx and 0 <= py < ny:
                hits[py, px] += energy[i]
    return hits


@dataclass(frozen=True)
class Exposure:
    """A read-out frame: the ADU the camera stores, and where it cannot be trusted."""

    adu: np.ndarray  # uint16
    saturated: np.ndarray  # bool
    cosmic: np.ndarray  # bool


def expose(
    model: InstrumentModel,
    rng: np.random.Generator,
    binning: int,
    exptime: float,
    filt: str | None = None,
    signal_e: np.ndarray | float | None = None,
) -> Exposure:
    """raw = bias + (Poisson(flat * signal + dark * t) + cosmic rays + read noise) / gain."""
    cam = model.camera
    shape = model.shape(binning)
    expected = np.zeros(shape)
    if exptime > 0:
        expected = expected + model.dark_rate(binning) * exptime
    if signal_e is not None:
        assert filt is not None
        expected = expected + model.flat_field(filt, binning) * signal_e
    electrons = rng.poisson(expected).astype(float)
    hits = cosmic_rays(rng, shape, exptime, binning) if exptime > 0 else np.zeros(shape)
    electrons += hits + rng.normal(0.0, cam.read_noise, shape)
    adu = np.rint(model.bias_adu(binning) + electrons / cam.gain)
    saturated = adu >= cam.saturate
    return Exposure(np.clip(adu, 0, cam.saturate).astype(np.uint16), saturated, hits > 0)
