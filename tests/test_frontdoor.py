"""The front door (lab2prod.servers.frontdoor): a real HAProxy in front of a small loopback backend that says
which token reached it."""

import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lab2prod.core.errors import Lab2ProdError
from lab2prod.servers import frontdoor
from lab2prod.servers.frontdoor import Client, FrontDoor, audit_config, write_config

try:
    frontdoor.haproxy_binary()
    HAPROXY = True
except Lab2ProdError:
    HAPROXY = False
needs_haproxy = pytest.mark.skipif(not HAPROXY, reason=frontdoor.INSTALL)


class _Backend(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"authorization": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    class Live:
        model = "model"
        inference_url = f"http://127.0.0.1:{server.server_port}"
        keys = {"inference": "the-servers-own-token"}

    yield Live()
    server.shutdown()


@needs_haproxy
def test_the_front_door_verifies_limits_each_client_and_passes_the_servers_token(backend, tmp_path):
    with FrontDoor(backend, tmp_path / "door", ["a", "b"], rate_per_s=10) as door:
        status, payload, _ = door.client("a").post("/predictions/model", b"{}", "application/json")
        assert status == 200
        assert json.loads(payload)["authorization"] == "Bearer the-servers-own-token"  # the client key stays outside
        # an unverified client, plain HTTP to the TLS port, and an unknown key are refused
        status, payload, _ = door.client("a", verify=False).post("/p", b"{}", "application/json")
        assert status == 0 and b"CERTIFICATE_VERIFY_FAILED" in payload
        assert door.client("a", tls=False, port=door.port).post("/p", b"{}", "application/json")[0] == 0
        stranger = Client("127.0.0.1", door.port, "not-a-key",
                          ssl.create_default_context(cafile=str(door.files.certificate)))
        status, payload, _ = stranger.post("/p", b"{}", "application/json")
        assert status == 401 and json.loads(payload)["code"] == "unknown_client"
        # client a over its limit gets 429 with a reason; client b, within its own, does not
        flood = door.client("a")
        answers = [flood.post("/p", b"{}", "application/json") for _ in range(40)]
        statuses = [a[0] for a in answers]
        assert 0 < statuses.count(200) <= 10 and statuses.count(429) >= 30
        assert json.loads(next(a[1] for a in answers if a[0] == 429))["code"] == "rate_limited"
        assert door.client("b").post("/p", b"{}", "application/json")[0] == 200
        pid = door.process.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped by the pid it started
    assert oct((tmp_path / "door" / "clients.map").stat().st_mode & 0o777) == "0o600"


def test_the_audit_passes_a_tls_only_config_and_names_a_plain_port(tmp_path):
    written = write_config(tmp_path / "tls", "127.0.0.1:8080", {"client": "k"}, 50)
    assert all(row["passed"] for row in audit_config(written.config))
    with_plain = write_config(tmp_path / "plain", "127.0.0.1:8080", {"client": "k"}, 50, plain_port=8081)
    rows = {row["item"]: row for row in audit_config(with_plain.config)}
    assert not rows["TLS on every port"]["passed"] and "8081" in rows["TLS on every port"]["value"]
    assert rows["per-client rate limit"]["passed"]
    with pytest.raises(Lab2ProdError, match="rate_per_s=0"):
        write_config(tmp_path / "zero", "127.0.0.1:8080", {"client": "k"}, 0)
