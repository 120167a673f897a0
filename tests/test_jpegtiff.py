"""The direct JPEG-TIFF reader against OpenSlide: pixels, geometry, fallback, bad tiles,
compressed streams for a device decode, and features through the real extraction."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from wsi_ncmi.errors import SlideError
from wsi_ncmi.formats.featurefile import read_features
from wsi_ncmi.slides.access import rgba_to_rgb
from wsi_ncmi.slides.aperio import encode_tile, split_tables, write_aperio_like
from wsi_ncmi.slides.jpegtiff import (
    DirectTileReader,
    JpegTiffSlide,
    can_read_direct,
    inspect_slide,
)
from wsi_ncmi.slides.readers import open_reader
from wsi_ncmi.slides.reading import ReadSpec, TileReader, region_runs
from wsi_ncmi.slides.synthetic import write_synthetic_slide

FIXTURES = Path(os.environ.get("WSI_NCMI_OPENSLIDE_FIXTURES",
                               Path.home() / ".cache" / "wsi-ncmi" / "openslide-fixtures"))
W, H = 1000, 700  # level-0 size of the generated slides: no side a multiple of a tile


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    """Generic TIFFs (YCbCr JPEG, tiles 240/256/512, integer and non-integer downsamples), a
    generic TIFF with RGB JPEG tiles, and Aperio-style SVS files (RGB with Aperio's component
    ids and shared tables; YCbCr)."""
    folder = tmp_path_factory.mktemp("jpegtiff")
    out = {}
    for tile in (240, 256, 512):
        out[f"tiff{tile}"] = folder / f"t{tile}.tif"
        write_synthetic_slide(out[f"tiff{tile}"], W, H, seed=tile, lesion="dense",
                              downsamples=(1, 3), tile=tile)
    out["tiff_ds4"] = folder / "ds4.tif"
    write_synthetic_slide(out["tiff_ds4"], W, H, seed=4, lesion="glands", downsamples=(1, 4))
    out["tiff_rgb"] = folder / "rgb.tif"
    _rewrite(out["tiff256"], out["tiff_rgb"], tile=(256, 256), compression="jpeg",
             compressionargs={"outcolorspace": "RGB"}, subsampling=(1, 1))
    for photometric in ("rgb", "ycbcr"):
        out[f"svs_{photometric}"] = write_aperio_like(
            out["tiff256"], folder / f"aperio_{photometric}.svs", photometric=photometric)
    out["philips"] = folder / "philips.tiff"
    _write_philips_like(out["tiff_ds4"], out["philips"])
    return out


def _write_philips_like(src: Path, dst: Path, tile: int = 256) -> None:
    """A Philips-style TIFF of ``src``'s pyramid: levels padded to whole tiles (OpenSlide
    clips them by the XML pixel spacings), YCbCr tiles sharing JPEGTables, and one missing
    (zero-length) tile, as sparse Philips scans have."""
    ref = openslide.OpenSlide(str(src))
    spacings = "".join(
        '<DataObject ObjectType="PixelDataRepresentation"><Attribute Name="DICOM_PIXEL_SPACING">'
        f'"{0.00025 * d:g}" "{0.00025 * d:g}"</Attribute></DataObject>'
        for d in ref.level_downsamples)
    xml = ('<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
           '<Attribute Name="PIM_DP_SCANNED_IMAGES"><Array><DataObject ObjectType="DPScannedImage">'
           '<Attribute Name="PIM_DP_IMAGE_TYPE">WSI</Attribute>'
           f'<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE"><Array>{spacings}</Array>'
           '</Attribute></DataObject></Array></Attribute></DataObject>')
    with tifffile.TiffWriter(dst) as tw:
        for level, (w, h) in enumerate(ref.level_dimensions):
            pw, ph = -(-w // tile) * tile, -(-h // tile) * tile
            ds = ref.level_downsamples[level]
            tables, tiles = None, []
            for y in range(0, ph, tile):
                for x in range(0, pw, tile):
                    region = ref.read_region((round(x * ds), round(y * ds)), level, (tile, tile))
                    pixels = rgba_to_rgb(np.asarray(region))
                    pixels[h - y:], pixels[:, w - x:] = 0, 0  # black padding
                    t, data = split_tables(encode_tile(pixels, 80, rgb=False), aperio_ids=False)
                    tables = tables or t
                    tiles.append(b"" if (level, x, y) == (0, pw - tile, 0) else data)
            tw.write(iter(tiles), shape=(ph, pw, 3), dtype=np.uint8, tile=(tile, tile),
                     compression="jpeg", photometric="rgb", jpegtables=tables,
                     subsampling=(2, 2), subfiletype=1 if level else 0, metadata=None,
                     software="Philips DP v1.0", description=xml if level == 0 else None)


def _rewrite(src: Path, dst: Path, **write) -> None:
    """Copy a generated slide's pyramid into a new generic TIFF written with ``write``."""
    with tifffile.TiffFile(src) as tf, tifffile.TiffWriter(dst) as tw:
        for i, page in enumerate(tf.pages):
            tw.write(page.asarray(), photometric="rgb", subfiletype=1 if i else 0,
                     metadata=None, **write)


