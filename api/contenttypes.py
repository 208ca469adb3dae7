"""Which processor takes an upload, decided from its bytes (libmagic MIME), never from its name."""

from __future__ import annotations

from urllib.parse import urlsplit

from api.errors import UnsupportedContent
from protocol.states import ContentType

#: MIME types (besides audio/*, video/*, image/*, text/*) the document processor reads.
DOCUMENT_MIMES = frozenset(
    {
        "application/pdf",
        "application/msword",
        "application/rtf",
        "application/xhtml+xml",
        "application/epub+zip",
    }
)
DOCUMENT_PREFIXES = (
    "application/vnd.openxmlformats-officedocument.",
    "application/vnd.ms-",
    "application/vnd.oasis.opendocument.",
)
#: libmagic guesses these from weak evidence (random bytes often "are" TGA): not trusted.
UNTRUSTED = frozenset({"image/x-tga", "application/octet-stream", "inode/x-empty"})
#: Text formats that are data, not documents a reader would index.
TEXT_NOT_DOCUMENT = frozenset({"text/x-shellscript"})
#: A declared type may differ from the detected one within these groups (an .m4a is "video/mp4").
COMPATIBLE = {
    ContentType.audio: {ContentType.audio, ContentType.video},
    ContentType.video: {ContentType.video, ContentType.audio},
    ContentType.document: {ContentType.document},
    ContentType.web: {ContentType.document},
    ContentType.image: {ContentType.image},
}
YOUTUBE_HOSTS = ("youtube.com", "youtu.be", "youtube-nocookie.com")


def content_type_for_mime(mime: str, head: bytes = b"") -> ContentType | None:
    """Map a libmagic MIME type to the processor that reads it, or None."""
    mime = mime.lower().split(";")[0].strip()
    if mime in UNTRUSTED:
        return None
    major = mime.split("/")[0]
    if major in ("audio", "video", "image"):
        return ContentType(major)
    if mime in DOCUMENT_MIMES or mime.startswith(DOCUMENT_PREFIXES):
        return ContentType.document
    if mime == "application/zip" and b"[Content_Types].xml" in head:
        return ContentType.document  # an Office file whose parts libmagic did not reach
    if major == "text" and mime not in TEXT_NOT_DOCUMENT:
        return ContentType.document  # plain text, Markdown, HTML, CSV
    return None


def resolve_upload_type(declared: ContentType | None, mime: str, head: bytes) -> ContentType:
    """The content type of an upload: detected from the bytes, checked against the declared one."""
    detected = content_type_for_mime(mime, head)
    if declared is ContentType.echo:
        return declared  # the test processor takes any bytes
    if declared is ContentType.youtube:
        raise UnsupportedContent("youtube jobs take a URL, not a file", code="unsupported_content")
    if detected is None:
        raise UnsupportedContent(
            f"the file's bytes ({mime}) match no processor (audio, video, image, document)",
            code="unsupported_content",
        )
    if declared is None:
        return detected
    if detected not in COMPATIBLE.get(declared, {declared}):
        raise UnsupportedContent(
            f"content_type {declared.value!r} does not match the file's bytes ({mime}, a {detected.value})",
            code="content_mismatch",
        )
    return declared


# The processors that fetch a job's URL with the owner's site cookies (worker/processors/web.py,
# youtube.py): only their claims read and hand out cookies.
COOKIE_TYPES = frozenset({ContentType.web.value, ContentType.youtube.value})


def content_type_for_url(url: str) -> ContentType:
    """URL jobs without a declared type: youtube for YouTube hosts, else web."""
    host = (urlsplit(url).hostname or "").lower()
    if any(host == h or host.endswith("." + h) for h in YOUTUBE_HOSTS):
        return ContentType.youtube
    return ContentType.web
