"""Store keys built from catalog data or options, kept under their prefix.

Every key stacchip writes is ``/``-joined *segments*; a segment that comes from outside
(an item id from a catalog, a file name from an href) goes through `segment`, and a
name the user gives as an option (``prechip --version``, a platform name) through
`name`. The rules:

- catalog data is **encoded**, so every real item still processes: ``%``, ``/``, ``\\``
  and control characters (NUL, newline…) become ``%XX`` (as in a URL), and a segment that
  is exactly ``.`` or ``..`` becomes ``%2E`` / ``%2E%2E``. An id without those characters
  (every id seen in Earth Search, Planetary Computer, USGS, LINZ) keeps its key unchanged.
- options are **rejected** (`UnsafeKeyError`): ``--version
  ../..`` is a mistake, not data to preserve.
- `join` checks the finished key once more (no empty, ``.`` or ``..`` part, no
  leading ``/``), so neither a local path nor an S3 key can leave the store's prefix.
"""

from __future__ import annotations

import re

from stacchip_core.errors import UnsafeKeyError

# characters that change what a key means: separators, the escape itself, controls
_UNSAFE = re.compile(r"[%/\\\x00-\x1f\x7f]")


def segment(text: str, what: str = "key segment") -> str:
    """``text`` as one safe key segment (encoded, see the module doc).

    Args:
        text: The value to encode (converted with ``str``).
        what: What the segment is, for the error message.

    Returns:
        The percent-encoded segment, free of separators and control characters.

    Raises:
        UnsafeKeyError: If ``text`` is empty.
    """
    text = str(text)
    if text == "":
        raise UnsafeKeyError(f"{what} is empty")
    if text in (".", ".."):
        return "%2E" * len(text)
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode()), text)


def name(text: str, what: str) -> str:
    """``text`` unchanged if it is a safe single segment, else an UnsafeKeyError.

    Args:
        text: The name to check (converted with ``str``).
        what: What the name is, for the error message.

    Returns:
        ``text`` as a string, unchanged.

    Raises:
        UnsafeKeyError: If ``text`` is empty, ``.``, ``..`` or holds an unsafe character.
    """
    text = str(text)
    if text == "" or text in (".", "..") or _UNSAFE.search(text):
        from stacchip_core.io.urls import redact_text

        raise UnsafeKeyError(f"{what} {redact_text(repr(text))} is not a plain name "
                             "(no '/', '\\', '%', control characters, '.' or '..')")
    return text


def join(*parts: str) -> str:
    """``parts`` joined by ``/``; an UnsafeKeyError if the result could leave its prefix.

    Args:
        *parts: The key's segments, in order.

    Returns:
        The joined key.

    Raises:
        UnsafeKeyError: If the key is absolute, has empty, ``.`` or ``..`` segments, a
            backslash or a NUL.
    """
    key = "/".join(parts)
    check(key)
    return key


def check(key: str) -> str:
    """``key`` if it stays under the store's prefix, else an UnsafeKeyError.

    Args:
        key: A ``/``-separated key relative to a store's prefix.

    Returns:
        ``key`` unchanged.

    Raises:
        UnsafeKeyError: If the key is absolute, has empty, ``.`` or ``..`` segments, a
            backslash or a NUL.
    """
    pieces = key.split("/")
    if (
        key.startswith("/")
        or "\\" in key
        or any(p in ("", ".", "..") for p in pieces)
        or "\x00" in key
    ):
        from stacchip_core.io.urls import redact_text

        raise UnsafeKeyError(f"key {redact_text(repr(key))} would leave its prefix")
    return key
