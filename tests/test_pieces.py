"""Background pieces: exact sums, the exposure correction against a known truth, and the cache."""

import json
import pickle
import threading
import time
import zlib

import numpy as np
import pytest
import sqlalchemy as sa
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from sqlalchemy.orm import Session

from bkgdb.config import Binning, BkgdbConfig, ExclusionSettings
from bkgdb.errors import BkgdbError
from bkgdb.makers.piece import (
    STORED_MAX_BYTES,
    BackgroundPiece,
    EncodedPiece,
    counts_dtype,
    decode_array,
    encode_array,
    stored_payloads,
)
from bkgdb.simulate import BackgroundTruth, DatastoreSimulator, PointSource, write_source_catalogue
from bkgdb.store import indexing
from bkgdb.store import pieces as pieces_module
from bkgdb.store.indexing import piece_values
from bkgdb.store.models import BinningRow, PieceRow, RegionSet, Run
from bkgdb.store.pieces import PieceCache, row_to_piece, stacked_array
from bkgdb.store.settings import get_or_create_setting

SOURCE = PointSource(ra_deg=120.0, dec_deg=-20.0, rate_per_s=0.6, psf_sigma_deg=0.08, name="Bright source")
BINNING = Binning(e_min=0.1, e_max=100, e_bins=12, off_min=0, off_max=2.5, off_bins=10)


def wobble_pointings(source, offset_deg=0.7, n_runs=16):
    centre = SkyCoord(source.ra_deg * u.deg, source.dec_deg * u.deg)
    angles = np.arange(n_runs) % 4 * 90.0
    around = centre.directional_offset_by(angles * u.deg, offset_deg * u.deg)
    return list(zip(around.ra.deg, around.dec.deg, strict=True))


@pytest.fixture(scope="session")
def source_field(tmp_path_factory):
    """Runs wobbling 0.7 deg around a bright point source listed in a small catalogue."""
    folder = tmp_path_factory.mktemp("source_field")
    truth = BackgroundTruth()
    DatastoreSimulator(
        truth=truth,
        pointings=wobble_pointings(SOURCE),
        source=SOURCE,
        ontime_s=1800.0,
        seed=7,
        object_name="Bright source",
    ).run(folder / "datastore")
    catalogue = write_source_catalogue(folder / "catalogue.fits", [SOURCE])
    return folder / "datastore", catalogue, truth


def config_for(catalogue, method="geometric", binnings=(BINNING,)):
    exclusion = ExclusionSettings(gammacat=str(catalogue), hawc=None, star_cat=None, exposure_method=method)
    return BkgdbConfig(binnings=list(binnings), exclusion=exclusion)


def stored_pieces(catalogue):
    with Session(catalogue.engine) as session:
        rows = session.scalars(sa.select(PieceRow).join(Run).order_by(Run.obs_id)).all()
        return [(row.run.obs_id, row_to_piece(row)) for row in rows]


def rate_per_offset(pieces):
    """Events per second of accepted exposure in each offset bin (summed over energy)."""
    counts = sum(piece.counts.sum(axis=0) for _, piece in pieces)
    exposure = sum(piece.exposure_s for _, piece in pieces)
    return counts, exposure


def test_geometric_correction_recovers_the_true_rate(catalogue, source_field, capsys):
    datastore, source_catalogue, truth = source_field
    report = catalogue.index(datastore, config=config_for(source_catalogue))
    assert report.pieces == 16
    pieces = stored_pieces(catalogue)
    counts, exposure = rate_per_offset(pieces)
    expected = truth.expected_counts(BINNING.energy_edges, BINNING.offset_edges, 1.0).sum(axis=0) * exposure
    pulls = (counts - expected) / np.sqrt(expected)
    with capsys.disabled():
        print(
            "\ngeometric: (estimate/truth - 1) per offset bin (%):",
            np.round(100 * (counts / expected - 1), 1).tolist(),
            f"chi2 = {np.sum(pulls**2):.1f} / 10",
        )
    assert np.sum(pulls**2) < 30, pulls  # chi2 with 10 bins: p < 0.001 would fail
    # The source sits at 0.7 deg with a 0.35 deg circle: only bins within 0.35-1.05 deg lose exposure.
    fraction = exposure / (16 * 1800.0)
    assert np.all(fraction[1:5] < 1.0) and fraction[0] == 1.0 and np.all(fraction[5:] == 1.0)
    assert np.all(fraction[1:4] < 0.95)
    for _, piece in pieces:
        assert [region["name"] for region in piece.regions] == ["Bright source"]


