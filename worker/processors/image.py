"""The ``image`` processor: dimensions, format, EXIF and tesseract OCR text as markdown + metadata.

GPS coordinates are personal data: they leave the worker only when the job asks for them
(``options.include_gps``). Captioning with a vision model is the server's business (workers never
call external services), so the metadata carries ``caption: null`` and ``caption_hook: "server"``
for the server to fill in after completion.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from worker.errors import BadInput, Unsupported
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
TAG_MAKE, TAG_MODEL, TAG_DATETIME, TAG_DATETIME_ORIGINAL = 0x010F, 0x0110, 0x0132, 0x9003


def _dms_to_degrees(dms: Any, ref: Any) -> float | None:
    try:
        deg, minutes, seconds = (float(x) for x in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = deg + minutes / 60 + seconds / 3600
    return round(-value if str(ref).upper() in ("S", "W") else value, 6)


def read_exif(image: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(camera/time fields, GPS position or None) from an image's EXIF."""
    exif = image.getexif()
    sub = exif.get_ifd(EXIF_IFD)
    fields: dict[str, Any] = {}
    for key, value in (
        ("camera_make", exif.get(TAG_MAKE)),
        ("camera_model", exif.get(TAG_MODEL)),
        ("datetime", sub.get(TAG_DATETIME_ORIGINAL) or exif.get(TAG_DATETIME)),
    ):
        if value:
            fields[key] = str(value).strip("\x00 ").strip()
    if "datetime" in fields:  # EXIF writes '2024:05:17 10:30:00'; ISO 8601 is what readers expect
        date, _, time = fields["datetime"].partition(" ")
        fields["datetime"] = date.replace(":", "-") + ("T" + time if time else "")
    gps_raw = exif.get_ifd(GPS_IFD)
    gps = None
    if gps_raw and 2 in gps_raw and 4 in gps_raw:
        lat, lon = _dms_to_degrees(gps_raw[2], gps_raw.get(1)), _dms_to_degrees(gps_raw[4], gps_raw.get(3))
        if lat is not None and lon is not None:
            gps = {"latitude": lat, "longitude": lon}
            if 6 in gps_raw:
                gps["altitude_m"] = round(float(gps_raw[6]), 1)
    return fields, gps


def _open(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()  # decode now: truncated/corrupt data fails here, not later in OCR
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise BadInput(f"the file is not a readable image: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"the image is corrupt or truncated: {exc}") from exc
    return image


def ocr(image: Any, lang: str) -> str:
    """Tesseract text of an image (orientation from EXIF applied first)."""
    import pytesseract
    from PIL import ImageOps

    missing = [code for code in lang.split("+") if code not in pytesseract.get_languages(config="")]
    if missing:
        raise Unsupported(f"tesseract on this worker has no language data for {', '.join(missing)}")
    upright = ImageOps.exif_transpose(image)
    if upright.mode not in ("RGB", "L"):
        upright = upright.convert("RGB")
    text: str = pytesseract.image_to_string(upright, lang=lang)
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _markdown(title: str, meta: dict[str, Any], text: str) -> str:
    lines = [f"# {title}", "", "## Image", ""]
    lines.append(f"- Format: {meta['format']}")
    lines.append(f"- Dimensions: {meta['width']} x {meta['height']} px")
    lines.append(f"- Colour mode: {meta['mode']}")
    exif = meta.get("exif", {})
    camera = " ".join(v for v in (exif.get("camera_make"), exif.get("camera_model")) if v)
    if camera:
        lines.append(f"- Camera: {camera}")
    if exif.get("datetime"):
        lines.append(f"- Taken: {exif['datetime']}")
    if meta.get("gps"):
        lines.append(f"- Location: {meta['gps']['latitude']}, {meta['gps']['longitude']}")
    lines += ["", "## Text in the image", ""]
    lines.append(text if text else "_No text found in the image._")
    return "\n".join(lines) + "\n"


class ImageProcessor:
    content_types = ("image",)

    def available(self) -> tuple[bool, str]:
        """Pillow, pytesseract and the tesseract program must be present."""
        for mod in ("PIL", "pytesseract"):
            if importlib.util.find_spec(mod) is None:
                return False, f"{mod} is not installed: pip install '.[worker,documents]'"
        if shutil.which("tesseract") is None:
            return False, "the tesseract program is not installed (apt install tesseract-ocr)"
        return True, ""

    def process(self, job: JobInput, config: ProcessorConfig) -> ProcessResult:
        """Describe the image and OCR its text."""
        if job.path is None:
            raise BadInput("an image job needs a file")
        name = job.file_name or job.path.name
        job.progress(0.05, "reading image")
        image = _open(job.path)
        exif, gps = read_exif(image)
        meta: dict[str, Any] = {
            "format": image.format,
            "width": image.width,
            "height": image.height,
            "mode": image.mode,
            "frames": getattr(image, "n_frames", 1),
            "exif": exif,
            "caption": None,
            "caption_hook": "server",  # the server may add a vision-model caption after completion
        }
        if gps is not None and job.options.get("include_gps"):
            meta["gps"] = gps
        elif gps is not None:
            meta["gps_omitted"] = True  # present in the file, withheld: the job did not ask for it
        lang = str(job.options.get("ocr_lang") or job.options.get("language") or "eng")
        job.progress(0.2, "OCR")
        text = ocr(image, lang)
        meta.update(ocr_lang=lang, ocr_words=len(text.split()), title=Path(name).stem)
        job.progress(1.0, "done")
        return ProcessResult(markdown=_markdown(name, meta, text), metadata=meta)
