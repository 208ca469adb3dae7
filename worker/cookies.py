"""Checks for the worker's own cookies (``--cookies FILE``, ``--cookies-from-browser BROWSER``).

The processors read the cookies themselves; this module only tells a person, before any job
runs, whether what they configured can be read, and how to fix it when it cannot.
"""

from __future__ import annotations

from http.cookiejar import LoadError, MozillaCookieJar
from pathlib import Path

BROWSERS = (
    "chrome",
    "chromium",
    "firefox",
    "edge",
    "brave",
    "opera",
    "opera_gx",
    "vivaldi",
    "safari",
    "librewolf",
    "arc",
)
PROBE_DOMAIN = "youtube.com"


def check_cookies_file(path: Path) -> tuple[bool, str]:
    """(True, summary) when ``path`` is a readable Netscape cookies.txt, else (False, what is wrong)."""
    if not path.exists():
        return False, f"{path} does not exist"
    if not path.is_file():
        return False, f"{path} is not a file"
    jar = MozillaCookieJar()
    try:
        jar.load(str(path), ignore_discard=True, ignore_expires=True)
    except PermissionError:
        return False, f"{path} is not readable by this user"
    except (LoadError, OSError, UnicodeDecodeError) as exc:
        return False, f"{path} is not a Netscape cookies.txt ({exc})"
    domains = sorted({c.domain.lstrip(".") for c in jar})
    if not domains:
        return False, f"{path} holds no cookies"
    shown = ", ".join(domains[:5]) + (" ..." if len(domains) > 5 else "")
    return True, f"{len(jar)} cookies for {shown}"


def check_browser(browser: str, domain: str = PROBE_DOMAIN) -> tuple[bool, str]:
    """(True, summary) when browser-cookie3 can read ``browser``'s cookies here, else (False, why)."""
    name = browser.lower().replace("-", "_")
    try:
        import browser_cookie3
    except ImportError:
        return False, "browser-cookie3 is not installed (pip install '.[worker,media]')"
    loader = getattr(browser_cookie3, name, None)
    if name not in BROWSERS or not callable(loader):
        return False, f"unknown browser {browser!r} (one of: {', '.join(BROWSERS)})"
    try:
        jar = loader(domain_name=domain)
    except KeyError as exc:  # Linux Chrome needs the desktop keyring: no D-Bus session over SSH
        return False, f"{browser}'s cookie key is in the desktop keyring, which is not reachable ({exc})"
    except FileNotFoundError as exc:
        return False, f"no {browser} profile found for this user ({exc})"
    except PermissionError as exc:
        return False, f"{browser}'s cookie database is not readable ({exc})"
    except Exception as exc:  # BrowserCookieError and friends: each loader fails its own way
        return False, f"could not read {browser} cookies ({type(exc).__name__}: {exc})"
    count = sum(1 for _ in jar)
    return True, f"{count} cookies for {domain} readable from {browser}"
