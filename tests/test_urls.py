"""Secrets in hrefs never reach a message: userinfo and signed query parameters."""

import pytest

from stacchip_core.io.urls import redact, redact_text


@pytest.mark.parametrize("url, expected", [
    ("https://user:pass@example.com/a/b.tif", "https://REDACTED@example.com/a/b.tif"),
    (("https://b.s3.amazonaws.com/k.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2024&"
      "X-Amz-Signature=abc123"),
     ("https://b.s3.amazonaws.com/k.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&"
      "X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED")),
    ("https://acct.blob.core.windows.net/c/x.tif?st=2024-01-01&se=2024-01-02&sp=rl&sv=2021&sr=c&sig=Zm9v%2B",
     "https://acct.blob.core.windows.net/c/x.tif?st=2024-01-01&se=REDACTED&sp=REDACTED&sv=REDACTED&sr=c&sig=REDACTED"),
    ("s3://bucket/key.tif", "s3://bucket/key.tif"),
    ("/data/a.tif", "/data/a.tif"),
    ("https://example.com/a.tif?version=2", "https://example.com/a.tif?version=2"),
])
def test_redact(url, expected):
    assert redact(url) == expected


def test_redact_text_finds_urls_and_escapes_newlines():
    text = "cannot read https://u:p@h/x.tif?sig=s3cr3t\nINFO forged line"
    out = redact_text(text)
    assert out == "cannot read https://REDACTED@h/x.tif?sig=REDACTED\\nINFO forged line"
    assert "s3cr3t" not in out and "\n" not in out
