"""QR codes of SZM card codes as PNG bytes, with pure-Python ``qrcode`` + ``pypng`` (no PIL).

The QR code carries the compact form of the card code (:func:`farthing.core.cardcode.
to_compact`), which a wallet reads back with ``from_compact``. Error correction level M: a
printed voucher survives a smudge, and a 2048-bit BBS card still fits in one code.
"""

from __future__ import annotations

import io

import qrcode
import qrcode.constants
from qrcode.image.pure import PyPNGImage

__all__ = ["qr_png"]


def qr_png(text: str, *, box_size: int = 4, border: int = 4) -> bytes:
    """A PNG image of ``text`` as a QR code."""
    code = qrcode.QRCode(
        error_correction=qrcode.constants.ERROR_CORRECT_M,
        box_size=box_size,
        border=border,
        image_factory=PyPNGImage,
    )
    code.add_data(text)
    code.make(fit=True)
    buffer = io.BytesIO()
    code.make_image().save(buffer)
    return buffer.getvalue()
