"""Choosing a slide's tile reader: the direct JPEG reader where it can read the slide, else
OpenSlide (both give the same pixels; :mod:`wsi_ncmi.slides.jpegtiff`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, SlideError
from .jpegtiff import DirectTileReader, inspect_slide
from .reading import ReadSpec, TileReader

READERS = ("auto", "direct", "openslide")


def open_reader(slide_path: Path, spec: ReadSpec, reader: str = "auto") -> TileReader:
    """The tile reader for a slide: ``direct`` (:mod:`wsi_ncmi.slides.jpegtiff`: OpenSlide's
    pixels at libjpeg-turbo speed, for JPEG-tiled generic TIFF, Aperio SVS and Philips TIFF;
    :class:`SlideError` naming the reason on any other slide), ``openslide``, or ``auto``
    (direct where it can read the slide, else OpenSlide). Its ``name`` says which."""
    if reader not in READERS:
        raise InputError(f"--reader {reader!r}: expected one of {', '.join(READERS)}")
    if reader == "openslide":
        return TileReader(slide_path, spec)
    layout = inspect_slide(slide_path)
    if not isinstance(layout, str):
        return DirectTileReader(layout, spec)
    if reader == "direct":
        raise SlideError(f"{slide_path}: the direct reader cannot read it: {layout}")
    return TileReader(slide_path, spec)
