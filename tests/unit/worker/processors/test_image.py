"""ImageProcessor on generated images: OCR of drawn words, EXIF, GPS only on request, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import documents as fx
from worker.errors import BadInput, Unsupported
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult
from worker.processors.image import ImageProcessor


def run(path: Path, **options: object) -> ProcessResult:
    job = JobInput("image", dict(options), path.parent, path=path, file_name=path.name)
    return ImageProcessor().process(job, ProcessorConfig())


def test_available() -> None:
    assert ImageProcessor().available() == (True, "")


def test_ocr_finds_drawn_words_and_exif(tmp_path: Path) -> None:
    res = run(fx.make_image(tmp_path / "photo.jpg"))
    for word in fx.OCR_WORDS:
        assert word in res.markdown
    meta = res.metadata
    assert meta["ocr_words"] == 3 and meta["format"] == "JPEG"
    assert (meta["width"], meta["height"], meta["mode"]) == (1200, 500, "RGB")
    assert meta["exif"] == {
        "camera_make": "TestCam",
        "camera_model": "Model X100",
        "datetime": "2024-05-17T10:30:00",
    }
    assert meta["caption"] is None and meta["caption_hook"] == "server"
    assert "- Camera: TestCam Model X100" in res.markdown and "1200 x 500 px" in res.markdown


def test_gps_withheld_unless_asked(tmp_path: Path) -> None:
    path = fx.make_image(tmp_path / "photo.jpg")
    plain = run(path)
    assert "gps" not in plain.metadata and plain.metadata["gps_omitted"] is True
    assert "52.52" not in plain.markdown and "Location" not in plain.markdown
    asked = run(path, include_gps=True)
    assert asked.metadata["gps"] == {"latitude": 52.52, "longitude": 13.41}
    assert "- Location: 52.52, 13.41" in asked.markdown


def test_image_without_text_is_still_content(tmp_path: Path) -> None:
    res = run(fx.make_image(tmp_path / "sky.png", fmt="PNG", exif=False, text=False))
    assert res.metadata["ocr_words"] == 0 and res.metadata["format"] == "PNG"
    assert "No text found" in res.markdown and "640 x 480 px" in res.markdown
    assert res.metadata["exif"] == {} and "gps_omitted" not in res.metadata


@pytest.mark.parametrize("cut", [None, 0.5], ids=["garbage", "truncated"])
def test_corrupt_image_is_bad_input(tmp_path: Path, cut: float | None) -> None:
    if cut is None:
        path = fx.make_corrupt_image(tmp_path / "bad.png")
    else:
        good = fx.make_image(tmp_path / "good.jpg").read_bytes()
        path = tmp_path / "half.jpg"
        path.write_bytes(good[: int(len(good) * cut)])
    with pytest.raises(BadInput, match=r"not a readable image|corrupt or truncated") as info:
        run(path)
    assert info.value.retryable is False


def test_missing_ocr_language_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match="no language data for xyz"):
        run(fx.make_image(tmp_path / "photo.jpg"), ocr_lang="xyz")