def test_counts_ratio_bias_is_measured(catalogue, source_field, capsys):
    """The seed tool's method counts source photons as background lost: it overestimates the rate."""
    datastore, source_catalogue, truth = source_field
    catalogue.index(datastore, config=config_for(source_catalogue, method="counts-ratio"))
    counts, exposure = rate_per_offset(stored_pieces(catalogue))
    expected = truth.expected_counts(BINNING.energy_edges, BINNING.offset_edges, 1.0).sum(axis=0) * exposure
    bias = counts / expected - 1
    error = 1 / np.sqrt(expected)
    with capsys.disabled():
        print(
            "\ncounts-ratio bias per offset bin (%):",
            np.round(100 * bias, 1).tolist(),
            "+-",
            np.round(100 * error, 1).tolist(),
        )
    # The bins holding most of the source circle (0.5-1.0 deg) are far too high.
    assert np.all(bias[2:4] > 0.2) and np.all(bias[2:4] > 10 * error[2:4])
    assert np.all(np.abs(bias[5:]) < 4 * error[5:])  # beyond the circle both methods agree


def test_kept_plus_excluded_is_every_event_in_range(catalogue, source_field):
    datastore, source_catalogue, _ = source_field
    catalogue.index(datastore, config=config_for(source_catalogue))
    for obs_id, piece in stored_pieces(catalogue):
        path = datastore / "data" / f"run_{obs_id:06d}.fits.gz"
        events = fits.getdata(path, "EVENTS")
        header = fits.getheader(path, "EVENTS")
        offset = (
            SkyCoord(events["RA"] * u.deg, events["DEC"] * u.deg)
            .separation(SkyCoord(header["RA_PNT"] * u.deg, header["DEC_PNT"] * u.deg))
            .deg
        )
        in_range = (
            (events["ENERGY"] >= BINNING.e_min)
            & (events["ENERGY"] <= BINNING.e_max)
            & (offset >= BINNING.off_min)
            & (offset <= BINNING.off_max)
        )
        assert piece.n_events == in_range.sum()
        assert piece.excluded_counts.sum() > 0.8 * SOURCE.rate_per_s * 1800 * 0.9  # most source photons
        assert piece.counts.dtype == np.int64 and piece.ontime_s == 1800.0


def test_second_index_computes_nothing_and_new_binning_adds_pieces(catalogue, source_field):
    datastore, source_catalogue, _ = source_field
    config = config_for(source_catalogue)
    catalogue.index(datastore, config=config)
    with Session(catalogue.engine) as session:
        first_ids = set(session.scalars(sa.select(PieceRow.id)))
    again = catalogue.index(datastore, config=config)
    assert (again.unchanged, again.pieces) == (16, 0)

    finer = Binning(e_min=0.1, e_max=100, e_bins=24, off_min=0, off_max=2.5, off_bins=20)
    more = catalogue.index(datastore, config=config_for(source_catalogue, binnings=(BINNING, finer)))
    assert (more.unchanged, more.pieces) == (16, 16)
    with Session(catalogue.engine) as session:
        assert first_ids < set(session.scalars(sa.select(PieceRow.id)))  # old pieces untouched
    summary = PieceCache(catalogue.engine).summary()
    assert sorted(row["pieces"] for row in summary) == [16, 16]
    assert all(row["bytes_per_piece"] < 2000 for row in summary)


