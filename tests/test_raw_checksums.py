"""Content checksums from DATASUM cards: agree with astropy, verified where data is read.

The archive files come from ``scale_archive`` (the benchmark's generator) and astropy;
the index is the real indexer into the real SecantusDB store; the recipe runs as a plan
runner runs it (``python -m soda_reduce.recipe`` in a subprocess).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from soda_reduce.pipelines.ccd import scale_archive
from soda_reduce.reduction.fits_cards import from_astropy
from soda_reduce.reduction.fits_checksums import (
    DATASUM_PREFIX,
    datasum_checksum,
    encode_checksum,
    ones_complement_sum,
    verify_datasums,
    verify_file,
)
from soda_reduce.reduction.fits_headers import BLOCK, read_header
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.runtime import indexer
from soda_reduce.runtime.indexer import index_archive
from soda_reduce.runtime.store import Store

AUTHORITY = "test.example"


def multi_extension(path: Path, checksum: bool = True) -> Path:
    """A primary image, a float image and a binary table, as astropy writes them."""
    primary = fits.PrimaryHDU(np.arange(300, dtype=np.int16).reshape(15, 20))
    primary.header["IMAGETYP"] = "Light Frame"
    image = fits.ImageHDU(np.linspace(0, 1, 77, dtype=np.float32), name="SCI")
    table = fits.BinTableHDU.from_columns([fits.Column("X", "E", array=np.arange(5.0))])
    fits.HDUList([primary, image, table]).writeto(path, checksum=checksum)
    return path


def flip_data_byte(path: Path, offset: int) -> None:
    """Change one data byte in place, keeping the header (and the DATASUM) as they were."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_sums_and_encoding_agree_with_astropy(tmp_path: Path) -> None:
    path = multi_extension(tmp_path / "mef.fits")
    read = read_header(path)
    assert read.problem is None and read.layout is not None and read.layout.covers_file
    raw = path.read_bytes()
    with fits.open(path) as hdul:
        assert len(read.layout.hdus) == len(hdul) == 3
        for hdu, theirs in zip(read.layout.hdus, hdul, strict=True):
            assert hdu.datasum == int(theirs.header["DATASUM"])
            data = raw[hdu.data_offset : hdu.data_offset + hdu.data_length]
            assert ones_complement_sum(data) == hdu.datasum
            # CHECKSUM makes the whole HDU sum to negative zero; encoded as astropy does
            whole = raw[hdu.offset : hdu.data_offset + hdu.data_length]
            assert ones_complement_sum(whole) == 0xFFFFFFFF
            head = bytearray(raw[hdu.offset : hdu.data_offset])
            at = head.index(b"CHECKSUM= '") + 11
            value = bytes(head[at : at + 16]).decode()
            head[at : at + 16] = b"0" * 16
            assert encode_checksum(ones_complement_sum(bytes(head), hdu.datasum)) == value
    blocks = b"".join(raw[h.offset : h.data_offset] for h in read.layout.hdus)
    assert datasum_checksum(read) == DATASUM_PREFIX + hashlib.sha256(blocks).hexdigest()
    assert verify_datasums(path, read.layout) is None


def test_what_no_datasum_vouches_for_is_hashed(tmp_path: Path) -> None:
    assert datasum_checksum(read_header(multi_extension(tmp_path / "none.fits", False))) is None
    unfollowed = read_header(multi_extension(tmp_path / "mef.fits"), layout=False)
    assert unfollowed.layout is None and datasum_checksum(unfollowed) is None  # fast mode
    tail = multi_extension(tmp_path / "tail.fits")
    tail.write_bytes(tail.read_bytes() + b"trailing bytes no DATASUM covers".ljust(BLOCK))
    read = read_header(tail)
    assert read.layout is not None and not read.layout.covers_file
    assert datasum_checksum(read) is None
    packed = tmp_path / "mef.fits.gz"
    packed.write_bytes(gzip.compress(multi_extension(tmp_path / "p.fits").read_bytes()))
    assert read_header(packed).layout is None and datasum_checksum(read_header(packed)) is None


def test_changed_data_and_headers_are_named(tmp_path: Path) -> None:
    path = multi_extension(tmp_path / "mef.fits")
    read = read_header(path)
    checksum = datasum_checksum(read)
    assert read.layout is not None and checksum is not None
    assert verify_file(path, checksum) is None
    flip_data_byte(path, read.layout.hdus[1].data_offset + 5)
    problem = verify_file(path, checksum)
    assert problem is not None and problem.startswith("HDU 1: its data sums to")
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["OBJECT"] = "renamed"
    assert verify_file(path, checksum) == (
        "its headers changed since it was indexed (re-index the archive)"
    )
    assert verify_file(path, "ab" * 32) is None  # a sha256 checksum: nothing to check here