def _regions(width: int, height: int, tile: int, seed: int) -> list[tuple]:
    """Level-px regions (x, y, w, h): tile-aligned, straddling native tile borders, past the
    right/bottom edges, before the top-left corner, and random ones."""
    rng = np.random.default_rng(seed)
    fixed = [(0, 0, tile, tile), (tile - 37, tile - 11, 90, 70), (width - 50, 5, 120, 60),
             (7, height - 30, 80, 64), (width - 20, height - 20, 50, 50), (-30, -20, 100, 90)]
    rand = [(int(rng.integers(-40, width)), int(rng.integers(-40, height)),
             int(rng.integers(1, 300)), int(rng.integers(1, 300))) for _ in range(12)]
    return fixed + rand


def assert_parity(path: Path, seed: int = 0) -> JpegTiffSlide:
    """read_region of the direct reader equals OpenSlide's on every level, pixel for pixel,
    at level-0 locations that map to whole and to fractional level pixels."""
    layout = inspect_slide(path)
    assert not isinstance(layout, str), layout
    direct = JpegTiffSlide(layout)
    ref = openslide.OpenSlide(str(path))
    assert [(lv.width, lv.height) for lv in layout.levels] == list(ref.level_dimensions)
    assert [lv.downsample for lv in layout.levels] == list(ref.level_downsamples)
    fractional = 0
    for level, lv in enumerate(layout.levels):
        for x, y, w, h in _regions(lv.width, lv.height, lv.tile_w, seed + level):
            for loc in ((round(x * lv.downsample), round(y * lv.downsample)),
                        (round(x * lv.downsample) + 1, round(y * lv.downsample) + 2)):
                fractional += loc[0] / lv.downsample != int(loc[0] / lv.downsample)
                want = rgba_to_rgb(np.asarray(ref.read_region(loc, level, (w, h))))
                got = direct.read_region(loc, level, (w, h))
                np.testing.assert_array_equal(got, want, err_msg=f"{path.name} L{level} {loc}")
    assert fractional > 0  # the resampling path was exercised
    ref.close()
    return direct


@pytest.mark.parametrize("name", ["tiff240", "tiff256", "tiff512", "tiff_ds4", "tiff_rgb"])
def test_generic_tiff_pixels_equal_openslide(slides, name):
    direct = assert_parity(slides[name])
    assert direct.layout.vendor == "generic-tiff"
    assert direct.layout.levels[0].ycbcr == (name != "tiff_rgb")


def test_philips_tiff_pixels_equal_openslide(slides):
    """Levels clipped to OpenSlide's size (smaller than the padded TIFF pages), a missing
    tile painted white."""
    direct = assert_parity(slides["philips"], seed=9)
    assert direct.layout.vendor == "philips"
    lv1 = direct.layout.levels[1]  # a 256 × 256 page, 1024 × 768 / 4 for OpenSlide
    assert (lv1.width, lv1.height, lv1.tiles_down) == (256, 192, 1)
    corner = direct.read_region((W - 24, 0), 0, (24, 24))  # in the missing tile
    assert (corner == 255).all()
    below = direct.read_region((0, 4 * 160), 1, (8, 64))  # padding rows 175–191 kept, then
    assert (below[15:31] < 60).all() and (below[32:] == 255).all()  # clipped at 192


