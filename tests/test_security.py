"""Security defaults of ``egressd run``, checked on the running daemon rather than its parts.

Loopback listeners, the exporter allowlist, TLS and bcrypt basic auth on HTTP, secrets read
from files and never shown, a private state file, and no running as root by accident.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from egressd.config import Config, load_config
from tests.integration_support import (
    REPO,
    EgressdProcess,
    free_port,
    free_udp_port,
    http_get,
    metric_value,
    research_config,
    wait_until,
)
from tests.netflow_builders import data_set, ipfix_datagram, template_set

BASE = research_config(
    {
        "interval": "1m",
        "allowed_lateness": "10s",
        "unexpected_min_bytes": "100KB",
        "unexpected_window": "10m",
    }
)

FIELDS = [(8, 4), (12, 4), (1, 8), (2, 8), (150, 4), (151, 4)]


def exfiltration() -> list[bytes]:
    """5 MB to a Chinese address two minutes ago, and a flow now that closes its interval."""
    now = int(time.time())
    out = []
    for dst, size, end in (("47.100.23.45", 5_000_000, now - 120), ("81.2.69.160", 10_000, now)):
        row: list[int | bytes] = [
            socket.inet_aton("10.20.0.17"),
            socket.inet_aton(dst),
            size,
            1,
            end - 10,
            end,
        ]
        sets = [template_set({300: FIELDS}, ipfix=True), data_set(300, FIELDS, [row])]
        out.append(ipfix_datagram(sets, export_secs=now))
    return out


def send_from(exporter: str, port: int, datagrams: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((exporter, 0))
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))


def alerts_of(base: str) -> list[dict[str, object]]:
    status, body = http_get(f"{base}/api/v1/alerts")
    assert status == 200, status
    alerts = orjson.loads(body)
    assert isinstance(alerts, list)
    return alerts


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[EgressdProcess, Path, int, int]]:
    """An egressd whose config the test finishes writing (``BASE`` + its own tables)."""
    udp, http = free_udp_port(), free_port()
    config = tmp_path / "egressd.toml"
    egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
    yield egressd, config, udp, http
    if egressd.alive():
        egressd.stop()


# -- loopback unless configured -------------------------------------------------------------


def test_listeners_default_to_loopback(tmp_path: Path) -> None:
    assert Config().http.listen.startswith("127.0.0.1:")
    # A collector or HTTP table that does not say where to listen stays on loopback too.
    path = tmp_path / "egressd.toml"
    path.write_text('[http]\nexternal_url = "http://egressd.example"\n[[sources.netflow]]\n')
    config = load_config(path)
    assert ipaddress.ip_address(config.http.listen.rpartition(":")[0]).is_loopback
    assert [s.listen.rpartition(":")[0] for s in config.sources.netflow] == ["127.0.0.1"]


# -- exporter allowlist ---------------------------------------------------------------------


def test_unlisted_exporters_are_dropped_and_counted(
    daemon: tuple[EgressdProcess, Path, int, int],
) -> None:
    egressd, config, udp, http = daemon
    config.write_text(
        BASE
        + f'[http]\nlisten = "127.0.0.1:{http}"\n'
        + f'[[sources.netflow]]\nlisten = "127.0.0.1:{udp}"\n'
        + 'allowed_exporters = ["127.0.0.2/32"]\n'
    )
    egressd.start()
    source = f"netflow:127.0.0.1:{udp}"
    # From a loopback address that is not listed: counted as dropped, never decoded.
    send_from("127.0.0.3", udp, exfiltration())

    def dropped() -> float:
        text = egressd.metrics()
        return metric_value(text, "egressd_dropped_total", reason="exporter_not_allowed") or 0.0

    wait_until(lambda: dropped() == 2, 10, what="two datagrams dropped by the allowlist")
    text = egressd.metrics()
    assert (metric_value(text, "egressd_records_total", source=source) or 0.0) == 0
    assert alerts_of(egressd.base) == []
    # The same datagrams from the listed exporter page.
    send_from("127.0.0.2", udp, exfiltration())
    wait_until(lambda: len(alerts_of(egressd.base)) == 1, 10, what="alert from allowed exporter")
    assert egressd.stop() == 0, egressd.log()


# -- TLS and basic auth on HTTP -------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egressd test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def https_get(url: str, cafile: Path, credentials: tuple[str, str] | None) -> int:
    """Status of a GET over TLS verified against ``cafile`` (0 when the connection fails)."""
    request = urllib.request.Request(url)
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=str(cafile))
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError):
        return 0


def test_http_serves_tls_and_demands_bcrypt_basic_auth(
    tmp_path: Path, daemon: tuple[EgressdProcess, Path, int, int]
) -> None:
    bcrypt = pytest.importorskip("bcrypt", reason="basic auth needs the 'auth' extra (bcrypt)")
    egressd, config, udp, http = daemon
    cert, key = self_signed(tmp_path)
    hashed = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(rounds=4)).decode()
    config.write_text(
        BASE
        + f'[http]\nlisten = "127.0.0.1:{http}"\n'
        + f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
        + f'[http.basic_auth_users]\nprometheus = "{hashed}"\n'
        + f'[[sources.netflow]]\nlisten = "127.0.0.1:{udp}"\n'
    )
    egressd.start(wait_ready=False)
    base = f"https://127.0.0.1:{http}"
    right = ("prometheus", "correct horse")
    wait_until(
        lambda: https_get(f"{base}/readyz", cert, right) == 200 or not egressd.alive(),
        30,
        what="egressd ready over TLS",
    )
    assert egressd.alive(), egressd.log()
    for path in ("/metrics", "/readyz", "/healthz", "/api/v1/alerts", "/api/v1/baselines"):
        assert https_get(f"{base}{path}", cert, None) == 401, path
        assert https_get(f"{base}{path}", cert, ("prometheus", "wrong")) == 401, path
        assert https_get(f"{base}{path}", cert, ("someone", "correct horse")) == 401, path
        assert https_get(f"{base}{path}", cert, right) == 200, path
    # Plain HTTP on the TLS port gets nothing useful.
    assert http_get(f"http://127.0.0.1:{http}/metrics")[0] in (0, 400)
    assert egressd.stop() == 0, egressd.log()


# -- secrets only from files, never shown ---------------------------------------------------


class _RecordingAlertmanager(BaseHTTPRequestHandler):
    """Accepts alert POSTs and remembers the Authorization headers it saw."""

    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_secrets_come_from_files_and_are_never_shown(
    tmp_path: Path, daemon: tuple[EgressdProcess, Path, int, int]
) -> None:
    egressd, config, udp, http = daemon
    token, kafka_password = "tok-7f3a9c1e5b2d", "kafka-Pw-94e1d07a"
    (tmp_path / "am.token").write_text(token + "\n")
    (tmp_path / "kafka.password").write_text(kafka_password + "\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingAlertmanager)
    _RecordingAlertmanager.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config.write_text(
            BASE
            + f'[http]\nlisten = "127.0.0.1:{http}"\n'
            + f'[[sources.netflow]]\nlisten = "127.0.0.1:{udp}"\n'
            # A Kafka source whose broker is not there: the client keeps trying to log in.
            + "[[sources.kafka]]\n"
            + f'bootstrap_servers = ["127.0.0.1:{free_port()}"]\ntopics = ["flows"]\n'
            + 'security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\n'
            + f'sasl_username = "egressd"\nsasl_password_file = "{tmp_path / "kafka.password"}"\n'
            + "[alertmanager]\n"
            + f'urls = ["http://127.0.0.1:{server.server_address[1]}"]\n'
            + f'resend_interval = "1s"\nbearer_token_file = "{tmp_path / "am.token"}"\n'
        )
        # At debug level, and not waiting for readiness (the Kafka source never gets ready).
        egressd.start(wait_ready=False)
        wait_until(lambda: http_get(f"{egressd.base}/healthz")[0] == 200, 30, what="HTTP up")
        wait_until(
            lambda: (
                metric_value(
                    egressd.metrics(), "egressd_source_ready", source=f"netflow:127.0.0.1:{udp}"
                )
                == 1
            ),
            15,
            what="collector listening",
        )
        send_from("127.0.0.1", udp, exfiltration())
        wait_until(lambda: len(alerts_of(egressd.base)) == 1, 15, what="alert")
        # The token was read and used: the alert went out with it.
        wait_until(
            lambda: f"Bearer {token}" in _RecordingAlertmanager.seen, 15, what="bearer token used"
        )
        shown = [egressd.metrics()]
        for path in ("/", "/readyz", "/healthz", "/api/v1/alerts", "/api/v1/baselines"):
            shown.append(http_get(f"{egressd.base}{path}")[1].decode())
        assert egressd.stop() == 0, egressd.log()
        shown.append(egressd.log_path.read_text(errors="replace"))
        assert "DEBUG" in shown[-1], "the daemon should have logged at debug level"
        assert "kafka" in shown[-1].lower(), "the Kafka source should have tried to connect"
        for secret in (token, kafka_password):
            for text in shown:
                assert secret not in text
    finally:
        server.shutdown()
        server.server_close()


def test_credentials_in_an_alertmanager_url_are_refused_without_repeating_them(
    tmp_path: Path,
) -> None:
    config = tmp_path / "egressd.toml"
    config.write_text('[alertmanager]\nurls = ["https://egressd:pw-5c81d2@am.example:9093"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "egressd.cli", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 2
    assert "basic_auth_password_file" in result.stdout + result.stderr
    assert "pw-5c81d2" not in result.stdout + result.stderr


# -- the state file is private ---------------------------------------------------------------


def test_state_file_is_private_whatever_the_umask(
    tmp_path: Path, daemon: tuple[EgressdProcess, Path, int, int]
) -> None:
    egressd, config, udp, http = daemon
    state = tmp_path / "state.json"
    config.write_text(
        BASE
        + f'[state]\npath = "{state}"\n'
        + f'[http]\nlisten = "127.0.0.1:{http}"\n'
        + f'[[sources.netflow]]\nlisten = "127.0.0.1:{udp}"\n'
    )
    previous = os.umask(0)  # the daemon inherits a umask that would make files world-readable
    try:
        egressd.start()
    finally:
        os.umask(previous)
    send_from("127.0.0.1", udp, exfiltration())
    wait_until(lambda: len(alerts_of(egressd.base)) == 1, 15, what="alert")
    assert egressd.stop() == 0, egressd.log()
    assert state.exists()
    assert state.stat().st_mode & 0o777 == 0o600


# -- not as root by accident -----------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="the root refusal can only be seen as root")
def test_refuses_to_run_as_root_without_allow_root(tmp_path: Path) -> None:
    config = tmp_path / "egressd.toml"
    config.write_text(
        f'[http]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[[sources.netflow]]\nlisten = "127.0.0.1:{free_udp_port()}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "egressd.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert result.returncode != 0
    assert "refuses to run as root" in result.stderr
    assert "--allow-root" in result.stderr
