"""URLs as stacchip shows them: credentials and signatures never reach a log, an error or a report.

Every message that names an href goes through `redact`. Catalog hrefs carry secrets in two
places: userinfo (``https://user:pass@host/…``) and signed query strings (S3 presigned
``X-Amz-Signature``/``X-Amz-Credential``, Azure SAS ``sig``/``se``/``sv``…, Google ``X-Goog-*``,
Planetary Computer SAS tokens). The host, path and harmless parameters stay, so a message still
says which object failed.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"

# query parameters that are, or carry, a secret (compared lower-case)
_SECRET_PARAMS = {
    "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    "x-goog-signature", "x-goog-credential",
    "signature", "sig", "token", "access_token", "sas", "key", "api_key", "apikey", "code",
    "password", "secret", "se", "sp", "sv", "skoid", "sktid", "skt", "ske", "sks", "skv",
}
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
# C0 and C1 control characters (ESC, CR, BEL, CSI U+009B, NEL U+0085...) and the Unicode
# line and paragraph separators: anything a terminal or str.splitlines() takes as a line break
# or a command. Tabs stay; newlines are escaped separately.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def redact(url: str) -> str:
    """``url`` without userinfo or secret query values (``user:pass@`` and ``sig=…`` become
    ``REDACTED``). Anything that is not a URL comes back unchanged.

    Args:
        url: A URL or any other string.

    Returns:
        The URL with userinfo and secret query values replaced, or ``url`` itself.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not (parts.netloc or parts.query):
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            query = urlencode(
                [(k, REDACTED if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="/:"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted and control characters (newlines included)
    escaped, so that a message built from catalog data is one honest line. Trailing
    whitespace goes (arrow ends some messages with a newline).

    Args:
        text: a message, a report line, a log record's text.

    Returns:
        One line: no character in it starts a new line or moves a terminal's cursor.
    """
    text = _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text.rstrip().replace("\n", "\\n"))