@pytest.mark.parametrize("photometric", ["rgb", "ycbcr"])
def test_aperio_svs_pixels_equal_openslide(slides, photometric):
    path = slides[f"svs_{photometric}"]
    direct = assert_parity(path, seed=5)
    assert direct.layout.vendor == "aperio" and direct.layout.levels[0].tables
    assert direct.layout.levels[0].tile_w == 240
    ref = openslide.OpenSlide(str(path))
    assert float(ref.properties["openslide.mpp-x"]) == 0.25 and "thumbnail" in ref.associated_images


def test_read_runs_equal_the_openslide_reader(slides):
    """Runs of adjacent tiles, cut up and resized, through the same reader interface."""
    path = slides["tiff_rgb"]
    ds = openslide.OpenSlide(str(path)).level_downsamples[1]
    coords = np.array([[x, y] for y in (0, 230, 460) for x in range(0, W, 180)])
    for spec in (ReadSpec(0, 256, 1.0, 224), ReadSpec(1, 60, ds, 60), ReadSpec(1, 60, ds, 48)):
        direct, ref = open_reader(path, spec, "direct"), open_reader(path, spec, "openslide")
        assert (direct.name, ref.name) == ("direct", "openslide")
        for a, b in region_runs(coords, spec.downsample, spec.read_size, 4):
            got, want = direct.read_run(coords[a:b]), ref.read_run(coords[a:b])
            assert got[1].all() and want[1].all()
            np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(direct.read_tile(*coords[5]), ref.read_tile(*coords[5]))


def test_each_native_tile_decoded_once_per_pass_with_bounded_cache(slides, monkeypatch):
    layout = inspect_slide(slides["tiff256"])
    slide = JpegTiffSlide(layout, cache_bytes=12 * 256 * 256 * 3)
    decoded = []
    real = JpegTiffSlide._decode
    monkeypatch.setattr(JpegTiffSlide, "_decode",
                        lambda self, *key: decoded.append(key) or real(self, *key))
    for y in range(0, H, 224):  # 224-px reads: each native tile row is read by two rows
        for x in range(0, W, 224 * 4):
            slide.read_region((x, y), 0, (224 * 4, 224))
    assert len(decoded) == len(set(decoded)) == layout.levels[0].tiles_across * 3
    assert slide._cached <= slide.cache_bytes


