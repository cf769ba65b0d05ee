"""Where a model archive may come from: a file inside the model store, or an allowed remote host.

Registration through the management API names an archive by `url`. triserve accepts a plain
file name directly inside the model store (no folders, no `..`, no links leading out), and
remote `http(s)://` URLs only when the operator listed their exact host (reference A.5.7:
TorchServe's default allowed every URL and made SSRF and remote code execution possible).
Downloads follow no redirects and stop at `max_bytes` (--max-archive-size).
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from triserve.errors import invalid, not_found
from triserve.options import DEFAULT_MAX_ARCHIVE_SIZE
from triserve.repository.mar_extract import path_problem, reason, shown

ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz", ".model")
DOWNLOAD_TIMEOUT_S = 60


def is_remote(url: str) -> bool:
    return "://" in url


def in_store(store: Path | None, url: str) -> Path:
    """The archive `url` names inside `store`; anything that could reach outside is refused."""
    if store is None:
        raise invalid("no model store is configured (start the server with --model-store DIR)")
    if not url or url in (".", "..") or "/" in url or "\\" in url or "\x00" in url or url.startswith("."):
        raise invalid(
            f"{shown(url)} is not a file name inside the model store; give the archive's file name only"
            " (no folders, no '..')"
        )
    problem = path_problem(url)
    if problem is not None:
        raise invalid(f"the archive file name {shown(url)} {problem}")
    root = store.resolve()
    path = root / url
    if not path.exists() and not path.is_symlink():
        raise not_found(f"Model archive file not found in the model store: {url}")
    if path.is_symlink() or path.resolve().parent != root:
        raise invalid(f"'{url}' is a link; only archives stored in the model store can be registered")
    return path


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        raise invalid(f"the archive URL redirects (HTTP {code}) to {newurl}; redirects are not followed")


def _allowed(netloc: str, hostname: str, port: int | None, allowed_hosts: list[str]) -> bool:
    for entry in allowed_hosts:
        entry = entry.strip().lower()
        if entry and (entry == netloc or (entry == hostname and port is None)):
            return True
    return False


def download(url: str, allowed_hosts: list[str], folder: Path, max_bytes: int = DEFAULT_MAX_ARCHIVE_SIZE) -> Path:
    """Fetch a remote archive into `folder` (which must exist); refused unless its host is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise invalid(f"URL scheme '{parts.scheme}' is not allowed; only http and https archives can be fetched")
    if "@" in parts.netloc:
        raise invalid("archive URLs with user information are refused")
    netloc = parts.netloc.lower()
    try:
        port = parts.port
    except ValueError:
        raise invalid(f"the archive URL has an invalid port: {url}") from None
    if not allowed_hosts:
        raise invalid(
            "registering models from remote URLs is disabled; the operator can allow exact hosts"
            " with --allowed-url-hosts HOST[:PORT]"
        )
    if not _allowed(netloc, (parts.hostname or "").lower(), port, allowed_hosts):
        raise invalid(f"host '{netloc}' is not in the allowed URL hosts")
    filename = PurePosixPath(unquote(parts.path)).name
    if not filename.endswith(ARCHIVE_SUFFIXES) or filename.startswith(".") or "\\" in filename:
        raise invalid(f"the URL must name a model archive ({', '.join(ARCHIVE_SUFFIXES)}), got '{filename}'")
    target = folder / filename
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(target, "xb") as out:
            copied = 0
            for chunk in iter(lambda: response.read(1 << 20), b""):
                copied += len(chunk)
                if copied > max_bytes:
                    raise invalid(f"the archive at {url} is larger than {max_bytes} bytes (--max-archive-size)")
                out.write(chunk)
    except urllib.error.HTTPError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise invalid(f"Failed to download archive from: {url} (HTTP {e.code})") from None
    except urllib.error.URLError as e:
        shutil.rmtree(folder, ignore_errors=True)
        why = reason(e.reason) if isinstance(e.reason, BaseException) else str(e.reason)
        raise invalid(f"Failed to download archive from: {url} ({why})") from None
    except (OSError, TimeoutError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise invalid(f"Failed to download archive from: {url} ({reason(e)})") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return target
