"""Text files users hand us (configs, CSV lists): UTF-8, a byte-order mark allowed (Excel
writes one), and anything else one line naming the file, the byte and the line."""

from __future__ import annotations

import codecs

from serwild.errors import UsageError


def decode_utf8(raw: bytes, what: str, error: type[UsageError] = UsageError) -> str:
    """``raw`` as text, without a leading BOM; ``what`` names the file in the error."""
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = raw[:at].count(b"\n") + 1
        raise error(f"{what} is not UTF-8 text (byte {at}, line {line}: {raw[at:at + 1]!r}); "
                    "save it as UTF-8") from None
