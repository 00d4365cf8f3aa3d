"""The demo archive generator: deterministic, realistic, and honest about its truth."""

from __future__ import annotations

import gzip
import json
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from soda_reduce.pipelines.ccd.demo import DemoSummary, generate_demo_archive
from soda_reduce.pipelines.ccd.demo_model import CAMERA, InstrumentModel

SIZE = 64
SEED = 1
NIGHTS = ["2024-01-04", "2024-01-05", "2024-01-06"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoSummary, dict]:
    root = tmp_path_factory.mktemp("demo")
    calls: list[tuple[int, int]] = []
    summary = generate_demo_archive(
        root,
        nights=3,
        seed=SEED,
        science_per_night=4,
        size=SIZE,
        progress=lambda d, t: calls.append((d, t)),
    )
    manifest = json.loads((root / "_truth" / "manifest.json").read_text())
    manifest["_progress"] = calls
    return root, summary, manifest


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _image(path: Path) -> tuple[fits.Header, np.ndarray]:
    """Header and data of the first image HDU (the extension of a tile-compressed file)."""
    with fits.open(path) as hdul:
        hdu = hdul[1] if hdul[0].data is None and len(hdul) > 1 else hdul[0]
        return hdu.header.copy(), np.asarray(hdu.data, dtype=float)


def _entries(manifest: dict, category: str | None = None) -> list[dict]:
    return [e for e in manifest["files"] if category is None or e["category"] == category]


def _binning(header: fits.Header) -> int:
    if "XBINNING" in header:
        assert header["XBINNING"] == header["YBINNING"]
        return int(header["XBINNING"])
    x, y = (int(v) for v in header["CCDSUM"].split())
    assert x == y
    return x


# --- determinism and bookkeeping ----------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(archive, tmp_path: Path) -> None:
    root, _, _ = archive
    again = generate_demo_archive(tmp_path / "again", nights=3, seed=SEED, size=SIZE)
    assert _files(root) == _files(again.root)
    other = generate_demo_archive(tmp_path / "other", nights=3, seed=SEED + 1, size=SIZE)
    a, b = _files(root), _files(other.root)
    science = "2024-01-04/NGC2244_V_1x1_001.fits"
    assert a[science] != b[science]
    ha, da = _image(root / science)
    hb, db = _image(other.root / science)
    assert ha["DATE-OBS"] != hb["DATE-OBS"]
    assert not np.array_equal(da, db)


def test_manifest_lists_every_file(archive) -> None:
    root, summary, manifest = archive
    listed = [e["path"] for e in manifest["files"]]
    assert listed == summary.paths
    on_disk = {p for p in _files(root) if not p.startswith("_truth/")}
    assert on_disk == set(listed)
    for entry in manifest["files"]:
        assert (root / entry["path"]).exists()
        if entry["category"] == "SCIENCE":
            assert (root / entry["truth"]).exists()
            assert entry["truth"] in summary.truth_paths
    for cat in ("BIAS", "DARK", "FLAT", "SCIENCE"):
        assert summary.counts[cat] == len(_entries(manifest, cat))
    assert set(summary.malformed) == {e["path"] for e in manifest["files"] if e["malformed"]}
    done = [d for d, _ in manifest["_progress"]]
    assert done == list(range(1, len(listed) + 1))
    assert {t for _, t in manifest["_progress"]} == {len(listed)}


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_demo_archive(tmp_path, size=33)
    with pytest.raises(ValueError):
        generate_demo_archive(tmp_path, nights=0)


# --- headers --------------------------------------------------------------------------------


