"""Content type from bytes (libmagic), checked against the declared one; URL jobs by host."""

from __future__ import annotations

import pytest

from api.contenttypes import content_type_for_mime, content_type_for_url, resolve_upload_type
from api.errors import UnsupportedContent
from api.filestore import detect_mime
from protocol.states import ContentType as CT


@pytest.mark.parametrize(
    ("mime", "expected"),
    [
        ("audio/x-wav", CT.audio),
        ("video/mp4", CT.video),
        ("image/png", CT.image),
        ("application/pdf", CT.document),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", CT.document),
        ("application/msword", CT.document),
        ("text/html", CT.document),
        ("text/plain", CT.document),
        ("text/markdown", CT.document),
        ("application/octet-stream", None),
        ("application/x-executable", None),
        ("image/x-tga", None),
        ("application/zip", None),
    ],
)
def test_mime_map(mime: str, expected: CT | None) -> None:
    assert content_type_for_mime(mime) == expected


def test_office_zip_without_libmagic_help() -> None:
    assert content_type_for_mime("application/zip", b"PK\x03\x04....[Content_Types].xml") == CT.document


def test_detect_from_bytes_not_name() -> None:
    assert detect_mime(b"%PDF-1.4\n...") == "application/pdf"
    assert resolve_upload_type(None, detect_mime(b"%PDF-1.4\n..."), b"") == CT.document
    assert resolve_upload_type(None, "text/plain", b"") == CT.document
    assert resolve_upload_type(CT.audio, "video/mp4", b"") == CT.audio  # an .m4a looks like video/mp4
    assert resolve_upload_type(CT.echo, "application/octet-stream", b"") == CT.echo
    with pytest.raises(UnsupportedContent) as err:
        resolve_upload_type(None, "application/octet-stream", b"")
    assert err.value.code == "unsupported_content"
    with pytest.raises(UnsupportedContent) as err:
        resolve_upload_type(CT.image, "application/pdf", b"")
    assert err.value.code == "content_mismatch"
    with pytest.raises(UnsupportedContent):
        resolve_upload_type(CT.youtube, "video/mp4", b"")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://www.youtube.com/watch?v=x", CT.youtube),
        ("https://youtube.com/shorts/x", CT.youtube),
        ("https://m.youtube.com/watch?v=x", CT.youtube),
        ("https://youtu.be/x", CT.youtube),
        ("https://notyoutube.com/x", CT.web),
        ("https://example.org/a.html", CT.web),
    ],
)
def test_url_types(url: str, expected: CT) -> None:
    assert content_type_for_url(url) == expected
