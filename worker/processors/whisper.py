"""Whisper model resolution and a per-process model cache (faster-whisper / CTranslate2).

A worker loads each (model, device, compute type) once and reuses it for every later job: loading
``large-v3`` takes many seconds and gigabytes, so doing it per job would dominate short jobs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import BadInput, OutOfMemory, TransientError


@dataclass(frozen=True)
class LoadedModel:
    """A loaded WhisperModel and how it runs."""

    model: Any  # faster_whisper.WhisperModel (imported lazily: the media extra is optional)
    name: str  # what metadata reports: the model name, or the directory's name for a local model
    device: str  # cpu | cuda
    compute_type: str  # int8 | float16


_CACHE: dict[tuple[str, str, str], LoadedModel] = {}
_LOCK = threading.Lock()


def cuda_device_count() -> int:
    """Number of CUDA devices CTranslate2 can use (0 when it was built without CUDA or has none)."""
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    except Exception:  # a broken CUDA runtime means "no GPU" for us, not a crash
        return 0


def pick_device(device: str) -> tuple[str, str]:
    """(device, compute_type): CUDA float16 for cuda/auto with a GPU, else CPU int8."""
    device = (device or "auto").lower()
    if device not in {"auto", "cuda", "cpu"}:
        raise BadInput(f"unknown device {device!r}: use auto, cuda or cpu")
    if device in {"auto", "cuda"} and cuda_device_count() > 0:
        return "cuda", "float16"
    if device == "cuda":
        # The operator asked for a GPU that is not there: say so instead of silently using the CPU.
        raise TransientError("device 'cuda' requested but CTranslate2 sees no CUDA device on this worker")
    return "cpu", "int8"


def resolve_model(name_or_path: str) -> tuple[str, str]:
    """(what to load, display name): a local CTranslate2 directory if it exists, else a hub name."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise BadInput(f"whisper model directory {path} has no model.bin (not a CTranslate2 model)")
        resolved = path.resolve()
        # A bare "model" directory says nothing in metadata: name it with its parent.
        generic = resolved.name.lower() in {"model", "models", "whisper", "ct2"}
        return str(resolved), f"{resolved.parent.name}/{resolved.name}" if generic else resolved.name
    # "org/repo" is a hub repository id; only something that looks like a filesystem path is local.
    if name_or_path.startswith(("/", ".", "~")):
        raise BadInput(f"whisper model directory {name_or_path!r} does not exist on this worker")
    return name_or_path, name_or_path


def is_out_of_memory(exc: BaseException) -> bool:
    """True for RAM or CUDA out-of-memory errors (CTranslate2 raises RuntimeError for CUDA OOM)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "cudaerrormemoryallocation" in text)


def load_model(name_or_path: str, device: str = "auto") -> LoadedModel:
    """The cached model for (model, device), loading it on first use."""
    target, display = resolve_model(name_or_path)
    dev, compute_type = pick_device(device)
    key = (target, dev, compute_type)
    with _LOCK:  # two jobs starting together must not load the same model twice
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        try:
            from faster_whisper import WhisperModel

            # CPU threads: 0 lets CTranslate2 use all cores, which is what a dedicated worker wants.
            model = WhisperModel(target, device=dev, compute_type=compute_type)
        except Exception as exc:
            if isinstance(exc, ValueError) and "invalid model size" in str(exc).lower():
                raise BadInput(f"unknown whisper model {name_or_path!r}: {exc}") from exc
            if is_out_of_memory(exc):
                raise OutOfMemory(f"out of memory loading whisper model {display} on {dev}: {exc}") from exc
            # Hub unreachable, disk full, ...: another attempt (or another worker) may succeed.
            raise TransientError(f"cannot load whisper model {name_or_path!r} on {dev}: {exc}") from exc
        loaded = LoadedModel(model=model, name=display, device=dev, compute_type=compute_type)
        _CACHE[key] = loaded
        return loaded


def clear_cache() -> None:
    """Forget every loaded model (tests; a worker never needs this)."""
    with _LOCK:
        _CACHE.clear()
