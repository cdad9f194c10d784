"""Survey readers (slamjax.io) on real survey files and on files written here to the published layouts."""

import dataclasses
import hashlib
import logging

import numpy as np
import pytest
from astropy.io import fits

import slamjax as sj
from slamjax import io as sio
from slamjax import preprocess as pp
from slamjax.io._common import join_segments

from .conftest import shared_file

C_KMS = 299792.458
APOGEE_BAD_BITS = 0xFF  # PIXMASK bits 0-7: BADPIX CRPIX SATPIX UNFIXABLE BADDARK BADFLAT BADERR NOSKY

LRS_DR6 = "spec-57287-KP193637N444141V03_sp10-161.fits.gz"
LRS_DR7 = "spec-58397-EG014118N254444M01_sp03-031.fits"
MRS = "med-58408-TD230151N343645T01_sp01-015.fits"
APSTAR_3V = "apStar-dr17-2M17335483-2753043.fits"
APSTAR_1V = "apStar-dr17-2M19485057+5005279.fits"
APVISIT_A = "apVisit-r13-5095-55844-128.fits"
APVISIT_B = "apVisit-r13-9518-57729-104.fits"


def real(name):
    return shared_file("survey_files", name)


# Values read from the files (astropy, headers and arrays); wavelengths in Å (vacuum), RV km/s.
EXPECTED = {
    LRS_DR6: dict(
        product="lamost_lrs",
        n_pixels=3909,
        wave=(3699.99, 9099.13),
        n_masked=0,
        id="359910161",
        rv=-0.00017162 * C_KMS,  # c * Z; HELIO_RV (9.85119) is the applied correction, not the star's RV
        snr={"u": 25.39, "g": 87.63, "r": 128.48, "i": 158.11, "z": 119.56},
        segments=[(0, 3909)],
        frame="heliocentric",
        header={"HELIO_RV": 9.85119, "DATA_V": "LAMOST DR6", "CLASS": "STAR"},
    ),
    LRS_DR7: dict(
        product="lamost_lrs",
        n_pixels=3909,
        wave=(3699.99, 9099.13),
        n_masked=48,
        id="677503031",
        rv=-6.4e-06 * C_KMS,
        snr={"u": 23.25, "g": 153.72, "r": 241.09, "i": 320.95, "z": 259.11},
        segments=[(0, 3909)],
        frame="heliocentric",
        header={"HELIO_RV": -9.40313, "DATA_V": "LAMOST DR7", "SUBCLASS": "G3"},
    ),
    MRS: dict(
        product="lamost_mrs",
        n_pixels=4101 + 3692,
        wave=(4893.95, 6850.62),
        n_masked=51 + 70,
        id="681001015",
        rv=None,
        snr={"B": 120.75, "R": 280.75},
        segments=[(0, 4101), (4101, 7793)],
        frame="heliocentric",
        header={"HELIO_RV": 9.20037, "VACUUM": True, "DATA_V": "LAMOST DR7"},
    ),
    APSTAR_3V: dict(
        product="apstar",
        n_pixels=8575,
        wave=(15100.80, 16999.81),
        n_masked=833,
        id="2M17335483-2753043",
        rv=15.68141048070993,
        snr=154.1551207216066,
        segments=[(0, 3430), (3430, 6208), (6208, 8575)],
        frame="rest",
        header={"NVISITS": 3, "FIELD": "000+02"},
    ),
    APSTAR_1V: dict(
        product="apstar",
        n_pixels=8575,
        wave=(15100.80, 16999.81),
        n_masked=912,
        id="2M19485057+5005279",
        rv=13.95981502532959,
        snr=137.4889561519403,
        segments=[(0, 3430), (3430, 6208), (6208, 8575)],
        frame="rest",
        header={"NVISITS": 1, "FIELD": "K04_083+13"},
    ),
    APVISIT_A: dict(
        product="apvisit",
        n_pixels=3 * 4096,
        wave=(15142.69, 16954.79),
        n_masked=200,
        id="2M01183798+8403419",
        rv=-33.1228381463,  # VHELIO
        snr=44.9672,
        segments=[(0, 4096), (4096, 8192), (8192, 12288)],
        frame="observed",
        header={"VRAD": -44.4206, "BC": 11.2977627448, "PLATE": "5095"},
    ),
    APVISIT_B: dict(
        product="apvisit",
        n_pixels=3 * 4096,
        wave=(15142.26, 16954.53),
        n_masked=214,
        id="2M00242666+5341178",
        rv=-82.0528346956,
        snr=89.5949,
        segments=[(0, 4096), (4096, 8192), (8192, 12288)],
        frame="observed",
        header={"VRAD": -67.472, "BC": -14.5807887971, "PLATE": "9518"},
    ),
}


