"""Callback URLs: which are acceptable, which hosts the daemon may call, and the form shown in logs and result.json.

Light on purpose: the daemon (claims, callbacks) and the workers (sidecar options) import it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048


def valid_callback_url(value: Any) -> bool:
    """An http(s) URL without white space, of a sane length."""
    return isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) <= MAX_URL_LENGTH \
        and not any(c.isspace() for c in value)


def public_url(url: str) -> str:
    """The URL without credentials or query (either may carry a token): for logs, result.json and the page."""
    try:
        u = urlsplit(url)
        port = f":{u.port}" if u.port else ""
    except ValueError:
        return "(an unparsable URL)"
    return f"{u.scheme}://{u.hostname}{port}{u.path}"


def valid_host_entry(value: Any) -> bool:
    """One `[convert] callback_hosts` entry: a host name or address, `.example.com` for its subdomains, or
    either with `:port`."""
    return isinstance(value, str) and bool(value.strip()) and not any(c.isspace() or c in "/?#@" for c in value)


def host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    """Whether `url`'s host is on the allow-list (an empty list allows every host)."""
    if not allowed:
        return True
    try:
        u = urlsplit(url)
        host, port = (u.hostname or "").lower(), u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        return False
    for entry in (e.lower() for e in allowed):
        name, _, want_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if want_port and want_port != str(port):
            continue
        if host == name.strip("[]") or (name.startswith(".") and host.endswith(name)):
            return True
    return False
