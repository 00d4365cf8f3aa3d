"""The indexer against a real SecantusDB: what is read, what is listed, what is forgotten."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from soda_reduce.reduction.fits_headers import BLOCK
from soda_reduce.reduction.index_model import raw_file_id
from soda_reduce.runtime import indexer
from soda_reduce.runtime.indexer import IndexReport, index_archive, walk_archive
from soda_reduce.runtime.store import Store

AUTHORITY = "test.example"
GOOD = [
    "2024-01-05/bias_001.fits",
    "2024-01-05/flat_V.FIT",
    "2024-01-05/sub/object_1.fts",
    "2024-01-06/object_2.fits.gz",
    "2024-01-06/object_3.fits.fz",
]
BAD = {
    "bad/empty.fits": "empty file",
    "bad/no_end.fits": "truncated header (no END card)",
    "bad/short_data.fits": "truncated data: header promises 800 bytes of data, file has 100",
    "bad/not_fits.fits": "not a FITS file (no SIMPLE card)",
    "bad/bare.fits": "no descriptive keywords",
}


def frame(kind: str, shape: tuple[int, int] = (10, 20)) -> fits.PrimaryHDU:
    hdu = fits.PrimaryHDU(np.zeros(shape, dtype=np.int16))
    hdu.header["IMAGETYP"] = kind
    hdu.header["FILTER"] = "V"
    hdu.header["DATE-OBS"] = "2024-01-05T03:12:00"
    return hdu


def cards(*images: str) -> bytes:
    text = "".join(c.ljust(80) for c in (*images, "END"))
    return text.ljust(-(-len(text) // BLOCK) * BLOCK).encode()


def build_archive(root: Path) -> Path:
    for rel in GOOD:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        hdu = frame(path.name.split("_")[0])
        if rel.endswith(".gz"):
            plain = root / "tmp.fits"
            hdu.writeto(plain)
            path.write_bytes(gzip.compress(plain.read_bytes()))
            plain.unlink()
        elif rel.endswith(".fz"):
            image = fits.CompImageHDU(hdu.data, header=hdu.header)
            fits.HDUList([fits.PrimaryHDU(), image]).writeto(path)
        else:
            hdu.writeto(path)
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.fits").write_bytes(b"")
    no_end = "".join(c.ljust(80) for c in ("SIMPLE  = T", "OBJECT  = 'x'")).ljust(BLOCK)
    (bad / "no_end.fits").write_bytes(no_end.encode())
    header = ("SIMPLE  = T", "BITPIX  = 16", "NAXIS   = 2", "NAXIS1  = 20", "NAXIS2  = 20")
    (bad / "short_data.fits").write_bytes(cards(*header, "OBJECT  = 'x'") + bytes(100))
    (bad / "not_fits.fits").write_text("this is a text file\n" * 200)
    (bad / "bare.fits").write_bytes(cards("SIMPLE  = T", "BITPIX  = 8", "NAXIS   = 0"))
    # never indexed: not FITS by name, or in directories that are not raw data
    (root / "notes.txt").write_text("not a FITS file")
    for hidden in ("_truth", ".cache", "2024-01-05/_static"):
        (root / hidden).mkdir(parents=True)
        frame("bias").writeto(root / hidden / "x.fits")
    return root


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return build_archive(tmp_path / "archive")


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    reads: list[Path] = []
    real = indexer.read_header

    def counting(path: Path | str, **options: bool):  # type: ignore[no-untyped-def]
        reads.append(Path(path))
        return real(path, **options)

    monkeypatch.setattr(indexer, "read_header", counting)
    return reads


def touch(path: Path, seconds: int = 10) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


async def test_walk_is_sorted_and_skips_non_raw_directories(archive: Path) -> None:
    walk = walk_archive(archive)
    assert list(walk.files) == sorted(GOOD + list(BAD))
    assert walk.files["bad/empty.fits"][0] == 0
    assert walk.unreadable == {}


async def test_first_scan_indexes_everything_and_lists_problems(
    store: Store, archive: Path
) -> None:
    progress: list[tuple[int, int]] = []
    report = await index_archive(store, archive, AUTHORITY, progress=lambda *p: progress.append(p))
    assert (report.added, report.updated, report.removed, report.unchanged) == (10, 0, 0, 0)
    assert report.problems == sorted(BAD.items())
    assert progress[0] == (0, 10) and progress[-1] == (10, 10)
    assert "10 files indexed" in report.summary()

    files = {f.path: f for f in await store.all_raw_files()}
    assert set(files) == set(GOOD) | set(BAD)
    for rel in GOOD:
        assert files[rel].problem is None
        assert files[rel].file_id == raw_file_id(rel, AUTHORITY)
        assert files[rel].header["FILTER"] == "V"
    assert files["2024-01-06/object_3.fits.fz"].header["NAXIS1"] == 20
    assert files["bad/empty.fits"].header == {}
    assert files["bad/short_data.fits"].header["OBJECT"] == "x"  # readable, but flagged


async def test_rescan_reads_only_what_changed_and_forgets_deleted(
    store: Store, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await index_archive(store, archive, AUTHORITY)
    ids = {f.path: f.file_id for f in await store.all_raw_files()}

    reads = count_reads(monkeypatch)
    report = await index_archive(store, archive, AUTHORITY)
    assert reads == [] and report.unchanged == 10
    assert report.problems == first.problems

    touch(archive / GOOD[0])
    (archive / GOOD[1]).unlink()
    (archive / "bad" / "empty.fits").unlink()
    frame("dark").writeto(archive / "2024-01-07.fits")
    report = await index_archive(store, archive, AUTHORITY)
    assert sorted(p.relative_to(archive).as_posix() for p in reads) == [
        "2024-01-05/bias_001.fits",
        "2024-01-07.fits",
    ]
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 2, 7)
    assert ("bad/empty.fits", "empty file") not in report.problems

    after = {f.path: f.file_id for f in await store.all_raw_files()}
    assert GOOD[1] not in after and "bad/empty.fits" not in after
    assert all(after[rel] == ids[rel] for rel in after if rel in ids)  # ids are stable
    assert await store.count_raw_files() == report.total == 9


async def test_a_fixed_file_leaves_the_problem_list(store: Store, archive: Path) -> None:
    await index_archive(store, archive, AUTHORITY)
    frame("bias").writeto(archive / "bad" / "not_fits.fits", overwrite=True)
    report = await index_archive(store, archive, AUTHORITY)
    assert report.updated == 1
    assert [p for p, _ in report.problems] == sorted(set(BAD) - {"bad/not_fits.fits"})


async def test_writes_outside_the_indexer_invalidate_the_listing(
    store: Store, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await index_archive(store, archive, AUTHORITY)
    await store.delete_raw_files([GOOD[2]])  # someone else's write
    reads = count_reads(monkeypatch)
    report = await index_archive(store, archive, AUTHORITY)
    assert [p.relative_to(archive).as_posix() for p in reads] == [GOOD[2]]
    assert report.added == 1 and await store.count_raw_files() == 10


async def test_force_rereads_everything(
    store: Store, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await index_archive(store, archive, AUTHORITY)
    reads = count_reads(monkeypatch)
    report = await index_archive(store, archive, AUTHORITY, force=True)
    assert len(reads) == 10 and report.updated == 10


async def test_full_checksums_are_portable(store: Store, archive: Path, tmp_path: Path) -> None:
    await index_archive(store, archive, AUTHORITY, "full")
    files = {f.path: f for f in await store.all_raw_files()}
    for rel, raw in files.items():
        assert raw.checksum == hashlib.sha256((archive / rel).read_bytes()).hexdigest()
    assert files["bad/empty.fits"].checksum == hashlib.sha256(b"").hexdigest()
    plain = files["2024-01-05/bias_001.fits"]
    header = (archive / plain.path).read_bytes()[: 2 * BLOCK]
    assert plain.header_checksum == hashlib.sha256(header[:BLOCK]).hexdigest()

    # the same bytes elsewhere (another root, other mtimes) give the same ids and checksums
    moved = tmp_path / "elsewhere"
    shutil.copytree(archive, moved)
    for path in moved.rglob("*.fits"):
        touch(path, 3600)
    await store.delete_raw_files(list(files))
    await index_archive(store, moved, AUTHORITY, "full")
    again = {f.path: (f.file_id, f.checksum) for f in await store.all_raw_files()}
    assert again == {rel: (raw.file_id, raw.checksum) for rel, raw in files.items()}


async def test_fast_checksums_follow_mtime_without_reading_data(
    store: Store, archive: Path
) -> None:
    await index_archive(store, archive, AUTHORITY, "fast")
    rel = "2024-01-05/bias_001.fits"
    (before,) = [f for f in await store.all_raw_files() if f.path == rel]
    assert before.checksum != hashlib.sha256((archive / rel).read_bytes()).hexdigest()

    touch(archive / rel)  # same bytes, new mtime: a fast checksum must change
    await index_archive(store, archive, AUTHORITY, "fast")
    (after,) = [f for f in await store.all_raw_files() if f.path == rel]
    assert after.checksum != before.checksum
    assert after.header_checksum == before.header_checksum


async def test_unknown_checksum_mode(store: Store, archive: Path) -> None:
    with pytest.raises(ValueError, match="checksum_mode"):
        await index_archive(store, archive, AUTHORITY, "md5")


async def test_empty_and_missing_archives(store: Store, tmp_path: Path) -> None:
    report = await index_archive(store, tmp_path, AUTHORITY)
    assert report == IndexReport(duration=report.duration)
    with pytest.raises(NotADirectoryError, match="missing"):
        await index_archive(store, tmp_path / "missing", AUTHORITY)


async def test_an_unreadable_directory_is_reported_not_forgotten(
    store: Store, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await index_archive(store, archive, AUTHORITY)
    real_scandir = os.scandir

    def failing(path):  # type: ignore[no-untyped-def]
        if str(path).endswith("2024-01-06"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(indexer.os, "scandir", failing)
    report = await index_archive(store, archive, AUTHORITY)
    assert report.unreadable == [("2024-01-06/", "cannot list directory: Permission denied")]
    assert report.removed == 0
    assert "1 directories could not be listed" in report.summary()
    assert await store.count_raw_files() == 10


async def test_many_files_in_batches(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexer, "READ_BATCH", 7)
    root = tmp_path / "many"
    root.mkdir()
    template = cards("SIMPLE  = T", "BITPIX  = 8", "NAXIS   = 0", "IMAGETYP= 'bias'")
    for i in range(40):
        (root / f"f{i:02d}.fits").write_bytes(template.replace(b"'bias'", f"'b{i:02d}' ".encode()))
    report = await index_archive(store, root, AUTHORITY)
    assert report.added == 40 and report.problems == []
    headers = {f.path: f.header["IMAGETYP"] for f in await store.all_raw_files()}
    assert headers == {f"f{i:02d}.fits": f"b{i:02d}" for i in range(40)}