def independent_bad_count(path, product):
    """Bad pixels counted straight from the file with astropy, following each reader's documented rule."""
    with fits.open(path) as h:
        if product == "lamost_lrs":
            flux, ivar, _, _, ormask = h[0].data.astype(float)
            return int(((ormask != 0) | (ivar <= 0) | ~np.isfinite(flux)).sum())
        if product == "lamost_mrs":
            n = 0
            for arm in ("COADD_B", "COADD_R"):
                d = h[arm].data
                n += int(((d["ORMASK"] != 0) | (d["IVAR"] <= 0) | ~np.isfinite(d["FLUX"])).sum())
            return n
        # APOGEE apStar (row 0) and apVisit (all chips)
        flux, err = (np.atleast_2d(h[i].data).astype(float) for i in (1, 2))
        bits = np.atleast_2d(h[3].data).astype(np.int64)
        if product == "apstar":
            flux, err, bits = flux[:1], err[:1], bits[:1]
        bad = ~np.isfinite(flux) | ~np.isfinite(err) | (err <= 0) | ((bits & APOGEE_BAD_BITS) != 0)
        return int(bad.sum())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_file(name):
    path = real(name)
    exp = EXPECTED[name]
    s = sio.read_spectrum(path)
    assert isinstance(s, sio.Spectrum)
    assert s.product == exp["product"] == s.meta["product"]
    assert s.meta["path"] == str(path)
    assert s.wave.shape == s.flux.shape == s.ivar.shape == s.mask.shape == (exp["n_pixels"],)
    assert s.wave.dtype == s.flux.dtype == s.ivar.dtype == np.float64 and s.mask.dtype == bool
    assert s.wave[0] == pytest.approx(exp["wave"][0], abs=0.01)
    assert s.wave[-1] == pytest.approx(exp["wave"][1], abs=0.01)
    assert np.all(np.diff(s.wave) > 0)
    assert s.vacuum is True
    assert int(s.mask.sum()) == exp["n_masked"] == independent_bad_count(path, exp["product"])
    np.testing.assert_array_equal(s.mask, s.ivar == 0)
    assert np.all(np.isfinite(s.flux)) and np.all(s.ivar >= 0)
    assert s.id == exp["id"]
    if exp["rv"] is None:
        assert s.rv is None
    else:
        assert s.rv == pytest.approx(exp["rv"], rel=1e-9)
    if isinstance(exp["snr"], dict):
        assert s.snr == pytest.approx(exp["snr"])
    else:
        assert s.snr == pytest.approx(exp["snr"], rel=1e-12)
    assert s.meta["segments"] == exp["segments"]
    assert s.meta["frame"] == exp["frame"]
    for key, value in exp["header"].items():
        assert s.meta["header"][key] == (pytest.approx(value) if isinstance(value, float) else value)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_exactly_one_reader_identifies_each_real_file(name):
    with fits.open(real(name)) as hdul:
        hits = [product for product, identify, _ in sio.READERS if identify(hdul)]
    assert hits == [EXPECTED[name]["product"]]


def test_lamost_lrs_values_and_doppler_shift():
    path = real(LRS_DR7)
    s = sio.read_spectrum(path)
    raw = fits.getdata(path).astype(float)
    np.testing.assert_array_equal(s.wave, raw[2])
    np.testing.assert_array_equal(s.flux, raw[0])
    np.testing.assert_array_equal(s.ivar, raw[1])
    assert s.meta["doppler_shift"] == s.rv  # heliocentric wavelengths, heliocentric RV


def test_mrs_arms_joined_blue_then_red():
    path = real(MRS)
    s = sio.read_spectrum(path)
    assert s.meta["arms"] == ["COADD_B", "COADD_R"]
    with fits.open(path) as h:
        blue, red = h["COADD_B"].data, h["COADD_R"].data
        np.testing.assert_array_equal(s.flux[:4101], blue["FLUX"].astype(float))
        np.testing.assert_array_equal(s.flux[4101:], red["FLUX"].astype(float))
        np.testing.assert_allclose(s.wave[4101], 10 ** red["LOGLAM"][0].astype(float), rtol=1e-12)
    assert s.wave[4100] == pytest.approx(5378.48, abs=0.01)
    assert s.wave[4101] == pytest.approx(6292.45, abs=0.01)