def test_changed_file_gets_new_pieces(catalogue, source_field, tmp_path):
    import shutil

    datastore, source_catalogue, _ = source_field
    copy = tmp_path / "copy"
    shutil.copytree(datastore, copy)
    config = config_for(source_catalogue)
    catalogue.index(copy, config=config)
    path = copy / "data" / "run_001003.fits.gz"
    with fits.open(path) as hdul:
        hdul["EVENTS"].data = hdul["EVENTS"].data[:100]
        hdul.writeto(path, overwrite=True)
    report = catalogue.index(copy, config=config)
    assert (report.updated, report.unchanged, report.pieces) == (1, 15, 1)
    pieces = dict(stored_pieces(catalogue))
    assert pieces[1003].n_events <= 100


def test_an_index_that_took_the_runs_for_new_keeps_the_pieces_another_just_wrote(
    catalogue, source_field, tmp_path, monkeypatch
):
    """Two indexes of a new datastore with two configs at once: each plans every run as new, and the
    second to write deleted the pieces the first had just committed (all but a few of 105 lost).
    Only the pieces of another file than the one indexed go; a changed file's go still."""
    import dataclasses
    import shutil

    from bkgdb.store.indexing import DatastoreIndexer

    datastore, source_catalogue, _ = source_field
    copy = tmp_path / "copy"
    shutil.copytree(datastore, copy)
    finer = Binning(e_min=0.1, e_max=100, e_bins=24, off_min=0, off_max=2.5, off_bins=20)
    catalogue.index(copy, config=config_for(source_catalogue))
    # The second index planned before the first committed: to it every run is new.
    plan = DatastoreIndexer._plan_run

    def planned_as_new(*args, **kwargs):
        job = plan(*args, **kwargs)
        return None if job is None else dataclasses.replace(job, known_sha256=None)

    with monkeypatch.context() as patched:
        patched.setattr(DatastoreIndexer, "_plan_run", staticmethod(planned_as_new))
        report = catalogue.index(copy, config=config_for(source_catalogue, binnings=(finer,)))
    assert report.pieces == 16
    assert sorted(row["pieces"] for row in PieceCache(catalogue.engine).summary()) == [16, 16]
    # A file that changed keeps no piece of its former content, of either binning.
    path = copy / "data" / "run_001003.fits.gz"
    with fits.open(path) as hdul:
        hdul["EVENTS"].data = hdul["EVENTS"].data[:100]
        hdul.writeto(path, overwrite=True)
    catalogue.index(copy, config=config_for(source_catalogue, binnings=(finer,)))
    assert sorted(row["pieces"] for row in PieceCache(catalogue.engine).summary()) == [15, 16]


def test_parallel_workers_give_the_same_pieces(db_url, source_field, tmp_path):
    from bkgdb.store.catalogue import RunCatalogue

    datastore, source_catalogue, _ = source_field
    serial = RunCatalogue.open(str(tmp_path / "serial.sqlite"))
    serial.index(datastore, config=config_for(source_catalogue), jobs=1)
    parallel = RunCatalogue.open(db_url)
    report = parallel.index(datastore, config=config_for(source_catalogue), jobs=2)
    assert report.pieces == 16
    for (id_a, a), (id_b, b) in zip(stored_pieces(serial), stored_pieces(parallel), strict=True):
        assert id_a == id_b
        assert np.array_equal(a.counts, b.counts) and np.array_equal(a.exposure_s, b.exposure_s)


