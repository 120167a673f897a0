"""JPEG stream surgery for TIFF tiles: an abbreviated tile plus shared tables → one stream.

A JPEG-compressed TIFF tile is often an abbreviated stream: its quantisation and Huffman
tables sit once in the page's JPEGTables tag, and its colour space is given by the TIFF
photometric tag rather than by markers in the stream. Aperio, for one, stores RGB data with
component ids 0, 1, 2 and no Adobe marker, which a decoder left to guess reads as YCbCr;
OpenSlide forces the colour space from the photometric tag. :func:`complete_stream` builds a
stream that any baseline decoder (libjpeg-turbo, nvJPEG) decodes the same way: tables merged
in, the colour space stated by one JFIF marker (YCbCr) or Adobe APP14 marker (RGB, no
transform) in place of whatever APP0/APP14 markers the tile carried.
"""

from __future__ import annotations

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
_SOS = 0xDA
_APP0, _APP14 = 0xE0, 0xEE
# APP0 "JFIF" 1.01, no density, no thumbnail: the stream is YCbCr.
JFIF_APP0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
# APP14 "Adobe" version 100, flags 0, transform 0: three components are RGB, not converted.
ADOBE_RGB_APP14 = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def tile_damage(tile: bytes) -> str | None:
    """Why ``tile`` cannot be a whole JPEG stream (no SOI at its start, no EOI at its end:
    overwritten or truncated), or None. Damage inside the entropy-coded data is not seen."""
    if len(tile) < 4 or tile[:2] != SOI:
        return "not a JPEG stream (no SOI marker)"
    if tile[-2:] != EOI:
        return "truncated JPEG stream (no EOI marker)"
    return None


def header_segments(stream: bytes) -> tuple[list[bytes], bytes]:
    """Split a stream after its SOI into the marker segments before SOS and the rest (SOS,
    entropy-coded data, EOI). Raises ValueError on a malformed header."""
    segments, i = [], 2
    while True:
        while i + 1 < len(stream) and stream[i] == 0xFF and stream[i + 1] == 0xFF:
            i += 1  # fill bytes
        if i + 4 > len(stream) or stream[i] != 0xFF:
            raise ValueError("malformed JPEG header")
        if stream[i + 1] == _SOS:
            return segments, stream[i:]
        end = i + 2 + int.from_bytes(stream[i + 2:i + 4], "big")
        if end > len(stream):
            raise ValueError("malformed JPEG header")
        segments.append(stream[i:end])
        i = end


def complete_stream(tile: bytes, tables: bytes | None, ycbcr: bool) -> bytes:
    """A complete JPEG stream for a TIFF tile: SOI, one colour marker (JFIF when ``ycbcr``,
    else Adobe RGB), the shared ``tables`` (a JPEGTables tag value, or None), the tile's own
    header segments less APP0/APP14, then its scan. Raises ValueError on a damaged tile."""
    damage = tile_damage(tile)
    if damage:
        raise ValueError(damage)
    body = b""
    if tables:
        end = len(tables) - 2 if tables.endswith(EOI) else len(tables)
        body = tables[2:end] if tables.startswith(SOI) else tables[:end]
    segments, scan = header_segments(tile)
    kept = b"".join(s for s in segments if s[1] not in (_APP0, _APP14))
    return SOI + (JFIF_APP0 if ycbcr else ADOBE_RGB_APP14) + body + kept + scan