def test_apvisit_chips_reversed_to_increasing_wavelength():
    path = real(APVISIT_A)
    s = sio.read_spectrum(path)
    assert s.meta["chips"] == [2, 1, 0]  # the file stores chips red -> blue
    assert s.meta["doppler_shift"] == pytest.approx(-44.4206)
    assert s.meta["visit"] == "5095-55844-128"
    with fits.open(path) as h:
        flux, wave = h[1].data.astype(float), h[4].data
        np.testing.assert_array_equal(s.flux, np.concatenate([flux[2][::-1], flux[1][::-1], flux[0][::-1]]))
        np.testing.assert_array_equal(s.wave[:4096], wave[2][::-1])
        np.testing.assert_array_equal(s.flux[8192:], flux[0][::-1])
    # chip gaps stay gaps: no pixel of the blue chip reaches the green chip
    assert s.wave[4095] == pytest.approx(15810.30, abs=0.01)
    assert s.wave[4096] == pytest.approx(15857.26, abs=0.01)


def test_apstar_single_visit_row0_and_ivar():
    path = real(APSTAR_1V)
    s = sio.read_spectrum(path)
    assert s.meta["nvisits"] == 1
    with fits.open(path) as h:
        err = h[2].data[0]
        good = ~s.mask
        np.testing.assert_allclose(s.ivar[good], 1.0 / err[good] ** 2, rtol=1e-12)
        gaps = np.isnan(h[1].data[0])
    assert int(gaps.sum()) == s.meta["n_nonfinite_flux"] == 774  # chip gaps are NaN in DR17 apStar
    assert np.all(s.mask[gaps]) and np.all(s.flux[gaps] == 0.0)


def test_apstar_chip_segments_split_inside_the_chip_gaps(caplog):
    """apStar's common grid is gapless, but the reader records the three chips; a per-chip continuum
    then absorbs a different scale on each chip exactly, and ``segments=None`` says what it misses."""
    for name in (APSTAR_3V, APSTAR_1V):
        s = sio.read_spectrum(real(name))
        segs = s.meta["segments"]
        assert len(segs) == 3 and segs[0][0] == 0 and segs[-1][1] == s.n_pixels
        for (_, stop), (start, _) in zip(segs[:-1], segs[1:]):
            assert stop == start and np.all(s.mask[stop - 60 : stop + 60])  # well inside a run of bad pixels
    cpix = np.ones(s.n_pixels, bool)
    scale = np.concatenate([np.full(b - a, f) for (a, b), f in zip(segs, (1.0, 1.4, 0.7))])
    ref, ref_iv, _ = pp.normalize_chebyshev(s.wave, s.flux, s.ivar, cpix, segments=segs)
    f, iv, _ = pp.normalize_chebyshev(s.wave, s.flux * scale, s.ivar / scale**2, cpix, segments=segs)
    good = ref_iv > 0
    assert good.sum() > 7000
    np.testing.assert_allclose(f[good], ref[good], rtol=1e-8)
    with caplog.at_level(logging.WARNING, logger="slamjax"):
        f1, _, _ = pp.normalize_chebyshev(s.wave, s.flux * scale, s.ivar / scale**2, cpix)
    assert sum("bad in every spectrum" in r.getMessage() for r in caplog.records) == 2
    assert np.median(np.abs(f1[good] - ref[good])) > 0.02  # one polynomial cannot follow the steps