def test_exclusions_and_cache_drop(catalogue, source_field):
    datastore, source_catalogue, _ = source_field
    catalogue.index(datastore, config=config_for(source_catalogue))
    catalogue.index(datastore, config=config_for(source_catalogue, method="counts-ratio"))
    cache = PieceCache(catalogue.engine)
    (listing, other) = cache.exclusions(1000)
    assert listing["regions"][0]["name"] == "Bright source"
    assert {listing["method"], other["method"]} == {"geometric", "counts-ratio"}
    summary = cache.summary()
    assert len(summary) == 2
    counts_ratio = next(row for row in summary if row["method"] == "counts-ratio")
    assert cache.drop(exclusion=counts_ratio["exclusion"]) == 16
    remaining = cache.summary()
    assert [row["method"] for row in remaining] == ["geometric"]
    # Plain data: the summary comes back unchanged through JSON (what --format json prints).
    assert json.loads(json.dumps(remaining)) == remaining
    with Session(catalogue.engine) as session:
        blobs = session.execute(sa.select(PieceRow.counts, PieceRow.excluded_counts, PieceRow.exposure_s)).all()
    (row,) = remaining
    assert row["pieces"] == len(blobs) == 16
    # As indexed: the counts and exposure a build sums are stored blocks (their bytes plus zlib's 11),
    # the excluded counts compressed.
    for counts, excluded, exposure in blobs:
        assert len(counts) == len(zlib.decompress(counts)) + 11 and len(exposure) == len(zlib.decompress(exposure)) + 11
        assert len(excluded) < len(zlib.decompress(excluded))
    assert row["bytes"] == sum(len(counts) + len(excluded) + len(exposure) for counts, excluded, exposure in blobs)
    assert row["bytes_per_piece"] == pytest.approx(row["bytes"] / 16, abs=0.05)
    # The 32 pieces shared one list of regions (one source in every field); dropping the last pieces
    # that use it removes it.
    with Session(catalogue.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(RegionSet)) == 1
    assert cache.drop(exclusion=row["exclusion"]) == 16
    with Session(catalogue.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(RegionSet)) == 0


OTHER_BINNING = Binning(e_min=0.1, e_max=100, e_bins=8, off_min=0, off_max=2.5, off_bins=5)


def pieces_of(catalogue, binning):
    """(pieces of ``binning``, those whose region set is stored, region sets) in the catalogue."""
    with Session(catalogue.engine) as session:
        of_binning = sa.select(sa.func.count()).select_from(PieceRow).join(BinningRow)
        of_binning = of_binning.where(BinningRow.hash == binning.hash)
        with_regions = of_binning.join(RegionSet, RegionSet.id == PieceRow.region_set_id)
        return (
            session.scalar(of_binning),
            session.scalar(with_regions),
            session.scalar(sa.select(sa.func.count()).select_from(RegionSet)),
        )


def wait_until_the_drop_waits(engine, timeout_s=10.0):
    """Until a drop waits for the lock an index holds: on PostgreSQL seen in ``pg_locks``; on SQLite
    (a writer waiting for the file's lock is not seen) half a second."""
    if engine.dialect.name != "postgresql":
        time.sleep(0.5)
        return
    waiting = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    deadline = time.monotonic() + timeout_s
    with engine.connect() as connection:
        while not connection.execute(waiting).scalar() and time.monotonic() < deadline:
            time.sleep(0.01)
            connection.rollback()  # a new snapshot for the next look


def test_a_drop_waits_for_the_batch_an_index_is_writing(catalogue, source_field, monkeypatch):
    # The index of one binning writes pieces that refer to the region sets of another's, which is
    # dropped meanwhile: the drop must neither delete those sets (on PostgreSQL it failed, once the
    # batch had committed) nor the index's pieces.
    datastore, source_catalogue, _ = source_field
    catalogue.index(datastore, config=config_for(source_catalogue))
    assert pieces_of(catalogue, BINNING) == (16, 16, 1)
    dropped: list = []

    def drop() -> None:
        try:
            dropped.append(PieceCache(catalogue.engine).drop(binning=BINNING.hash[:12]))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            dropped.append(exc)

    dropper = threading.Thread(target=drop)
    write = indexing._ResultWriter.write

    def write_while_dropped(self, *args):
        outcomes = write(self, *args)  # the batch's pieces are written, not yet committed
        if dropper.ident is None:  # the first batch (a slow machine may make more)
            dropper.start()
            wait_until_the_drop_waits(catalogue.engine)
        return outcomes

    monkeypatch.setattr(indexing._ResultWriter, "write", write_while_dropped)
    report = catalogue.index(datastore, config=config_for(source_catalogue, binnings=(OTHER_BINNING,)))
    dropper.join(timeout=60)
    assert dropped == [16] and report.pieces == 16
    assert pieces_of(catalogue, BINNING) == (0, 0, 1)
    assert pieces_of(catalogue, OTHER_BINNING) == (16, 16, 1)
    assert [row["binning"] for row in PieceCache(catalogue.engine).summary()] == [OTHER_BINNING.hash[:12]]


