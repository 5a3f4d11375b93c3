"""Weight-file download: streaming with progress, resume, atomic rename, sha256 check, Google Drive pages.

Bytes go to ``<dest>.part`` first; only a complete (and, when the checksum is known, verified) file is
renamed to ``<dest>``, so a half-written weight file never exists. An interrupted download keeps its
``.part`` and the next call resumes it with an HTTP ``Range`` request.

Google Drive answers large files with an HTML "can't scan for viruses" page instead of the file. The page
is parsed (never run) for the confirmation link or form (``confirm``/``uuid`` hidden inputs on
``drive.usercontent.google.com``, or the older ``download_warning`` cookie) and that URL is followed.
Only the standard library is used.
"""
import hashlib
import http.client
import http.cookiejar
import os
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .catalogue import ModelSpec, cache_dir, resources_dir
from .errors import UXNetError
from .progress import ProgressCallback, report

CHUNK_BYTES = 256 * 1024
TIMEOUT_S = 30.0
MAX_PAGES = 4  # confirmation pages followed before giving up
MAX_PAGE_BYTES = 2 * 1024 * 1024
PROGRESS_STEPS = 200  # progress reports per file, at most
USER_AGENT = "uxnet-segment (python urllib)"
FIX = "download the file in a browser and pass --weights FILE"


def weights_target(spec: ModelSpec, dest_dir: Optional[Path] = None) -> Path:
    """Where ``spec``'s weight file lives (or would live once downloaded); it may not exist yet.

    ``dest_dir`` overrides the folder: bundled models use ``Resources/Weights``, others the cache
    (``$UXNET_CACHE`` or ``~/.cache/uxnet-segment``).
    """
    name = spec.weights_file or f"{spec.name}.pth"
    if dest_dir is not None:
        return Path(dest_dir) / name
    return (resources_dir() / "Weights" if spec.bundled else cache_dir()) / name


def part_path(dest: Path) -> Path:
    """The in-progress file for ``dest``: ``<dest>.part``."""
    return dest.with_name(dest.name + ".part")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_weights(spec: ModelSpec, progress: Optional[ProgressCallback] = None,
                  dest_dir: Optional[Path] = None) -> Path:
    """Return the path of ``spec``'s weights, downloading them first if they are not on disk.

    A present file whose sha256 does not match the catalogue is downloaded again.
    """
    target = weights_target(spec, dest_dir)
    expected = spec.weights_sha256.lower() if spec.weights_sha256 else None
    if target.is_file():
        if expected is None or sha256_of(target) == expected:
            report(progress, "download", 1.0, "already present")
            return target
        target.unlink()
    if spec.bundled and not spec.weights_url:
        raise UXNetError(f"bundled weights {target} are missing; reinstall the extension or pass --weights FILE")
    if not spec.weights_url:
        raise UXNetError(f"model '{spec.name}' has no download URL; pass --weights FILE with its checkpoint")
    return download(spec.weights_url, target, sha256=expected, progress=progress)


def download(url: str, dest: Path, sha256: Optional[str] = None,
             progress: Optional[ProgressCallback] = None) -> Path:
    """Download ``url`` to ``dest`` (resuming ``<dest>.part``), verify ``sha256`` if given, rename atomically.

    Progress goes to ``progress("download", fraction, "x.x/y.y MB")``. Every failure is a one-line
    :class:`UXNetError`; ``dest`` only ever appears complete.
    """
    dest = Path(dest)
    part = part_path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UXNetError(f"cannot create folder {dest.parent} ({exc.strerror or exc}); "
                         f"set UXNET_CACHE to a writable folder") from None
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    current = url
    for _ in range(MAX_PAGES + 1):
        response = _open(opener, current, part)
        with response:
            if "text/html" in response.headers.get("Content-Type", "").lower():
                current = _confirmation_url(response, current, jar)
                continue
            _stream(response, part, url, progress)
        break
    else:
        raise UXNetError(f"{url} kept answering with web pages instead of the file; {FIX}")
    if sha256:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise UXNetError(f"checksum mismatch for {dest.name}: expected sha256 {sha256.lower()}, got {actual}; "
                             f"the file was deleted, run the download again or {FIX}")
    os.replace(part, dest)
    size = dest.stat().st_size
    report(progress, "download", 1.0, f"{_mb(size)}/{_mb(size)} MB")
    return dest