def test_headers_match_manifest_and_times_are_plausible(archive) -> None:
    root, _, manifest = archive
    offset = timedelta(hours=-70.7375 / 15.0)
    for e in manifest["files"]:
        if e["malformed"]:
            continue
        header, data = _image(root / e["path"])
        assert header["BITPIX"] == 16 and header["BZERO"] == 32768
        assert header["INSTRUME"] == "DEMOCAM" and header["SATURATE"] == 65535
        assert _binning(header) == e["binning"]
        assert data.shape == (SIZE // e["binning"],) * 2
        assert header.get("EXPTIME", header.get("EXPOSURE")) == e["exptime"]
        if e["filter"]:
            assert header["FILTER"] == e["filter"]
        assert header.get("OBJECT") == e["object"]
        assert header["IMAGETYP"] == e["imagetyp"].rstrip()
        utc = datetime.fromisoformat(header["DATE-OBS"])
        local = utc + offset
        hours = (local - datetime.fromisoformat(e["night"])).total_seconds() / 3600
        if e["category"] == "SCIENCE":
            assert 21 <= hours <= 28
            assert utc.date().isoformat() != e["night"]  # UTC date is the next day
        else:
            assert 14.9 <= hours <= 20.0
        assert (
            abs(header["MJD-OBS"] - (utc - datetime(1858, 11, 17)).total_seconds() / 86400) < 1e-6
        )


def test_header_conventions_vary(archive) -> None:
    root, _, manifest = archive
    headers = [_image(root / e["path"])[0] for e in manifest["files"] if not e["malformed"]]
    imagetyp = {h["IMAGETYP"] for h in headers}
    assert {"Bias Frame", "Dark Frame", "Flat Field", "Light Frame"} <= imagetyp
    assert {"BIAS", "SKYFLAT", "DOMEFLAT", "OBJECT"} <= imagetyp
    assert {
        " zero",
        " object",
    } <= imagetyp  # lower case, leading blank (trailing ones are not kept)
    assert any("EXPOSURE" in h and "EXPTIME" not in h for h in headers)
    assert sum("EXPTIME" in h for h in headers) > len(headers) / 2
    assert any(h.get("CCDSUM") == "2 2" and "XBINNING" not in h for h in headers)
    assert sum("XBINNING" in h for h in headers) > len(headers) / 2


def test_compressed_files(archive) -> None:
    root, summary, manifest = archive
    gz = [e for e in manifest["files"] if e["path"].endswith(".fits.gz")]
    assert gz and all(e["night"] == NIGHTS[0] and e["category"] == "BIAS" for e in gz)
    assert all(e["binning"] == 1 for e in gz) and len(gz) == 5
    for e in gz:
        assert (root / e["path"]).read_bytes()[:2] == b"\x1f\x8b"
        assert gzip.decompress((root / e["path"]).read_bytes())[:6] == b"SIMPLE"
    fz = [e for e in manifest["files"] if e["path"].endswith(".fz")]
    assert len(fz) == 1 and fz[0]["category"] == "SCIENCE"
    with fits.open(root / fz[0]["path"]) as hdul:
        assert isinstance(hdul[1], fits.CompImageHDU)
    with fits.open(root / fz[0]["path"], disable_image_compression=True) as hdul:
        assert hdul[1].header["ZCMPTYPE"] == "RICE_1"
    assert fz[0]["truth"] in summary.truth_paths


# --- WCS and pixels -------------------------------------------------------------------------


def _electrons(model: InstrumentModel, raw: np.ndarray, e: dict) -> np.ndarray:
    """Perfect calibration with the true bias, dark and gain (flat not applied)."""
    b = e["binning"]
    return (raw - model.bias_adu(b)) * CAMERA.gain - model.dark_rate(b) * e["exptime"]


def _centroid(img: np.ndarray, bad: np.ndarray, x: float, y: float) -> tuple[float, float]:
    """Flux-weighted centre in a 9x9 box over the local (annulus) background, twice."""
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    for _ in range(2):
        r = np.hypot(xx - x, yy - y)
        background = np.median(img[(r > 6) & (r < 9) & ~bad])
        box = (np.abs(xx - round(x)) <= 4) & (np.abs(yy - round(y)) <= 4) & ~bad
        w = np.clip(img[box] - background, 0, None)
        x, y = float((w * xx[box]).sum() / w.sum()), float((w * yy[box]).sum() / w.sum())
    return x, y


def _isolated(x: np.ndarray, y: np.ndarray, flux: np.ndarray, alpha: float) -> np.ndarray:
    """Stars whose neighbours add less than 0.5% of their own peak anywhere near them."""
    d2 = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2
    spill = flux[None, :] / flux[:, None] * (1 + d2 / alpha**2) ** -3
    np.fill_diagonal(spill, 0.0)
    return spill.max(axis=1) < 0.005


def test_wcs_places_catalogue_stars(archive) -> None:
    """Catalogue stars land where each frame's WCS says, and frames agree on the sky."""
    root, _, manifest = archive
    fields = json.loads((root / "_truth" / "fields.json").read_text())["fields"]
    stars = next(f for f in fields if f["name"] == "NGC 2244")["stars"]
    frames = [e for e in _entries(manifest, "SCIENCE") if e["object"] == "NGC 2244"][:3]
    assert len(frames) >= 2
    model = InstrumentModel(SEED, SIZE)
    ra = np.array([s["ra"] for s in stars])
    dec = np.array([s["dec"] for s in stars])
    measured: list[tuple[WCS, dict[int, tuple[float, float]]]] = []
    for e in frames:
        header, raw = _image(root / e["path"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            wcs = WCS(header)
        assert wcs.wcs.ctype[0] == "RA---TAN" and header["RADESYS"] == "ICRS"
        with fits.open(root / e["truth"]) as hdul:
            bad = hdul["MASK"].data.astype(bool) & (raw < 65535)  # hot pixels, cosmic rays
        img = _electrons(model, raw, e) / model.flat_field(e["filter"], e["binning"])
        x, y = wcs.wcs_world2pix(ra, dec, 0)
        flux = np.array([s[f"flux_{e['filter']}"] for s in stars])
        alpha = 2.5 / 0.6 / e["binning"] / 1.02  # Moffat alpha at the worst seeing
        good = (x > 9) & (x < SIZE - 10) & (y > 9) & (y < SIZE - 10) & (flux > 300)
        good &= _isolated(x, y, flux, alpha)
        assert good.any()
        centres = {int(i): _centroid(img, bad, x[i], y[i]) for i in np.flatnonzero(good)}
        for i, (cx, cy) in centres.items():
            assert abs(cx - x[i]) < 0.3 and abs(cy - y[i]) < 0.3, (e["path"], i)
        measured.append((wcs, centres))
    # A star measured in one frame, carried to the sky and into another frame, is found there.
    (wcs_a, centres_a), pairs = measured[0], 0
    for wcs_b, centres_b in measured[1:]:
        for i in centres_a.keys() & centres_b.keys():
            sky = wcs_a.wcs_pix2world([centres_a[i]], 0)
            ((bx, by),) = wcs_b.wcs_world2pix(sky, 0)
            assert abs(bx - centres_b[i][0]) < 0.4 and abs(by - centres_b[i][1]) < 0.4
            pairs += 1
    assert pairs >= 1


def test_raw_science_agrees_with_truth(archive) -> None:
    """(raw - bias - dark) * gain / flat matches the truth within the noise, frame by frame."""
    root, _, manifest = archive
    model = InstrumentModel(SEED, SIZE)
    science = _entries(manifest, "SCIENCE")
    assert {(e["filter"], e["binning"]) for e in science} == {
        ("V", 1),
        ("R", 1),
        ("V", 2),
        ("R", 2),
    }
    pooled = []
    for e in science:
        _, raw = _image(root / e["path"])
        with fits.open(root / e["truth"]) as hdul:
            truth = hdul[0].data.astype(float)
            mask = hdul["MASK"].data.astype(bool)
            assert hdul[0].header["BUNIT"] == "electron"
            assert WCS(hdul[0].header).wcs.ctype[1] == "DEC--TAN"
        assert mask[raw >= 65535].all() and mask[model.hot_mask(e["binning"])].all()
        b = e["binning"]
        flat = model.flat_field(e["filter"], b)
        dark = model.dark_rate(b) * e["exptime"]
        var = flat * truth + dark + CAMERA.read_noise**2 + CAMERA.gain**2 / 12
        z = ((_electrons(model, raw, e) - flat * truth) / np.sqrt(var))[~mask]
        tol = 5 / np.sqrt(z.size)  # five standard errors
        assert abs(np.mean(z)) < tol and abs(np.median(z)) < 1.25 * tol, e["path"]
        assert abs(np.std(z) - 1) < tol / np.sqrt(2), e["path"]
        pooled.append(z)
    z = np.concatenate(pooled)
    assert abs(np.mean(z)) < 5 / np.sqrt(z.size) and abs(np.std(z) - 1) < 0.02


def test_calibration_frames_follow_the_model(archive) -> None:
    root, _, manifest = archive
    model = InstrumentModel(SEED, SIZE)
    for cat in ("BIAS", "DARK", "FLAT"):
        for e in _entries(manifest, cat)[:3]:
            _, raw = _image(root / e["path"])
            b = e["binning"]
            el = _electrons(model, raw, e)
            if cat == "FLAT":
                el = el / model.flat_field(e["filter"], b)
                assert 20000 < np.mean(el) < 33000
                assert np.std(el) / np.mean(el) < 1.3 / np.sqrt(np.mean(el)) + 0.002
            else:
                dark = model.dark_rate(b) * e["exptime"]
                z = el / np.sqrt(dark + CAMERA.read_noise**2 + CAMERA.gain**2 / 12)
                z = z[~model.hot_mask(b)]
                robust_std = 1.4826 * np.median(np.abs(z - np.median(z)))  # cosmic rays in darks
                assert abs(np.median(z)) < 0.1 and 0.9 < robust_std < 1.1


# --- gaps and broken files ------------------------------------------------------------------


def test_calibration_gaps(archive) -> None:
    _, _, manifest = archive
    files = [e for e in manifest["files"] if e["category"]]

    def has(cat: str, **kw) -> bool:
        return any(e["category"] == cat and all(e[k] == v for k, v in kw.items()) for e in files)

    assert has("BIAS", night=NIGHTS[0], binning=2) and has("BIAS", night=NIGHTS[2], binning=2)
    assert not has("BIAS", night=NIGHTS[1], binning=2)  # gap 1
    assert has("SCIENCE", night=NIGHTS[1], binning=2)
    assert has("FLAT", night=NIGHTS[1]) and not has("FLAT", night=NIGHTS[2])  # gap 2
    assert {e["night"] for e in files if e["category"] == "DARK"} == {NIGHTS[0]}  # gap 3
    assert has("DARK", binning=1) and has("DARK", binning=2)
    assert not has("FLAT", filter="R", binning=2)  # gap 4
    assert has("FLAT", filter="R", binning=1) and has("FLAT", filter="V", binning=2)
    assert has("SCIENCE", night=NIGHTS[2], filter="R", binning=2)
    gaps = {g["id"]: g for g in manifest["gaps"]}
    assert set(gaps) == {1, 2, 3, 4}
    assert gaps[4]["expect"] == "incomplete" and gaps[4]["affects"]
    assert all(g["expect"] == "fallback" for i, g in gaps.items() if i != 4)


def test_malformed_files(archive) -> None:
    root, summary, manifest = archive
    last = root / NIGHTS[-1]
    kinds = {Path(e["path"]).name: e["malformed"] for e in manifest["files"] if e["malformed"]}
    assert kinds == {
        "empty.fits": "empty",
        "truncated_header.fits": "truncated_header",
        "truncated_data.fits": "truncated_data",
        "notes.fits": "not_fits",
        "focus_0001.fits": "unclassifiable",
    }
    assert all(e["category"] is None for e in manifest["files"] if e["malformed"])
    assert len(summary.malformed) == 5
    assert (last / "empty.fits").stat().st_size == 0
    head = (last / "truncated_header.fits").read_bytes()
    assert head.startswith(b"SIMPLE") and b"END     " not in head and len(head) < 2880
    with pytest.raises(OSError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits.open(last / "truncated_header.fits")
    with pytest.warns(UserWarning, match="truncated"):
        header = fits.getheader(last / "truncated_data.fits")
    data_bytes = header["NAXIS1"] * header["NAXIS2"] * 2
    assert (last / "truncated_data.fits").stat().st_size < len(header.tostring()) + data_bytes
    assert not (last / "notes.fits").read_bytes().startswith(b"SIMPLE")
    focus, data = _image(last / "focus_0001.fits")
    assert "IMAGETYP" not in focus and "OBJECT" not in focus and data.shape == (SIZE, SIZE)


def test_summary_describes_itself(archive) -> None:
    _, summary, _ = archive
    text = summary.describe()
    assert "gap 4" in text and "truncated_data.fits" in text and "12 science" in text