def test_generated_archive_is_valid_fits_parsed_as_astropy_does(tmp_path: Path) -> None:
    made = scale_archive.write_archive(tmp_path / "small", 48, seed=5)
    frames = scale_archive.write_archive(tmp_path / "frames", 4, (512, 512), seed=5)
    assert {spec.instrument for spec in made.files} == set(scale_archive.STYLES)
    assert any(b"CONTINUE" in spec.path.read_bytes() for spec in made.files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checksum astropy disagrees with warns
        for spec in made.files + frames.files:
            read = read_header(spec.path)
            assert read.problem is None and datasum_checksum(read) is not None
            with fits.open(spec.path, checksum=True) as hdul:
                hdul.verify("exception")
                assert hdul[0].data.shape == spec.shape
                assert read.header == from_astropy(hdul[0].header), spec.path.name
    before = made.files[3]
    mtime = before.path.stat().st_mtime_ns
    (again,) = scale_archive.rewrite(made, [before])
    assert again.revision == 1 and before.path.stat().st_mtime_ns > mtime
    assert b"header corrected, revision 1" in before.path.read_bytes()
    unsummed = scale_archive.write_archive(tmp_path / "plain", 4, datasum=False)
    assert all(b"DATASUM" not in s.path.read_bytes() for s in unsummed.files)


# -- through the indexer and the store -----------------------------------------------


@pytest.fixture
def archive(tmp_path: Path) -> scale_archive.ScaleArchive:
    return scale_archive.write_archive(tmp_path / "archive", 12, (16, 16), seed=9)


def no_data_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("the data was read")

    monkeypatch.setattr(indexer, "file_checksum", refuse)
    monkeypatch.setattr(indexer, "verify_datasums", refuse)


async def stored(store: Store, rel: str) -> RawFile:
    (raw,) = [f for f in await store.all_raw_files() if f.path == rel]
    return raw


async def test_full_index_reads_headers_only(
    store: Store, archive: scale_archive.ScaleArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_data_reads(monkeypatch)
    report = await index_archive(store, archive.root, AUTHORITY, "full")
    assert report.added == 12 and report.problems == []
    for raw in await store.all_raw_files():
        head = read_header(archive.root / raw.path).header_bytes  # one HDU: its header blocks
        assert (archive.root / raw.path).read_bytes().startswith(head)
        assert raw.checksum == DATASUM_PREFIX + hashlib.sha256(head).hexdigest()
        assert raw.header_checksum == hashlib.sha256(head).hexdigest()
        assert raw.header["DATASUM"].isdigit()


async def test_data_changed_behind_its_header_is_caught_at_the_next_scan(
    store: Store, archive: scale_archive.ScaleArchive
) -> None:
    await index_archive(store, archive.root, AUTHORITY, "full")
    spec = archive.files[2]
    rel = spec.path.relative_to(archive.root).as_posix()
    before = await stored(store, rel)
    flip_data_byte(spec.path, len(read_header(spec.path).header_bytes) + 10)
    os.utime(spec.path, ns=(before.mtime_ns + 10**9, before.mtime_ns + 10**9))
    report = await index_archive(store, archive.root, AUTHORITY, "full")
    assert report.updated == 1
    after = await stored(store, rel)
    assert after.problem is not None and after.problem.startswith("DATASUM check failed: HDU 0")
    assert after.checksum == hashlib.sha256(spec.path.read_bytes()).hexdigest()  # not trusted
    assert (rel, after.problem) in report.problems


async def test_verify_rereads_what_a_scan_cannot_see(
    store: Store, archive: scale_archive.ScaleArchive
) -> None:
    await index_archive(store, archive.root, AUTHORITY, "full")
    spec = archive.files[5]
    rel = spec.path.relative_to(archive.root).as_posix()
    stat = spec.path.stat()
    flip_data_byte(spec.path, len(read_header(spec.path).header_bytes) + 3)
    os.utime(spec.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as before
    report = await index_archive(store, archive.root, AUTHORITY, "full")
    assert report.unchanged == 12 and (await stored(store, rel)).problem is None
    report = await index_archive(store, archive.root, AUTHORITY, "full", force=True, verify=True)
    assert [path for path, _ in report.problems] == [rel]
    assert (await stored(store, rel)).problem.startswith("DATASUM check failed")


async def test_fast_mode_never_reads_data(
    store: Store, archive: scale_archive.ScaleArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_data_reads(monkeypatch)
    await index_archive(store, archive.root, AUTHORITY, "fast", verify=True, force=True)
    raw = await stored(store, archive.files[0].path.relative_to(archive.root).as_posix())
    assert not raw.checksum.startswith(DATASUM_PREFIX)


def run_noop(work: Path, inputs: list[dict]) -> subprocess.CompletedProcess[str]:
    (work / "inputs.json").write_text(json.dumps({"recipe": "core.noop", "inputs": inputs}))
    argv = [sys.executable, "-m", "soda_reduce.recipe", "core.noop"]
    argv += ["--inputs", str(work / "inputs.json"), "--out", str(work / "out")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


async def test_a_recipe_refuses_a_raw_file_whose_data_changed(
    store: Store, archive: scale_archive.ScaleArchive, tmp_path: Path
) -> None:
    await index_archive(store, archive.root, AUTHORITY, "full")
    raws = sorted(await store.all_raw_files(), key=lambda raw: raw.path)[:3]
    inputs = [  # what the plan runner writes for raw inputs
        {
            "category": "RAW",
            "path": str(archive.root / raw.path),
            "file_id": raw.file_id,
            "checksum": raw.checksum,
        }
        for raw in raws
    ]
    assert run_noop(tmp_path, inputs).returncode == 0
    damaged = archive.root / raws[1].path
    flip_data_byte(damaged, len(read_header(damaged).header_bytes))
    done = run_noop(tmp_path, inputs)
    assert done.returncode == 2, done.stderr
    assert f"raw input {raws[1].file_id}: HDU 0: its data sums to" in done.stderr


def test_index_verify_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from soda_reduce.cli import main

    made = scale_archive.write_archive(tmp_path / "archive", 8, seed=2)
    args = ["index", "--archive", str(made.root), "--data-dir", str(tmp_path / "data"), "--json"]
    assert main(args) == 0
    damaged = made.files[1].path
    stat = damaged.stat()
    flip_data_byte(damaged, len(read_header(damaged).header_bytes) + 1)
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    assert main([*args, "--verify"]) == 0
    listed = json.loads(capsys.readouterr().out)
    problems = {row["path"]: row["problem"] for row in listed["files"] if row["problem"]}
    assert list(problems) == [damaged.relative_to(made.root).as_posix()]
    assert problems[damaged.relative_to(made.root).as_posix()].startswith("DATASUM check failed")
