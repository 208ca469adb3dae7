"""Where the ``morag`` command finds its server and key: flag, then environment, then config file.

The config file is TOML (``$MORAG_CONFIG``, else ``$XDG_CONFIG_HOME/morag/config.toml``, else
``~/.config/morag/config.toml``)::

    server = "https://morag.example.org"
    api_key = "mrg_..."
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ConfigError(Exception):
    """The config file cannot be read."""


def config_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get("MORAG_CONFIG"):
        return Path(env["MORAG_CONFIG"])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "morag" / "config.toml"


@dataclass(frozen=True)
class Config:
    server: str
    api_key: str | None
    source: str  # where the key came from, for error messages


def resolve(server: str | None, api_key: str | None, env: dict[str, str] | None = None) -> Config:
    """Flags win over ``MORAG_SERVER``/``MORAG_API_KEY``, which win over the config file."""
    env = dict(os.environ) if env is None else env
    path = config_path(env)
    file: dict[str, object] = {}
    if path.is_file():
        try:
            file = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
    key_source = "--api-key"
    key = api_key
    if not key and env.get("MORAG_API_KEY"):
        key, key_source = env["MORAG_API_KEY"], "MORAG_API_KEY"
    if not key and isinstance(file.get("api_key"), str):
        key, key_source = str(file["api_key"]), str(path)
    srv = server or env.get("MORAG_SERVER") or file.get("server") or DEFAULT_SERVER
    return Config(server=str(srv), api_key=key or None, source=key_source if key else "nowhere")
