"""The science target's 1-D spectrum, as a plain FITS table with a plot, from PypeIt's spec1d.

PypeIt's spec1d holds every object it found on the slit, each with optimal and
boxcar extractions. The product a VO client wants is one spectrum: the object
with the highest median signal-to-noise (the target a long slit is centred
on), optimal extraction, as ``WAVELENGTH`` (Angstrom, PypeIt's wavelength
frame), ``FLUX`` (counts: not flux-calibrated) ``ERROR`` and ``MASK`` (0 =
good), in the IVOA spectrum-table shape TOPCAT and specutils read, with a PNG
plot as its preview.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.io import fits

from soda_reduce.recipe.contract import RecipeCall, RecipeFailure, RecipeInput
from soda_reduce.recipe.products import PNG_TYPE, PREVIEW, safe_name, write_fits

log = logging.getLogger("soda_reduce.recipe")

CATEGORY = "SPECTRUM_1D"
COPIED = ("OBJECT", "RA", "DEC", "DATE-OBS", "MJD", "EXPTIME", "AIRMASS", "INSTRUME")


def best_object(hdul: fits.HDUList) -> fits.BinTableHDU:
    """The extracted object with the highest median S/N (optimal extraction)."""
    best, best_snr = None, -np.inf
    for hdu in hdul[1:]:
        if not isinstance(hdu, fits.BinTableHDU) or "OPT_WAVE" not in hdu.columns.names:
            continue
        counts = np.asarray(hdu.data["OPT_COUNTS"], dtype=float)
        sigma = np.asarray(hdu.data["OPT_COUNTS_SIG"], dtype=float)
        good = (sigma > 0) & np.isfinite(counts) & np.asarray(hdu.data["OPT_MASK"], dtype=bool)
        snr = float(np.median(counts[good] / sigma[good])) if good.any() else -np.inf
        log.info("object %s: median S/N %.1f", hdu.name, snr)
        if snr > best_snr:
            best, best_snr = hdu, snr
    if best is None:
        raise RecipeFailure("the spec1d has no optimally extracted object")
    return best


def write_spectrum(call: RecipeCall, spec1d: Path, frame: RecipeInput) -> None:
    with fits.open(spec1d) as hdul:
        source = best_object(hdul)
        primary = hdul[0].header
        data = source.data
        wave = np.asarray(data["OPT_WAVE"], dtype=float)
        flux = np.asarray(data["OPT_COUNTS"], dtype=float)
        error = np.asarray(data["OPT_COUNTS_SIG"], dtype=float)
        good = np.asarray(data["OPT_MASK"], dtype=bool) & (wave > 0) & np.isfinite(flux)
        keep = wave > 0  # PypeIt pads unextracted rows with zero wavelength
        columns = [
            fits.Column("WAVELENGTH", "D", unit="Angstrom", array=wave[keep]),
            fits.Column("FLUX", "D", unit="count", array=flux[keep]),
            fits.Column("ERROR", "D", unit="count", array=error[keep]),
            fits.Column("MASK", "B", array=np.where(good[keep], 0, 1).astype(np.uint8)),
        ]
        table = fits.BinTableHDU.from_columns(columns, name="SPECTRUM")
        header = fits.Header()
        for key in COPIED:
            if key in primary:
                header[key] = primary[key]
        header["OBJECT"] = primary.get("TARGET", primary.get("OBJECT", ""))
        header["SPECSRC"] = (source.name, "PypeIt object (position, slit, detector)")
        header["EXTRACT"] = ("optimal", "PypeIt extraction")
        header["FLUXCAL"] = (False, "counts: not flux-calibrated")
        target = str(header["OBJECT"])
    valid = wave[keep][good[keep]]
    if valid.size == 0:
        raise RecipeFailure("the extracted spectrum has no good pixel")
    snr = error[keep][good[keep]]
    qc = {
        "WAVE_MIN": float(valid.min()),
        "WAVE_MAX": float(valid.max()),
        "NPIX": int(valid.size),
        "SNR_MEDIAN": float(np.median(flux[keep][good[keep]] / np.where(snr > 0, snr, np.inf))),
    }
    table.header["TDMIN1"] = qc["WAVE_MIN"]
    table.header["TDMAX1"] = qc["WAVE_MAX"]
    name = safe_name(f"{frame.path.name.split('.')[0]}_{target}") + "_spectrum.fits"
    hdul_out = fits.HDUList([fits.PrimaryHDU(header=header), table])
    serves = (frame.file_id,) if frame.file_id else ()
    history = [f"1-D spectrum of {target} from PypeIt's {spec1d.name} ({source.name})"]
    write_fits(call, name, hdul_out, CATEGORY, history, qc, main=True)
    call.products[-1].serves = serves
    preview = name.replace(".fits", ".png")
    plot_spectrum(wave[keep], flux[keep], error[keep], good[keep], target, call.out / preview)
    call.add_product(preview, PREVIEW, PNG_TYPE, preview_of=name)
    log.info(
        "spectrum of %s: %.0f-%.0f Angstrom, %d pixels, median S/N %.1f",
        target,
        qc["WAVE_MIN"],
        qc["WAVE_MAX"],
        qc["NPIX"],
        qc["SNR_MEDIAN"],
    )


def plot_spectrum(
    wave: np.ndarray, flux: np.ndarray, error: np.ndarray, good: np.ndarray, title: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 3.6), dpi=100)
    axes.plot(wave[good], flux[good], lw=0.7, color="black", label="counts")
    axes.plot(wave[good], error[good], lw=0.6, color="tab:red", label="error")
    axes.set_xlabel("wavelength (Angstrom)")
    axes.set_ylabel("counts")
    axes.set_title(title)
    if good.any():
        top = np.nanpercentile(flux[good], 99.5)
        axes.set_ylim(min(0.0, float(np.nanpercentile(flux[good], 0.5))), 1.2 * float(top))
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