def test_an_index_goes_on_when_its_setting_is_dropped_before_its_first_batch(catalogue, source_field):
    # The setting exists, without pieces, from the start of the index; dropped then, it is made
    # again by the batch, which would otherwise refer to a deleted row.
    datastore, source_catalogue, _ = source_field
    cache = PieceCache(catalogue.engine)
    calls = []

    def progress(done: int, total: int) -> None:
        if not calls:
            assert cache.drop(binning=BINNING.hash[:12]) == 0
        calls.append(done)

    report = catalogue.index(datastore, config=config_for(source_catalogue), progress=progress)
    assert report.pieces == 16 and report.failed == 0
    assert pieces_of(catalogue, BINNING) == (16, 16, 1)


def test_a_drop_forgets_only_the_settings_it_drops(catalogue, source_field):
    datastore, source_catalogue, _ = source_field
    catalogue.index(datastore, config=config_for(source_catalogue))
    with Session(catalogue.engine) as session:  # a setting an index has just made: no pieces yet
        get_or_create_setting(session, BinningRow, OTHER_BINNING.hash, OTHER_BINNING.params)
        session.commit()
    assert PieceCache(catalogue.engine).drop(binning=BINNING.hash[:12]) == 16
    with Session(catalogue.engine) as session:
        assert session.scalars(sa.select(BinningRow.hash)).all() == [OTHER_BINNING.hash]


@pytest.mark.parametrize(
    ("high", "dtype"), [(0, "<u1"), (255, "<u1"), (256, "<u2"), (65535, "<u2"), (65536, "<i4"), (2**31, "<i8")]
)
def test_counts_are_stored_in_the_smallest_integer_type_that_holds_them(high, dtype):
    counts = np.array([[0, high], [3, 1]], dtype=np.int64)
    assert counts_dtype(counts, np.zeros_like(counts)) == dtype
    # The excluded counts are stored with the same dtype: they count too.
    assert counts_dtype(np.zeros_like(counts), counts) == dtype
    np.testing.assert_array_equal(decode_array(encode_array(counts, dtype), dtype, counts.shape), counts)


def test_pieces_of_several_dtypes_stack_to_the_same_values():
    rng = np.random.default_rng(3)
    arrays = [rng.poisson(scale, size=(4, 3)) for scale in (2, 300, 5, 90000, 1, 700)]
    dtypes = [counts_dtype(array) for array in arrays]
    assert set(dtypes) == {"<u1", "<u2", "<i4"}
    stacked = stacked_array(
        [encode_array(array, dtype) for array, dtype in zip(arrays, dtypes, strict=True)], dtypes, (4, 3)
    )
    assert stacked.dtype == np.int32
    np.testing.assert_array_equal(stacked, np.stack(arrays))
    alike = stacked_array([encode_array(array, "<u2") for array in arrays[:3:2]], ["<u2"] * 2, (4, 3))
    np.testing.assert_array_equal(alike, np.stack(arrays[:3:2]))


