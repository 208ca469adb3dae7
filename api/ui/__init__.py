"""The dashboard's static files (plain HTML, JS and CSS: no build step, nothing from outside)."""

from pathlib import Path

STATIC = Path(__file__).parent / "static"
