"""The weights downloader against a real HTTP server on 127.0.0.1 (nothing outside the machine is reached).

The server plays: a plain file host with Range support, one that ignores Range, one that drops the
connection half-way once, Google Drive's virus-scan warning pages (the newer ``confirm``/``uuid`` form,
the older "Download anyway" link + ``download_warning`` cookie, and the cookie alone), a quota page,
an endless chain of pages, and 404.
"""
import hashlib
import http.server
import random
import re
import socket
import threading
import urllib.parse
from pathlib import Path

import pytest

from UXNetSegmentLib.catalogue import spec_from_dict
from UXNetSegmentLib.download import download, fetch_weights, part_path, weights_target
from UXNetSegmentLib.errors import UXNetError

PAYLOAD = random.Random(7).getrandbits(8 * 1_100_000).to_bytes(1_100_000, "little")
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
FILE_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"
UUID = "9f1c2d3e-aaaa-bbbb-cccc-0123456789ab"
TOKEN = "Xy7_"

DRIVE_FORM_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>
<meta http-equiv="content-type" content="text/html; charset=utf-8"><script>window.alert('never run');</script>
</head><body><div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can't scan
this file for viruses.</p><p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={id}">
weights.pth</a> (1.1M)</span> is too large for Google to scan for viruses. Would you still like to download
this file?</p><form id="download-form" action="{base}/download" method="get">
<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action"
value="Download anyway"/><input type="hidden" name="id" value="{id}"><input type="hidden" name="export"
value="download"><input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid"
value="{uuid}"></form></div></div></body></html>"""

DRIVE_LINK_PAGE = """<html><head><title>Google Drive - Virus scan warning</title></head><body>
<p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p>
<a href="https://support.google.com/drive/answer/2423485">Learn more</a>
<a id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action"
href="/olduc?export=download&amp;confirm={token}&amp;id={id}">Download anyway</a></body></html>"""

QUOTA_PAGE = """<html><head><title>Google Drive - Quota exceeded</title></head><body>
<p>Too many users have viewed or downloaded this file recently. Please try accessing the file again later.</p>
<a href="/">Google Drive</a></body></html>"""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        self.server.requests.append({"path": parts.path, "query": query, "range": self.headers.get("Range"),
                                     "cookie": self.headers.get("Cookie", "")})
        route = {"/file": self._file, "/norange": self._norange, "/flaky": self._flaky, "/uc": self._uc,
                 "/download": self._usercontent, "/olduc": self._olduc, "/cookieonly": self._cookieonly,
                 "/quota": lambda q: self._html(QUOTA_PAGE), "/loop": self._loop}.get(parts.path)
        if route is None:
            self.send_error(404, "Not Found")
        else:
            route(query)

    # --- plain hosts -------------------------------------------------------------------------------
    def _file(self, query, ranges: bool = True) -> None:
        start = 0
        asked = self.headers.get("Range")
        if ranges and asked:
            start = int(asked.split("=", 1)[1].split("-", 1)[0])
            if start >= len(PAYLOAD):
                self.send_error(416, "Requested Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.server.bytes_sent += len(PAYLOAD) - start  # counted first: the client may finish before we return
        self.wfile.write(PAYLOAD[start:])

    def _norange(self, query) -> None:
        self._file(query, ranges=False)

    def _flaky(self, query) -> None:
        self.server.flaky_hits += 1
        if self.server.flaky_hits > 1:
            self._file(query)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
        self.wfile.flush()
        self.close_connection = True

    # --- Google Drive look-alikes ------------------------------------------------------------------
    def _html(self, text: str, cookie: str = "") -> None:
        body = text.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _uc(self, query) -> None:
        self._html(DRIVE_FORM_PAGE.format(base=self.server.base, id=query.get("id", ""), uuid=UUID))

    def _usercontent(self, query) -> None:
        if query == {"id": FILE_ID, "export": "download", "confirm": "t", "uuid": UUID}:
            self._file(query)
        else:
            self.send_error(403, "Forbidden")

    def _olduc(self, query) -> None:
        if query.get("confirm") == TOKEN and f"download_warning_13058_{FILE_ID}={TOKEN}" in self.headers.get(
                "Cookie", ""):
            self._file(query)
            return
        self._html(DRIVE_LINK_PAGE.format(token=TOKEN, id=FILE_ID),
                   cookie=f"download_warning_13058_{FILE_ID}={TOKEN}; Path=/")

    def _cookieonly(self, query) -> None:
        if query.get("confirm") == TOKEN:
            self._file(query)
        else:
            self._html("<html><body>Virus scan warning</body></html>",
                       cookie=f"download_warning_777={TOKEN}; Path=/")

    def _loop(self, query) -> None:
        self._html('<form action="/loop"><input type="hidden" name="confirm" value="t"></form>')


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests = []
        self.bytes_sent = 0
        self.flaky_hits = 0


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # talk to 127.0.0.1 directly, never through a proxy
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _assert_nothing_left(dest: Path, keep_part: bool = False) -> None:
    assert not dest.exists(), "a partial final file was left behind"
    assert part_path(dest).exists() == keep_part


def test_plain_download_streams_with_progress(server, tmp_path):
    dest = tmp_path / "weights.pth"
    events = []
    assert download(server.base + "/file", dest, progress=lambda *e: events.append(e)) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    assert len(events) >= 4 and {stage for stage, _, _ in events} == {"download"}
    fractions = [f for _, f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(re.fullmatch(r"\d+\.\d/\d+\.\d MB", detail) for _, _, detail in events)
    assert events[-1][2] == "1.1/1.1 MB"


def test_resume_fetches_only_the_remainder(server, tmp_path):
    dest = tmp_path / "weights.pth"
    part_path(dest).write_bytes(PAYLOAD[:400_000])
    download(server.base + "/file", dest, sha256=PAYLOAD_SHA)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == "bytes=400000-"
    assert server.bytes_sent == len(PAYLOAD) - 400_000
    assert not part_path(dest).exists()


def test_server_that_ignores_range_restarts_cleanly(server, tmp_path):
    dest = tmp_path / "weights.pth"
    part_path(dest).write_bytes(b"\0" * 400_000)  # would corrupt the file if the 200 body were appended
    download(server.base + "/norange", dest)
    assert server.requests[-1]["range"] == "bytes=400000-"
    assert dest.read_bytes() == PAYLOAD


def test_part_longer_than_the_file_restarts(server, tmp_path):
    dest = tmp_path / "weights.pth"
    part_path(dest).write_bytes(PAYLOAD + b"junk")  # server answers 416 to this Range
    download(server.base + "/file", dest)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [f"bytes={len(PAYLOAD) + 4}-", None]


def test_dropped_connection_keeps_part_and_resumes(server, tmp_path):
    dest = tmp_path / "weights.pth"
    with pytest.raises(UXNetError, match="run it again to resume") as err:
        download(server.base + "/flaky", dest)
    assert "\n" not in str(err.value)
    _assert_nothing_left(dest, keep_part=True)
    assert part_path(dest).read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]
    download(server.base + "/flaky", dest, sha256=PAYLOAD_SHA)
    assert server.requests[-1]["range"] == f"bytes={len(PAYLOAD) // 2}-"
    assert dest.read_bytes() == PAYLOAD


def test_google_drive_confirm_form(server, tmp_path):
    dest = tmp_path / "weights.pth"
    download(f"{server.base}/uc?export=download&id={FILE_ID}", dest, sha256=PAYLOAD_SHA)
    assert dest.read_bytes() == PAYLOAD
    assert [r["path"] for r in server.requests] == ["/uc", "/download"]
    assert server.requests[1]["query"] == {"id": FILE_ID, "export": "download", "confirm": "t", "uuid": UUID}


def test_google_drive_download_anyway_link_and_cookie(server, tmp_path):
    dest = tmp_path / "weights.pth"
    download(f"{server.base}/olduc?export=download&id={FILE_ID}", dest)
    assert dest.read_bytes() == PAYLOAD
    second = server.requests[1]
    assert second["query"]["confirm"] == TOKEN and "download_warning" in second["cookie"]


def test_google_drive_cookie_only(server, tmp_path):
    dest = tmp_path / "weights.pth"
    download(f"{server.base}/cookieonly?export=download&id={FILE_ID}", dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[1]["query"] == {"export": "download", "id": FILE_ID, "confirm": TOKEN}


def test_page_without_confirmation_is_an_error(server, tmp_path):
    dest = tmp_path / "weights.pth"
    with pytest.raises(UXNetError, match="web page instead of the file.*--weights FILE"):
        download(server.base + "/quota", dest)
    _assert_nothing_left(dest)


def test_endless_confirmation_pages_stop(server, tmp_path):
    dest = tmp_path / "weights.pth"
    with pytest.raises(UXNetError, match="kept answering with web pages"):
        download(server.base + "/loop", dest)
    _assert_nothing_left(dest)
    assert len(server.requests) == 5


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
    dest = tmp_path / "weights.pth"
    wrong = "0" * 64
    with pytest.raises(UXNetError) as err:
        download(server.base + "/file", dest, sha256=wrong)
    message = str(err.value)
    assert wrong in message and PAYLOAD_SHA in message and "\n" not in message
    _assert_nothing_left(dest)


def test_http_404_is_one_line(server, tmp_path):
    dest = tmp_path / "weights.pth"
    with pytest.raises(UXNetError) as err:
        download(server.base + "/nothing-here.pth", dest)
    message = str(err.value)
    assert "HTTP 404" in message and "--weights FILE" in message and "\n" not in message
    _assert_nothing_left(dest)


def test_unreachable_host_says_what_to_do(server, tmp_path):
    with socket.socket() as sock:  # a port on which nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "weights.pth"
    with pytest.raises(UXNetError, match=rf"could not reach 127\.0\.0\.1:{port} .*download the file in a browser "
                                         r"and pass --weights FILE"):
        download(f"http://127.0.0.1:{port}/weights.pth", dest)
    _assert_nothing_left(dest)


def test_only_http_urls_are_followed(tmp_path):
    with pytest.raises(UXNetError, match="only http"):
        download("file:///etc/hostname", tmp_path / "weights.pth")


def test_unwritable_destination(server, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(UXNetError, match="cannot create folder.*UXNET_CACHE"):
        download(server.base + "/file", blocker / "weights.pth")


def _spec(url, sha256=None):
    return spec_from_dict({"name": "local", "labels": {"1": "liver"}, "intensity_window": [-125, 275],
                           "weights": {"url": url, "sha256": sha256, "file": "local.pth"}})


def test_fetch_weights_into_the_cache_once(server, tmp_path, monkeypatch):
    monkeypatch.setenv("UXNET_CACHE", str(tmp_path / "cache"))
    spec = _spec(server.base + "/file", PAYLOAD_SHA)
    assert spec.weights_path() is None
    path = fetch_weights(spec)
    assert path == tmp_path / "cache" / "local.pth" == weights_target(spec) == spec.weights_path()
    assert path.read_bytes() == PAYLOAD
    events = []
    assert fetch_weights(spec, progress=lambda *e: events.append(e)) == path
    assert len(server.requests) == 1 and events == [("download", 1.0, "already present")]


def test_fetch_weights_replaces_a_corrupt_file(server, tmp_path):
    spec = _spec(server.base + "/file", PAYLOAD_SHA)
    target = weights_target(spec, tmp_path)
    target.write_bytes(b"not the weights")
    assert fetch_weights(spec, dest_dir=tmp_path) == target
    assert target.read_bytes() == PAYLOAD


def test_fetch_weights_without_url(tmp_path):
    spec = spec_from_dict({"name": "mine", "labels": {"1": "liver"}, "intensity_window": [0, 1]})
    with pytest.raises(UXNetError, match="no download URL; pass --weights FILE"):
        fetch_weights(spec, dest_dir=tmp_path)
    assert weights_target(spec, tmp_path) == tmp_path / "mine.pth"