def _corrupt(src: Path, dst: Path, col: int, row: int, how: str) -> None:
    shutil.copy(src, dst)
    with tifffile.TiffFile(dst) as tf:
        page = tf.pages[0]
        index = row * -(-page.imagewidth // page.tilewidth) + col
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(dst, "r+b") as f:
        if how == "overwritten":
            f.seek(offset)
            f.write(b"\0" * count)
        else:  # truncated: the tail of the tile lost
            f.seek(offset + count // 2)
            f.write(b"\0" * (count - count // 2))


@pytest.mark.parametrize("how", ["overwritten", "truncated"])
def test_corrupt_tile_is_retried_once_then_reported_bad(slides, tmp_path, how, monkeypatch):
    path = tmp_path / "bad.tif"
    _corrupt(slides["tiff256"], path, col=1, row=1, how=how)
    spec = ReadSpec(0, 128, 1.0, 128)
    coords = np.array([[x, 256] for x in range(0, 768, 128)])  # tiles 2–3 lie in tile (1, 1)
    calls = []
    real = DirectTileReader._read
    monkeypatch.setattr(DirectTileReader, "_read",
                        lambda self, loc, size: calls.append(loc) or real(self, loc, size))
    reader = open_reader(path, spec, "direct")
    tiles, ok = reader.read_run(coords)
    assert ok.tolist() == [True, True, False, False, True, True]
    assert calls.count((256, 256)) == 2 and calls.count((384, 256)) == 2  # retried once
    want, want_ok = TileReader(path, spec).read_run(coords)
    assert want_ok.tolist() == ok.tolist()
    np.testing.assert_array_equal(tiles[ok], want[ok])


def _fallback_slides(folder: Path, src: Path) -> dict[str, Path]:
    out = {"deflate": folder / "deflate.tif", "lzw": folder / "lzw.tif",
           "uncompressed": folder / "raw.tif"}
    _rewrite(src, out["deflate"], tile=(256, 256), compression="zlib")
    _rewrite(src, out["lzw"], tile=(256, 256), compression="lzw")
    _rewrite(src, out["uncompressed"], tile=(256, 256))
    out["jpeg2000_svs"] = folder / "j2k.svs"  # Aperio's JPEG 2000 (compression 33005)
    with tifffile.TiffWriter(out["jpeg2000_svs"]) as tw:
        tw.write(tifffile.imread(src, key=0), tile=(256, 256), compression=33005,
                 photometric="rgb", metadata=None,
                 description=f"Aperio Image Library v12.0.15 \r\n{W}x{H} |MPP = 0.25")
    return out


def test_fallback_to_openslide_per_format(slides, tmp_path):
    spec = ReadSpec(0, 128, 1.0, 128)
    for kind, path in _fallback_slides(tmp_path, slides["tiff256"]).items():
        reason = can_read_direct(path)
        assert reason and "not JPEG" in reason, (kind, reason)
        reader = open_reader(path, spec, "auto")
        assert type(reader) is TileReader and reader.name == "openslide"
        assert reader.read_run(np.array([[0, 0], [128, 0]]))[1].all()
        with pytest.raises(SlideError, match=f"{path.name}.*direct reader cannot read it"):
            open_reader(path, spec, "direct")
    assert can_read_direct(slides["svs_rgb"]) is None
    assert open_reader(slides["svs_rgb"], spec, "auto").name == "direct"
    with pytest.raises(Exception, match="expected one of auto, direct, openslide"):
        open_reader(slides["svs_rgb"], spec, "fast")


def test_stripped_tiff_is_refused_by_both_readers(slides, tmp_path):
    """OpenSlide reads no TIFF whose first image is stored in strips; neither do we."""
    path = tmp_path / "strips.tif"
    _rewrite(slides["tiff256"], path, compression="jpeg")
    for choice in ("auto", "direct", "openslide"):
        with pytest.raises(SlideError, match="strips.tif"):
            reader = open_reader(path, ReadSpec(0, 128, 1.0, 128), choice)
            reader.read_tile(0, 0)


@pytest.mark.skipif(not (FIXTURES / "small.svs").is_file(),
                    reason=f"openslide-python test fixtures not in {FIXTURES} (they ship in the "
                    "openslide-python sdist: `pip download --no-binary :all: --no-deps "
                    "openslide-python`, copy tests/fixtures/* there, or set "
                    "WSI_NCMI_OPENSLIDE_FIXTURES)")
def test_openslide_python_fixtures():
    direct = assert_parity_small(FIXTURES / "small.svs")
    assert direct.layout.vendor == "aperio"
    assert "not JPEG" in can_read_direct(FIXTURES / "boxes.tiff")
    spec = ReadSpec(0, 16, 1.0, 16)
    for choice in ("direct", "openslide"):
        tiles, ok = open_reader(FIXTURES / "unreadable.svs", spec, choice).read_run(
            np.array([[0, 0]]))
        assert not ok.any()
    with pytest.raises(SlideError):
        can_read_direct(FIXTURES / "unopenable.tiff")


def assert_parity_small(path: Path) -> JpegTiffSlide:
    """Parity on a tiny slide: every region inside and around its single level."""
    layout = inspect_slide(path)
    direct, ref = JpegTiffSlide(layout), openslide.OpenSlide(str(path))
    for x, y, w, h in [(0, 0, 16, 16), (3, 5, 20, 9), (-4, -2, 30, 30), (15, 15, 4, 4)]:
        want = rgba_to_rgb(np.asarray(ref.read_region((x, y), 0, (w, h))))
        np.testing.assert_array_equal(direct.read_region((x, y), 0, (w, h)), want)
    return direct


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_complete_streams_decode_like_openslide_with_torchvision(slides):
    """The compressed path's streams (tables merged, colour space stated) decode with
    torchvision's libjpeg to the pixels the direct reader gets, and batched runs assemble
    into the tiles ``read_run`` returns."""
    torch = pytest.importorskip("torch")
    tv_io = pytest.importorskip("torchvision.io")
    from wsi_ncmi.slides.gpudecode import decode_runs

    for name in ("tiff256", "tiff_rgb", "svs_rgb", "svs_ycbcr"):
        slide = JpegTiffSlide(inspect_slide(slides[name]))
        for level, lv in enumerate(slide.layout.levels):
            for row in range(lv.tiles_down):
                for col in range(lv.tiles_across):
                    stream = slide.jpeg_stream(level, col, row)
                    got = tv_io.decode_jpeg(torch.frombuffer(bytearray(stream), dtype=torch.uint8),
                                            mode=tv_io.ImageReadMode.RGB)
                    np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(),
                                                  slide.tile(level, col, row))
        _check_batched_runs(slides[name], decode_runs, "cpu")


def _check_batched_runs(path: Path, decode_runs, device: str) -> None:
    from wsi_ncmi.slides.gpudecode import read_run_compressed

    spec = ReadSpec(0, 224, 1.0, 224)
    reader = open_reader(path, spec, "direct")
    coords = np.array([[x, y] for y in (0, 224, 600) for x in range(0, W, 224)])
    runs = region_runs(coords, 1.0, 224, 3)
    plans = [read_run_compressed(reader, coords[a:b]) for a, b in runs]
    want = np.concatenate([reader.read_run(coords[a:b])[0] for a, b in runs])
    np.testing.assert_array_equal(decode_runs(plans, device).cpu().numpy(), want)


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device (nvJPEG through torchvision)")
@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_batched_decode_on_cuda_equals_cpu_reader(slides):
    from wsi_ncmi.slides.gpudecode import decode_runs

    for name in ("tiff256", "svs_rgb", "svs_ycbcr"):
        _check_batched_runs(slides[name], decode_runs, "cuda")


@pytest.mark.parametrize("encoder", ["test_resnet",
                                     pytest.param("resnet50_trunc", marks=pytest.mark.slow)])
def test_extraction_features_equal_with_either_reader(tmp_path, encoder):
    """The real extract stage on a slide read below level 0 at a non-integer downsample
    (fractional level offsets), random encoder weights: the same features and settings key
    with OpenSlide and with ``auto`` (which picks the direct reader, in a worker process);
    the reader recorded in each feature file."""
    from wsi_ncmi.stages.extract import ExtractConfig, extract_slides
    from wsi_ncmi.stages.jobs import jobs_from_paths
    from wsi_ncmi.stages.tile import TileConfig, tile_slides

    src = tmp_path / "s.tif"
    write_synthetic_slide(src, 2100, 1100, seed=7, lesion="dense", downsamples=(1, 3))
    jobs = jobs_from_paths([src])
    assert tile_slides(jobs, tmp_path / "ws", TileConfig(target_mpp=0.75, tile_size=224,
                                                        min_tissue=0)).ok
    feats = {}
    for choice, workers in (("openslide", 0), ("auto", 1)):
        ws = tmp_path / choice
        shutil.copytree(tmp_path / "ws" / "tiles", ws / "tiles")
        config = ExtractConfig(encoder=encoder, random_weights=True, device="cpu",
                               workers=workers, precision="fp32", reader=choice)
        assert extract_slides(jobs, ws, config).ok
        feats[choice] = read_features(ws / "features" / encoder / "s.h5")
        assert feats[choice][2]["reader"] == ("direct" if choice == "auto" else choice)
    ref_feats, ref_coords, ref_attrs = feats["openslide"]
    assert ref_attrs["patch_level"] == 1 and len(ref_coords) == 3
    np.testing.assert_array_equal(feats["auto"][1], ref_coords)
    np.testing.assert_array_equal(feats["auto"][0], ref_feats)
    assert feats["auto"][2]["extract_key"] == ref_attrs["extract_key"]