def test_reading_never_modifies_files():
    path = real(LRS_DR7)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    s = sio.read_spectrum(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert not s.flux.flags.writeable and not s.mask.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rv = 0.0  # type: ignore[misc]


def test_read_spectrum_accepts_open_hdulist():
    with fits.open(real(LRS_DR6)) as hdul:
        s = sio.read_spectrum(hdul)
        assert s.id == "359910161"
        assert s.meta["path"] == str(real(LRS_DR6))
        assert hdul[0].data.shape == (5, 3909)  # the caller's HDUList is left usable


# ---------------------------------------------------------------- layouts without a real file here
def _primary_header_without_data_keys(path):
    hdr = fits.getheader(path).copy()
    for key in ("NAXIS1", "NAXIS2"):
        del hdr[key]
    hdr["NAXIS"] = 0
    return hdr


def test_lamost_dr9_table_layout_round_trip(tmp_path):
    src = real(LRS_DR7)
    flux, ivar, wave, andmask, ormask = fits.getdata(src)
    ormask = ormask.astype(np.int32)
    ormask[1000:1010] = 4  # bad in some exposure -> masked by the ORMASK rule
    flux = flux.copy()
    flux[2000] = np.nan  # never kept silently
    n = wave.size
    cols = [
        fits.Column("FLUX", f"{n}E", array=flux[None]),
        fits.Column("IVAR", f"{n}E", array=ivar[None]),
        fits.Column("WAVELENGTH", f"{n}E", array=wave[None]),
        fits.Column("ANDMASK", f"{n}J", array=andmask.astype(np.int32)[None]),
        fits.Column("ORMASK", f"{n}J", array=ormask[None]),
    ]
    table = fits.BinTableHDU.from_columns(cols, name="COADD")
    out = tmp_path / "spec-dr9-layout.fits"
    fits.HDUList([fits.PrimaryHDU(header=_primary_header_without_data_keys(src)), table]).writeto(out)

    s = sio.read_spectrum(out)
    ref = sio.read_spectrum(src)
    assert s.product == "lamost_lrs_table"
    assert s.id == "677503031" and s.rv == pytest.approx(ref.rv) and s.snr == ref.snr
    np.testing.assert_array_equal(s.wave, ref.wave)
    expected_bad = (ivar == 0) | (ormask != 0) | ~np.isfinite(flux)
    assert int(s.mask.sum()) == int(expected_bad.sum()) == 48 + 10 + 1
    assert s.meta["n_nonfinite_flux"] == 1 and s.flux[2000] == 0.0 and s.ivar[2000] == 0.0
    np.testing.assert_array_equal(s.flux[~s.mask], ref.flux[~s.mask])


def _write_sdss_spec(path, *, with_spall=True, zwarning=0):
    rng = np.random.default_rng(3)
    n = 4600
    loglam = 3.5523 + 1e-4 * np.arange(n)
    flux = 10.0 + rng.normal(size=n)
    ivar = np.full(n, 4.0)
    ivar[:25] = 0.0
    and_mask = np.zeros(n, dtype=np.int32)
    and_mask[100:110] = 1 << 24  # e.g. BRIGHTSKY in all exposures -> bad
    and_mask[5] = 1 << 16  # already ivar = 0
    or_mask = np.zeros(n, dtype=np.int32)
    or_mask[2000:2050] = 1 << 16  # in some exposure only -> kept
    coadd = fits.BinTableHDU.from_columns(
        [
            fits.Column("flux", "E", array=flux),
            fits.Column("loglam", "E", array=loglam),
            fits.Column("ivar", "E", array=ivar),
            fits.Column("and_mask", "J", array=and_mask),
            fits.Column("or_mask", "J", array=or_mask),
            fits.Column("wdisp", "E", array=np.ones(n)),
            fits.Column("sky", "E", array=np.zeros(n)),
            fits.Column("model", "E", array=flux),
        ],
        name="COADD",
    )
    primary = fits.PrimaryHDU()
    primary.header["PLATEID"] = 3586
    primary.header["MJD"] = 55181
    primary.header["FIBERID"] = 1
    primary.header["PLUG_RA"] = 150.12345
    primary.header["PLUG_DEC"] = 2.54321
    hdus = [primary, coadd]
    if with_spall:
        hdus.append(
            fits.BinTableHDU.from_columns(
                [
                    fits.Column("PLATE", "J", array=[3586]),
                    fits.Column("MJD", "J", array=[55181]),
                    fits.Column("FIBERID", "J", array=[1]),
                    fits.Column("CLASS", "6A", array=["STAR"]),
                    fits.Column("Z", "E", array=[1.5e-4]),
                    fits.Column("SN_MEDIAN_ALL", "E", array=[23.5]),
                    fits.Column("ZWARNING", "J", array=[zwarning]),
                    fits.Column("SPECOBJID", "19A", array=["4037352744418750464"]),
                ],
                name="SPALL",
            )
        )
    fits.HDUList(hdus).writeto(path)
    return loglam, flux


def test_sdss_spec_round_trip(tmp_path):
    path = tmp_path / "spec-3586-55181-0001.fits"
    loglam, flux = _write_sdss_spec(path)
    s = sio.read_spectrum(path)
    assert s.product == "sdss_spec"
    assert s.id == "3586-55181-0001"
    assert s.vacuum is True
    np.testing.assert_allclose(s.wave, 10 ** loglam.astype(np.float32).astype(float), rtol=1e-12)
    assert s.wave[0] == pytest.approx(3567.0, abs=0.1)
    np.testing.assert_allclose(s.flux, flux.astype(np.float32))
    assert int(s.mask.sum()) == 25 + 10  # ivar == 0 plus and_mask; or_mask alone does not mask
    assert not s.mask[2000:2050].any()
    assert s.rv == pytest.approx(np.float32(1.5e-4) * C_KMS)
    assert s.snr == pytest.approx(23.5)
    assert s.meta["ra"] == pytest.approx(150.12345)


def test_sdss_spec_zwarning_is_kept_and_logged(tmp_path, caplog):
    """A redshift the SDSS pipeline flags (ZWARNING != 0) is still read, recorded and warned about."""
    path = tmp_path / "spec-3586-55181-0001.fits"
    _write_sdss_spec(path, zwarning=4)  # SMALL_DELTA_CHI2
    with caplog.at_level(logging.WARNING, logger="slamjax.io.sdss"):
        s = sio.read_spectrum(path)
    assert s.meta["zwarning"] == 4 and s.rv == pytest.approx(np.float32(1.5e-4) * C_KMS)
    assert "ZWARNING = 4" in caplog.text and str(path) in caplog.text
    caplog.clear()
    _write_sdss_spec(tmp_path / "ok.fits")
    with caplog.at_level(logging.WARNING, logger="slamjax.io.sdss"):
        ok = sio.read_spectrum(tmp_path / "ok.fits")
    assert ok.meta["zwarning"] == 0 and "ZWARNING" not in caplog.text


def test_sdss_spec_without_spall(tmp_path):
    path = tmp_path / "spec-nospall.fits"
    _write_sdss_spec(path, with_spall=False)
    s = sio.read_spectrum(path)
    assert s.product == "sdss_spec" and s.rv is None and s.snr is None and s.id == "3586-55181-0001"


def test_aspcapstar_round_trip(tmp_path):
    n = 8575
    rng = np.random.default_rng(5)
    flux = 1.0 - 0.2 * rng.random(n)
    err = np.full(n, 0.01)
    flux[:246] = 0.0  # outside ASPCAP's chip ranges: zero flux and error
    err[:246] = 0.0
    err[3000] = np.inf
    primary = fits.PrimaryHDU()
    primary.header["NVISITS"] = 4  # apStar keywords may be carried over: must still be aspcapStar
    spec_hdus = []
    for arr in (flux, err, flux):
        hdu = fits.ImageHDU(arr)
        hdu.header["CRVAL1"] = 4.179
        hdu.header["CDELT1"] = 6e-6
        hdu.header["CRPIX1"] = 1
        hdu.header["CTYPE1"] = "LOG-LINEAR"
        spec_hdus.append(hdu)
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column("APOGEE_ID", "18A", array=["2M00000002+7417074"]),
            fits.Column("SNR", "E", array=[187.25]),
            fits.Column("VHELIO_AVG", "E", array=[-12.5]),
            fits.Column("ASPCAPFLAG", "K", array=[0]),
        ]
    )
    path = tmp_path / "aspcapStar-dr17-2M00000002+7417074.fits"
    fits.HDUList([primary, *spec_hdus, table]).writeto(path)
    s = sio.read_spectrum(path)
    assert s.product == "aspcapstar"
    assert s.meta["normalised"] is True and s.meta["frame"] == "rest"
    assert s.id == "2M00000002+7417074"
    assert s.rv == pytest.approx(-12.5) and s.snr == pytest.approx(187.25)
    assert s.wave[0] == pytest.approx(15100.80, abs=0.01) and s.wave[-1] == pytest.approx(16999.81, abs=0.01)
    assert int(s.mask.sum()) == 247
    np.testing.assert_allclose(s.ivar[~s.mask], 1e4)


