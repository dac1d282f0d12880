"""The text of the QR code in a PNG image (an SZM card's QR, as the issuer writes it).

PNG is decoded by ``pypng`` (pure Python, already needed to write QR codes) and the code
found by ``zxing-cpp`` (a wheel: no system package). Only the red channel of the RGBA
pixels is given to the reader: a printed or rendered QR code is black on white, and one
channel keeps the copy small.
"""

from __future__ import annotations

from typing import Final

import png
import zxingcpp

from farthing.core.errors import ErrorCode, MalformedMessage

__all__ = ["read_qr_png"]

_MAX_PIXELS: Final = 40_000_000  # a 40-megapixel photo; beyond that, refuse before decoding


def read_qr_png(data: bytes) -> str:
    """The text of the one QR code in ``data`` (a PNG file). MalformedMessage in words if
    the file is not a PNG image or holds no QR code, or more than one."""
    try:
        reader = png.Reader(bytes=data)
        width, height, rows, _ = reader.asRGBA8()
        if width * height > _MAX_PIXELS:
            raise MalformedMessage("the image is too large", code=ErrorCode.OVERSIZED)
        pixels = bytearray()
        for row in rows:
            pixels.extend(row)
    except png.Error:
        raise MalformedMessage("the file is not a PNG image", code=ErrorCode.MALFORMED) from None
    red = memoryview(bytes(pixels[0::4])).cast("B", (height, width))
    found = zxingcpp.read_barcodes(
        red, formats=zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
    )
    texts = [barcode.text for barcode in found if barcode.valid]
    if not texts:
        raise MalformedMessage("the image holds no readable QR code", code=ErrorCode.MALFORMED)
    if len(texts) > 1:
        raise MalformedMessage(
            f"the image holds {len(texts)} QR codes; give one card's image",
            code=ErrorCode.MALFORMED,
        )
    return str(texts[0])