def test_the_small_arrays_a_build_sums_are_kept_uncompressed_in_their_zlib_stream():
    rng = np.random.default_rng(7)
    counts = rng.poisson(400.0, size=(20, 10))  # a 2D piece's counts: 400 bytes as <u2
    piece = BackgroundPiece(counts, rng.poisson(0.5, counts.shape), rng.uniform(0, 1800, 10), 1800.0, 1700.0)
    encoded = EncodedPiece.of(piece)
    assert encoded.counts_dtype == "<u2"
    summed = ((encoded.encoded_counts, counts, "<u2"), (encoded.encoded_exposure, piece.exposure_s, "<f8"))
    for blob, array, dtype in summed:
        raw = np.ascontiguousarray(array, dtype=dtype).tobytes()
        # One stored block: zlib's 2-byte header, 5 bytes of block header, the bytes, the checksum;
        # any zlib decoder reads it.
        assert blob[7:-4] == raw and zlib.decompress(blob) == raw
    # The excluded counts, which builds do not read, are compressed; so are arrays above the limit.
    assert len(encoded.encoded_excluded_counts) < counts.size
    big = rng.poisson(3.0, size=(20, 24, 24))
    assert big.size > STORED_MAX_BYTES
    assert len(encode_array(big, "<u1", store_small=True)) < big.size / 2
    # Pieces of older catalogues (compressed) and new ones (stored) stack together.
    older = [encode_array(array, "<u2") for array in (counts, counts + 1)]
    stacked = stacked_array([*older, encoded.encoded_counts], ["<u2"] * 3, counts.shape)
    np.testing.assert_array_equal(stacked, np.stack([counts, counts + 1, counts]))


def test_stored_arrays_are_read_at_once_with_their_checksums_verified():
    rng = np.random.default_rng(11)
    arrays = [rng.uniform(0, 1800, 10) for _ in range(50)]
    blobs = [encode_array(array, "<f8", store_small=True) for array in arrays]
    payloads = stored_payloads(blobs)
    assert payloads is not None and payloads.shape == (50, 80)
    assert payloads.tobytes() == b"".join(map(zlib.decompress, blobs))
    # Not all stored blocks of one length: left to zlib, one by one.
    assert stored_payloads([*blobs, encode_array(np.zeros(10), "<f8")]) is None
    assert stored_payloads([*blobs, encode_array(arrays[0][:9], "<f8", store_small=True)]) is None
    assert stored_payloads([]) is None
    # A flipped bit in the data: the checksum does not match; zlib then says which stream is broken.
    broken = bytearray(blobs[17])
    broken[30] ^= 4
    blobs[17] = bytes(broken)
    assert stored_payloads(blobs) is None
    with pytest.raises(zlib.error, match="incorrect data check"):
        stacked_array(blobs, ["<f8"] * 50, (10,))
    # A broken frame: zlib's header, the block's length and its complement.
    for position in (0, 1, 2, 3, 5):
        broken = bytearray(blobs[3])
        broken[position] ^= 1
        assert stored_payloads([*blobs[:3], bytes(broken)]) is None
    # Lengths up to about the largest zlib stores in one block, an empty array's included; all bytes 255 give
    # the largest sums of the checksum.
    for size in (0, 1, 255, 256, STORED_MAX_BYTES, 65000):
        raw = rng.integers(0, 256, size, dtype=np.uint8) if size < 65000 else np.full(size, 255, np.uint8)
        found = stored_payloads([zlib.compress(raw.tobytes(), 0)] * 3)
        assert found is not None and found.tobytes() == raw.tobytes() * 3


def test_the_arrays_a_build_sums_are_decoded_without_a_zlib_call_each(monkeypatch):
    rng = np.random.default_rng(12)
    arrays = [rng.poisson(30.0, size=(4, 3)) for _ in range(20)]
    dtypes = ["<u1" if index % 3 else "<u2" for index in range(20)]
    blobs = [encode_array(array, dtype, store_small=True) for array, dtype in zip(arrays, dtypes, strict=True)]

    def refused(blob, *args):
        raise AssertionError("inflated one by one")

    monkeypatch.setattr(pieces_module.zlib, "decompress", refused)
    stacked = stacked_array(blobs, dtypes, (4, 3))
    assert stacked.dtype == np.uint16
    np.testing.assert_array_equal(stacked, np.stack(arrays))