# ------------------------------------------------------------------------------------ error paths
def test_unknown_fits_layout_is_described(tmp_path):
    path = tmp_path / "odd.fits"
    hdu = fits.PrimaryHDU(np.zeros((3, 100), dtype=np.float32))
    hdu.header["TELESCOP"] = "SOMESCOPE"
    hdu.writeto(path)
    with pytest.raises(ValueError, match="unknown spectrum file layout") as info:
        sio.read_spectrum(path)
    msg = str(info.value)
    assert "(3, 100)" in msg and "PrimaryHDU" in msg and "SOMESCOPE" in msg and "odd.fits" in msg


def test_text_file_is_not_fits(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("wavelength flux\n5000 1.0\n")
    with pytest.raises(ValueError, match="not a readable FITS file"):
        sio.read_spectrum(path)


def test_truncated_fits_file(tmp_path):
    path = tmp_path / "truncated.fits"
    path.write_bytes(real(LRS_DR7).read_bytes()[:20000])
    with pytest.raises(ValueError, match="truncated"):
        sio.read_spectrum(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        sio.read_spectrum(tmp_path / "nope.fits")
    with pytest.raises(FileNotFoundError):
        sio.read_many([tmp_path / "nope.fits"])


def test_loader_rejects_other_layout():
    with pytest.raises(ValueError, match="not an APOGEE apStar"):
        sio.apogee.load_apstar(real(LRS_DR7))


# ---------------------------------------------------------------------------------------------- npz
def test_npz_returns_spectrum_set(tmp_path):
    wave = np.linspace(5000.0, 5100.0, 50)
    ss = sj.SpectrumSet(wave, np.ones((3, 50)), np.ones((3, 50)), ids=["a", "b", "c"])
    path = tmp_path / "set.npz"
    ss.save_npz(path)
    assert sio.npz.identify(path) and not sio.npz.identify(real(LRS_DR7))
    out = sio.read_spectrum(path)
    assert isinstance(out, sj.SpectrumSet) and out.n_spectra == 3
    np.testing.assert_array_equal(out.ids, ["a", "b", "c"])
    with pytest.raises(ValueError, match="npz"):
        sio.read_many([path])


# ----------------------------------------------------------------------------------------- read_many
def linear_resample(wave_in, flux, ivar, wave_out):
    """Test stand-in for slamjax.preprocess.resample: linear interpolation over good pixels."""
    good = ivar > 0
    f = np.interp(wave_out, wave_in[good], flux[good])
    iv = np.interp(wave_out, wave_in, ivar)
    iv[(wave_out < wave_in[0]) | (wave_out > wave_in[-1])] = 0.0
    return f, iv


def test_read_many_same_grid_stacks():
    # The DR6 and DR7 LRS files share the fixed LAMOST log-linear grid (identical wavelength rows).
    paths = [real(LRS_DR6), real(LRS_DR7)]
    ss = sio.read_many(paths)
    assert isinstance(ss, sj.SpectrumSet) and ss.flux.shape == (2, 3909)
    np.testing.assert_array_equal(ss.ids, ["359910161", "677503031"])
    assert ss.meta["paths"] == [str(p) for p in paths]
    np.testing.assert_allclose(ss.meta["rv"], [-0.00017162 * C_KMS, -6.4e-06 * C_KMS])
    np.testing.assert_allclose(ss.meta["snr"]["g"], [87.63, 153.72])
    assert ss.meta["vacuum"] is True and not ss.meta["resampled"].any()
    assert int((ss.ivar == 0).sum()) == 48

    twice = sio.read_many([real(APSTAR_3V)] * 2)
    assert twice.flux.shape == (2, 8575)
    np.testing.assert_array_equal(twice.flux[0], twice.flux[1])
    np.testing.assert_allclose(twice.meta["snr"], [154.1551207216066] * 2)


def test_read_many_resamples_onto_grid():
    paths = [real(LRS_DR6), real(LRS_DR7)]
    grid = np.linspace(4000.0, 8000.0, 2001)
    ss = sio.read_many(paths, wave=grid, resample=linear_resample)
    assert ss.flux.shape == (2, 2001) and ss.meta["resampled"].all()
    ref = sio.read_spectrum(real(LRS_DR6))
    np.testing.assert_allclose(ss.flux[0], np.interp(grid, ref.wave, ref.flux))
    assert np.all(ss.ivar[0] > 0)


def test_read_many_different_grids(tmp_path):
    lrs, mrs = real(LRS_DR7), real(MRS)
    with pytest.raises(ValueError, match="a common grid is needed"):
        sio.read_many([lrs, mrs])
    grid = np.linspace(5000.0, 5300.0, 1000)
    with pytest.raises(ValueError, match="no resample callable"):
        sio.read_many([lrs, mrs], wave=grid)
    ss = sio.read_many([lrs, mrs], wave=grid, resample=linear_resample)
    assert ss.flux.shape == (2, 1000)
    np.testing.assert_array_equal(ss.ids, ["677503031", "681001015"])
    assert ss.meta["products"] == ["lamost_lrs", "lamost_mrs"]
    assert np.isnan(ss.meta["rv"][1])  # MRS files carry no stellar RV


# ------------------------------------------------------------------------------------------ Spectrum
def test_spectrum_validation_and_copies():
    wave = np.array([1.0, 2.0, 3.0, 4.0])
    flux = np.array([1.0, np.nan, 3.0, 4.0])
    ivar = np.array([1.0, 1.0, 0.0, 2.0])
    mask = np.array([False, False, False, True])
    s = sio.Spectrum(wave, flux, ivar, mask, vacuum=False, id=7)
    np.testing.assert_array_equal(s.mask, [False, True, True, True])
    np.testing.assert_array_equal(s.ivar, [1.0, 0.0, 0.0, 0.0])
    assert s.flux[1] == 0.0 and s.meta["n_nonfinite_flux"] == 1 and s.id == "7"
    assert np.isnan(flux[1]) and ivar[3] == 2.0  # the caller's arrays are untouched
    assert sio.Spectrum(wave, np.ones(4), ivar, None, vacuum=True).mask.sum() == 1

    with pytest.raises(ValueError, match="shape mismatch"):
        sio.Spectrum(wave, np.ones(3), np.ones(3), None, vacuum=True)
    with pytest.raises(ValueError, match="strictly increasing"):
        sio.Spectrum(wave[::-1], np.ones(4), np.ones(4), None, vacuum=True)
    with pytest.raises(ValueError, match="negative"):
        sio.Spectrum(wave, np.ones(4), -np.ones(4), None, vacuum=True)
    with pytest.raises(ValueError, match="mask shape"):
        sio.Spectrum(wave, np.ones(4), np.ones(4), np.zeros(3, bool), vacuum=True)


def test_join_segments_rejects_overlap():
    a = (np.array([1.0, 2.0, 3.0]), np.zeros(3))
    b = (np.array([2.5, 4.0]), np.zeros(2))
    with pytest.raises(ValueError, match="overlap"):
        join_segments([a, b])
    (wave, _), bounds = join_segments([(np.array([6.0, 5.0]), np.zeros(2)), a])
    np.testing.assert_array_equal(wave, [1.0, 2.0, 3.0, 5.0, 6.0])
    assert bounds == [(0, 3), (3, 5)]


# ------------------------------------------------------------------------- review fixes: layouts
def _mrs_hdus():
    with fits.open(real(MRS)) as m:
        return m[0].header.copy(), m["COADD_B"].copy(), m["COADD_R"].copy()


def test_mrs_empty_arm_skipped_with_warning(tmp_path, caplog):
    header, blue, red = _mrs_hdus()
    empty_b = fits.BinTableHDU(blue.data[:0], header=blue.header, name="COADD_B")
    path = tmp_path / "med-emptyB.fits"
    fits.HDUList([fits.PrimaryHDU(header=header), empty_b, red]).writeto(path)
    with caplog.at_level("WARNING", logger="slamjax.io.lamost"):
        s = sio.read_spectrum(path)
    assert "COADD_B has no pixels" in caplog.text and str(path) in caplog.text
    full = sio.read_spectrum(real(MRS))
    (r0, r1) = full.meta["segments"][1]
    assert s.meta["arms"] == ["COADD_R"] and s.meta["segments"] == [(0, r1 - r0)]
    np.testing.assert_array_equal(s.wave, full.wave[r0:r1])
    np.testing.assert_array_equal(s.ivar, full.ivar[r0:r1])
    assert s.snr == {"R": pytest.approx(280.75)}
    empty_r = fits.BinTableHDU(red.data[:0], header=red.header, name="COADD_R")
    both = tmp_path / "med-empty.fits"
    fits.HDUList([fits.PrimaryHDU(header=header), empty_b, empty_r]).writeto(both)
    with pytest.raises(ValueError, match="no MRS arm has any pixels"):
        sio.read_spectrum(both)
    with pytest.raises(ValueError, match="no pixels"):
        join_segments([(np.zeros(0), np.zeros(0))])


def test_mrs_one_row_table_layout_is_mrs_not_lrs(tmp_path):
    """COADD_B / COADD_R as one-row tables of array cells (WAVELENGTH column): still MRS, both arms."""
    header, blue, red = _mrs_hdus()

    def one_row(hdu):
        d = hdu.data
        cols = [
            fits.Column(name=name, format=f"{len(d)}{fmt}", array=np.asarray(values)[None])
            for name, fmt, values in (
                ("FLUX", "E", d["FLUX"]),
                ("IVAR", "E", d["IVAR"]),
                ("WAVELENGTH", "D", 10.0 ** d["LOGLAM"].astype(np.float64)),
                ("ORMASK", "J", d["ORMASK"]),
            )
        ]
        return fits.BinTableHDU.from_columns(cols, name=hdu.name, header=fits.Header([("SNR", hdu.header["SNR"])]))

    path = tmp_path / "med-rows.fits"
    fits.HDUList([fits.PrimaryHDU(header=header), one_row(blue), one_row(red)]).writeto(path)
    with fits.open(path) as hdul:
        assert not sio.lamost.identify_lrs_table(hdul)
        assert [name for name, identify, _ in sio.READERS if identify(hdul)] == ["lamost_mrs"]
    s, ref = sio.read_spectrum(path), sio.read_spectrum(real(MRS))
    assert s.product == "lamost_mrs" and s.meta["arms"] == ["COADD_B", "COADD_R"]
    assert s.meta["segments"] == ref.meta["segments"] and s.n_pixels == ref.n_pixels == 7793
    np.testing.assert_allclose(s.wave, ref.wave, rtol=1e-12)
    np.testing.assert_array_equal(s.flux, ref.flux)
    np.testing.assert_array_equal(s.mask, ref.mask)


def test_aspcapstar_zero_flux_with_finite_error_is_bad(tmp_path):
    n = 8575
    flux = np.ones(n)
    err = np.full(n, 0.01)
    flux[3000:3100] = 0.0  # chip gap written as zero flux with a finite, positive error
    spec_hdus = []
    for arr in (flux, err, flux):
        hdu = fits.ImageHDU(arr)
        hdu.header.update(CRVAL1=4.179, CDELT1=6e-6, CRPIX1=1)
        spec_hdus.append(hdu)
    table = fits.BinTableHDU.from_columns(
        [fits.Column("APOGEE_ID", "18A", array=["2M00000000+0000000"]), fits.Column("ASPCAPFLAG", "K", array=[0])]
    )
    path = tmp_path / "aspcapStar-gap.fits"
    fits.HDUList([fits.PrimaryHDU(), *spec_hdus, table]).writeto(path)
    s = sio.read_spectrum(path)
    assert s.product == "aspcapstar"
    assert s.mask[3000:3100].all() and np.all(s.ivar[3000:3100] == 0)
    assert int(s.mask.sum()) == 100


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("T", True), ("F", False), ("true", True), (" False ", False), ("maybe", None)],
)
def test_lamost_logical_header_strings(tmp_path, value, expected):
    with fits.open(real(LRS_DR7)) as src:
        hdu = fits.PrimaryHDU(src[0].data.copy(), src[0].header.copy())
    hdu.header["VACUUM"] = value
    path = tmp_path / "spec-vac.fits"
    if expected is None:
        hdu.writeto(path)
        with pytest.raises(ValueError, match=r"spec-vac.fits: header keyword VACUUM = 'maybe' is not a logical"):
            sio.read_spectrum(path)
        return
    hdu.header["HELIO"] = value
    hdu.writeto(path)
    s = sio.read_spectrum(path)
    assert s.vacuum is expected
    assert s.meta["frame"] == ("heliocentric" if expected else "observed")