def _open(opener: urllib.request.OpenerDirector, url: str, part: Path) -> http.client.HTTPResponse:
    """GET ``url``, asking for the rest of ``part`` when it exists; errors become one-line UXNetErrors."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UXNetError(f"refusing to download from {url}: only http(s) URLs are supported; {FIX}")
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is not a prefix the server recognises: start over
            part.unlink()
            return _open(opener, url, part)
        raise UXNetError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; "
                         f"check the model's URL, or {FIX}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        host = urllib.parse.urlsplit(url).netloc or url
        reason = getattr(exc, "reason", None) or exc
        raise UXNetError(f"could not reach {host} ({reason}); {FIX}") from None


def _stream(response: http.client.HTTPResponse, part: Path, url: str,
            progress: Optional[ProgressCallback]) -> None:
    """Append (206) or write (200) the body to ``part``; raise if it ends short, keeping ``part`` to resume."""
    offset = part.stat().st_size if part.is_file() else 0
    if response.status == 206:
        start, total = _content_range(response.headers.get("Content-Range", ""))
        if start != offset:
            part.unlink()
            raise UXNetError(f"{url} resumed at byte {start} instead of {offset}; run the download again")
    else:  # 200: the server sent the whole file (it may have ignored our Range)
        offset, total = 0, None
    if total is None and response.headers.get("Content-Length", "").isdigit():
        total = offset + int(response.headers["Content-Length"])
    done, shown = offset, -1
    try:
        with open(part, "ab" if offset else "wb") as out:
            while True:
                try:
                    block = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    raise UXNetError(f"download of {url} was interrupted after {_mb(done)} MB ({exc}); "
                                     f"run it again to resume, or {FIX}") from None
                if not block:
                    break
                out.write(block)
                done += len(block)
                step = int(done * PROGRESS_STEPS / total) if total else done // (4 * 1024 * 1024)
                if step != shown:  # at most PROGRESS_STEPS reports per file (every 4 MB when size unknown)
                    shown = step
                    detail = f"{_mb(done)}/{_mb(total)} MB" if total else f"{_mb(done)} MB"
                    report(progress, "download", min(done / total, 1.0) if total else 0.0, detail)
    except OSError as exc:
        raise UXNetError(f"could not write {part} ({exc.strerror or exc}); free disk space or set "
                         f"UXNET_CACHE to another folder") from None
    if total is not None and done != total:
        raise UXNetError(f"download of {url} stopped at {_mb(done)} of {_mb(total)} MB; "
                         f"run it again to resume, or {FIX}")


def _content_range(value: str) -> Tuple[int, Optional[int]]:
    """``"bytes 100-199/1000"`` -> (100, 1000); the total is None when the server writes ``*``."""
    try:
        unit, spec = value.split(" ", 1)
        span, total = spec.split("/", 1)
        return int(span.split("-", 1)[0]), (int(total) if total.strip() != "*" else None)
    except ValueError:
        raise UXNetError(f"the server sent an unreadable Content-Range '{value}'; {FIX}") from None


class _PageParser(HTMLParser):
    """Collects the forms (action + hidden inputs) and link targets of a confirmation page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: List[Tuple[str, Dict[str, str]]] = []
        self.links: List[str] = []
        self._in_form = False

    def handle_starttag(self, tag: str, attrs) -> None:
        attr = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self.forms.append((attr.get("action", ""), {}))
            self._in_form = True
        elif tag == "input" and self._in_form and attr.get("name"):
            self.forms[-1][1][attr["name"]] = attr.get("value", "")
        elif tag == "a" and attr.get("href"):
            self.links.append(attr["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def _confirmation_url(response: http.client.HTTPResponse, url: str, jar: http.cookiejar.CookieJar) -> str:
    """The URL that a Google Drive warning page confirms to; a UXNetError when the page offers none."""
    charset = response.headers.get_content_charset() or "utf-8"
    page = _PageParser()
    page.feed(response.read(MAX_PAGE_BYTES).decode(charset, errors="replace"))
    for action, fields in page.forms:  # newer Drive: form with confirm (+ uuid) hidden inputs
        if "confirm" in fields:
            target = urllib.parse.urljoin(url, action or url)
            base = target.split("?", 1)[0]
            return f"{base}?{urllib.parse.urlencode(fields)}"
    for href in page.links:  # older Drive: "Download anyway" link carrying confirm=TOKEN
        if "confirm=" in href:
            return urllib.parse.urljoin(url, href)
    for cookie in jar:  # oldest Drive: the token only in a download_warning cookie
        if cookie.name.startswith("download_warning"):
            return _with_query(url, confirm=cookie.value)
    raise UXNetError(f"{url} returned a web page instead of the file (Google Drive quota exceeded, "
                     f"file not shared, or a login page); {FIX}")


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.update(params)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f}"