def test_arrays_of_another_size_are_not_stacked():
    blobs = [encode_array(np.ones((4, 3)), "<u1", store_small=True)] * 2
    with pytest.raises(BkgdbError, match=r"another size than \(4, 2\)"):
        stacked_array(blobs, ["<u1"] * 2, (4, 2))


def test_a_piece_travels_encoded_and_decodes_to_itself():
    rng = np.random.default_rng(5)
    counts = rng.poisson(3.0, size=(20, 24, 24))  # a 3D piece
    piece = BackgroundPiece(counts, rng.poisson(0.2, size=counts.shape), rng.uniform(0, 1800, (24, 24)), 1800.0, 1700.0)
    piece.regions.append({"name": "a star", "kind": "star", "ra": 1.0, "dec": 2.0, "radius": 0.35})
    encoded = EncodedPiece.of(piece)
    assert encoded.counts_dtype == "<u1" and (encoded.n_kept, encoded.ontime_s) == (counts.sum(), 1800.0)
    for name in ("counts", "excluded_counts", "exposure_s"):
        np.testing.assert_array_equal(getattr(encoded, name), getattr(piece, name))
    # What a worker sends the writing process: a few kB instead of the arrays.
    assert len(pickle.dumps(encoded)) < len(pickle.dumps(piece)) / 10
    assert piece_values(encoded, 1, 2, 3, None) == piece_values(piece, 1, 2, 3, None)


# -- real data -----------------------------------------------------------------------------------


def test_hess_dr1_pieces(catalogue, hess_dr1):
    from conftest import gammapy_data_path

    catalogs = gammapy_data_path("catalogs")
    exclusion = ExclusionSettings(
        gammacat=str(catalogs / "gammacat" / "gammacat.fits.gz"),
        hawc=str(catalogs / "3HWC.ecsv"),
        star_cat=str(catalogs / "Hipparcos_MAG8_1997.dat"),
    )
    config = BkgdbConfig(binnings=[Binning()], exclusion=exclusion)
    report = catalogue.index(hess_dr1, config=config, jobs=2)
    assert (report.new, report.pieces, report.failed) == (105, 105, 0)

    pieces = dict(stored_pieces(catalogue))
    assert len(pieces) == 105
    binning = Binning()
    for run in catalogue.select_runs():
        # Kept + excluded = every event in the binning's range, counted independently with astropy
        # in the file's own frame (FK5 for H.E.S.S.), for every run.
        events = fits.getdata(run.file_path, "EVENTS")
        header = fits.getheader(run.file_path, "EVENTS")
        offset = (
            SkyCoord(events["RA"] * u.deg, events["DEC"] * u.deg)
            .separation(SkyCoord(header["RA_PNT"] * u.deg, header["DEC_PNT"] * u.deg))
            .deg
        )
        energy = events["ENERGY"]
        in_range = (
            (energy >= binning.e_min)
            & (energy <= binning.e_max)
            & (offset >= binning.off_min)
            & (offset <= binning.off_max)
        )
        assert pieces[run.obs_id].n_events == in_range.sum(), run.obs_id

    cache = PieceCache(catalogue.engine)
    for obs_id in (23523, 23526, 23559, 23592):
        crab = {region["name"] for region in cache.exclusions(obs_id)[0]["regions"]}
        assert "Crab nebula" in crab
        assert any(name.startswith("HIP ") for name in crab)  # the Crab field has bright stars
    assert np.all(pieces[23523].fraction < 1.0)
    # A field with a star: the star's circle removes events there.
    star = next(r for r in cache.exclusions(23523)[0]["regions"] if r["kind"] == "star")
    assert star["radius"] == pytest.approx(0.35)

    again = catalogue.index(hess_dr1, config=config)
    assert (again.unchanged, again.pieces) == (105, 0)