# --------------------------------------------------------------------- review fixes: read_many
def test_read_many_refuses_mixed_frames():
    files = [real(APSTAR_3V), real(APVISIT_A)]
    grid = sio.read_spectrum(files[0]).wave
    with pytest.raises(ValueError, match=r"mix wavelength frames \(rest: .*apStar.*; observed: .*apVisit"):
        sio.read_many(files, wave=grid, resample=linear_resample)
    # one frame: fine
    ss = sio.read_many([real(APVISIT_A), real(APVISIT_B)], wave=grid, resample=linear_resample)
    assert ss.meta["frame"] == ["observed", "observed"]


def test_read_many_masks_gaps_between_segments():
    """Whatever the resample callable does, grid pixels between two arms get ivar 0 and flux 1; a callable
    with a ``segments`` keyword gets the file's segments."""
    s = sio.read_spectrum(real(MRS))
    (_, stop), (start, _) = s.meta["segments"]
    grid = pp.log_lambda_grid(4900.0, 6850.0, 1e-5)
    gap = (grid > s.wave[stop - 1]) & (grid < s.wave[start])
    assert gap.sum() > 6000
    seen = []

    def spy(wave_in, flux, ivar, wave_out, segments=None):
        seen.append(segments)
        return np.ones(wave_out.size), np.ones(wave_out.size)  # claims data everywhere

    for resample in (linear_resample, spy, pp.resample):
        ss = sio.read_many([real(MRS)], wave=grid, resample=resample)
        assert np.all(ss.ivar[0, gap] == 0) and np.all(ss.flux[0, gap] == 1.0)
        assert np.sum(ss.ivar[0, ~gap] > 0) > 0.95 * np.sum(~gap)
    assert seen == [s.meta["segments"]]
