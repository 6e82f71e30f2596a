"""Fixtures for the black-box integration tests of tether-relay.

The relay binary is taken from $TETHER_RELAY, else <repo>/.build/release/tether-relay. A missing
binary is an error, never a skip: CI must not go green without running anything.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tether_testlib import HOST, PeerClosed, Reader, connect, free_port

# Tunnel fixtures (tokens, stand-in, nginx, tether-bridge): tests/integration/tunnel_fixtures.py
pytest_plugins = ["tunnel_fixtures"]

REPO = Path(__file__).resolve().parents[2]
RELAY_BIN = Path(os.environ.get("TETHER_RELAY") or REPO / ".build" / "release" / "tether-relay")
LOG_LEVEL = os.environ.get("TETHER_TEST_LOG_LEVEL", "info")

# Markers of a crashed Swift / C process in stderr.
CRASH_PATTERNS = re.compile(
    r"Fatal error|Segmentation fault|Illegal instruction|Program crashed|Current stack trace|"
    r"AddressSanitizer|LeakSanitizer|ThreadSanitizer|double free|corrupted|Assertion failed|SIGSEGV|SIGABRT|SIGILL|SIGBUS"
)

_ALL_PROCS: list[subprocess.Popen] = []


_OWN_BASETEMP: str | None = None


def pytest_configure(config):
    # A private base temp dir per session: concurrent pytest runs on one machine otherwise share
    # /tmp/pytest-of-$USER and can delete each other's tmp_path directories mid-run.
    global _OWN_BASETEMP
    if not config.option.basetemp and not hasattr(config, "workerinput"):
        _OWN_BASETEMP = tempfile.mkdtemp(prefix="tether-it-")
        config.option.basetemp = _OWN_BASETEMP
    # Raise the fd soft limit to the hard limit (inherited by the relay we spawn).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def pytest_sessionstart(session):
    for tool in ("openssl", "curl"):
        if shutil.which(tool) is None:
            pytest.exit(f"required tool `{tool}` is not installed", returncode=2)


def pytest_collection_modifyitems(session, config, items):
    # The relay binary is required as soon as one selected test starts a relay (tests that need
    # none, like test_tunnel_codec.py, run without it).
    if any("relay_factory" in getattr(item, "fixturenames", ()) for item in items):
        if not RELAY_BIN.is_file() or not os.access(RELAY_BIN, os.X_OK):
            pytest.exit(
                f"tether-relay binary not found or not executable at {RELAY_BIN} "
                f"(build it with `swift build -c release` or set TETHER_RELAY)", returncode=2)


def pytest_sessionfinish(session, exitstatus):
    # Last-resort cleanup: never leave a relay running.
    for p in _ALL_PROCS:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def pytest_unconfigure(config):
    if _OWN_BASETEMP:
        shutil.rmtree(_OWN_BASETEMP, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_inter]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass
class ServerCert:
    name: str
    cn: str
    serial: int
    cert: Path       # PEM chain as the relay should be configured with (leaf [+ intermediates])
    key: Path
    leaf: Path       # leaf certificate only

    def leaf_der(self) -> bytes:
        import ssl
        return ssl.PEM_cert_to_DER_cert(self.leaf.read_text())


@dataclass
class Certs:
    dir: Path
    ca: Path                 # root CA certificate (what clients trust)
    a: ServerCert            # EC P-256, signed by the root
    b: ServerCert            # EC P-256, signed by the root
    chained: ServerCert      # RSA-2048 leaf signed by an intermediate; cert file = leaf + intermediate


def _openssl(*args, cwd: Path):
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{res.stderr}")


def _make_leaf(d: Path, name: str, cn: str, serial: int, ca: str, ca_key: str, keyspec: list[str]) -> None:
    _openssl("req", "-new", "-config", "openssl.cnf", *keyspec, "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/O=Tether Tests/CN={cn}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", ca, "-CAkey", ca_key,
             "-set_serial", str(serial), "-days", "2", "-sha256",
             "-extfile", "openssl.cnf", "-extensions", "v3_leaf", "-out", f"{name}.leaf.pem", cwd=d)


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    """Test PKI generated with the openssl CLI: root CA, two server certs A and B, and a chained one."""
    d = tmp_path_factory.mktemp("certs")
    (d / "openssl.cnf").write_text(_OPENSSL_CNF)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    _openssl("req", "-x509", "-new", "-config", "openssl.cnf", "-extensions", "v3_ca", *ec, "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-set_serial", "1",
             "-subj", "/O=Tether Tests/CN=Tether Test Root CA", cwd=d)
    _make_leaf(d, "a", "tether-test-A", 0xA11CE, "ca.pem", "ca.key", ec)
    _make_leaf(d, "b", "tether-test-B", 0xB0B0B, "ca.pem", "ca.key", ec)
    # Intermediate CA + RSA leaf.
    _openssl("req", "-new", "-config", "openssl.cnf", *ec, "-nodes", "-keyout", "inter.key",
             "-out", "inter.csr", "-subj", "/O=Tether Tests/CN=Tether Test Intermediate CA", cwd=d)
    _openssl("x509", "-req", "-in", "inter.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "2",
             "-days", "2", "-sha256", "-extfile", "openssl.cnf", "-extensions", "v3_inter",
             "-out", "inter.pem", cwd=d)
    _make_leaf(d, "chained", "tether-test-chained", 0xC4A1, "inter.pem", "inter.key", ["-newkey", "rsa:2048"])
    for n in ("a", "b"):
        shutil.copy(d / f"{n}.leaf.pem", d / f"{n}.pem")
    (d / "chained.pem").write_text((d / "chained.leaf.pem").read_text() + (d / "inter.pem").read_text())

    def sc(name, cn, serial):
        return ServerCert(name, cn, serial, d / f"{name}.pem", d / f"{name}.key", d / f"{name}.leaf.pem")

    return Certs(d, d / "ca.pem", sc("a", "tether-test-A", 0xA11CE), sc("b", "tether-test-B", 0xB0B0B),
                 sc("chained", "tether-test-chained", 0xC4A1))


# --------------------------------------------------------------------------------------------
# Relay process
# --------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def http_get_status(port: int, path: str = "/healthz", timeout: float = 2.0) -> int | None:
    try:
        s = connect(port, timeout)
    except OSError:
        return None
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        r = Reader(s, timeout)
        return r.read_response().status
    except (OSError, PeerClosed, TimeoutError, AssertionError, ValueError):
        return None
    finally:
        s.close()


class Relay:
    """A running tether-relay process."""

    def __init__(self, workdir: Path, extra_args: list[str], tls_cert: ServerCert | None,
                 log_level: str = LOG_LEVEL, port: int | None = None):
        self.workdir = workdir
        self.extra_args = list(extra_args)
        # A given port is shared with another relay (SO_REUSEPORT), as in a restart on one host.
        self.port = port or free_port()
        # Every relay has its own admin listener (metrics, readiness, admin API): the default
        # port 9464 is exclusive, so concurrent relays each get a free one.
        self.admin_port: int | None = free_port()
        if "--admin-port" in extra_args:  # a test that sets its own (or "off")
            given = extra_args[extra_args.index("--admin-port") + 1]
            self.admin_port = int(given) if given.isdigit() and int(given) > 0 else None
        self.tls_port: int | None = None
        self.cert_path = workdir / "tls" / "server.pem"
        self.key_path = workdir / "tls" / "server.key"
        self.stderr_path = workdir / "relay.stderr.log"
        self.stdout_path = workdir / "relay.stdout.log"
        self.args = [str(RELAY_BIN), "--host", HOST, "--port", str(self.port), "--log-level", log_level]
        if "--admin-port" not in extra_args:
            self.args += ["--admin-port", str(self.admin_port)]
        if tls_cert is not None:
            self.tls_port = free_port()
            self.cert_path.parent.mkdir(parents=True, exist_ok=True)
            self.install_cert(tls_cert)
            self.args += ["--tls-port", str(self.tls_port), "--tls-cert", str(self.cert_path),
                          "--tls-key", str(self.key_path)]
        self.args += self.extra_args
        self.proc: subprocess.Popen | None = None
        self.expected_exit = False  # set when a test stops the relay itself

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, ready_timeout: float = 10.0) -> "Relay":
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                     cwd=self.workdir)
        _ALL_PROCS.append(self.proc)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RelayStartError(self)
            # The admin port is this relay's own (the public one may be shared with another
            # relay through SO_REUSEPORT, which could answer for us).
            if http_get_status(self.port, timeout=1.0) == 200 and (
                    self.admin_port is None or http_get_status(self.admin_port, timeout=1.0) == 200) and (
                    self.tls_port is None or self._tcp_open(self.tls_port)):
                return self
            time.sleep(0.05)
        raise AssertionError(f"relay not ready (GET /healthz != 200) within {ready_timeout}s\n"
                             f"args: {self.args}\nstderr:\n{self.stderr_tail()}")

    @staticmethod
    def _tcp_open(port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self, sig: int = signal.SIGTERM, down_for: float = 0.0) -> "Relay":
        """Stop the relay (must exit 0), optionally stay down for `down_for` seconds, and start it
        again with the same arguments on the same port(s). Earlier logs are kept as *.N.log."""
        rc = self.stop(sig)
        assert rc == 0, f"relay exited with {rc} on restart\n{self.stderr_tail()}"
        if down_for:
            time.sleep(down_for)
        return self.start_again()

    def start_again(self) -> "Relay":
        """Start a stopped relay again with the same arguments and port(s); the earlier logs are
        kept as relay.stderr.N.log / relay.stdout.N.log."""
        assert not self.alive(), "relay is still running"
        self.close_logs()
        n = 1
        while (self.workdir / f"relay.stderr.{n}.log").exists():
            n += 1
        os.replace(self.stderr_path, self.workdir / f"relay.stderr.{n}.log")
        os.replace(self.stdout_path, self.workdir / f"relay.stdout.{n}.log")
        return self.start()

    def send_signal(self, sig: int) -> None:
        assert self.alive(), f"relay is not running (rc={self.proc.returncode})\n{self.stderr_tail()}"
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send sig and wait for exit. Returns the exit code; kills and fails after timeout."""
        if self.alive():
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"relay did not exit within {timeout}s of signal {sig}\n{self.stderr_tail()}")

    def stderr_text(self) -> str:
        try:
            self._err.flush()
        except Exception:  # noqa: BLE001
            pass
        return self.stderr_path.read_bytes().decode("utf-8", "replace") if self.stderr_path.exists() else ""

    def stderr_tail(self, n: int = 60) -> str:
        return "\n".join(self.stderr_text().splitlines()[-n:])

    def crash_lines(self) -> list[str]:
        return [ln for ln in self.stderr_text().splitlines() if CRASH_PATTERNS.search(ln)]

    def healthy(self) -> bool:
        return self.alive() and http_get_status(self.port) == 200

    # -- resources ------------------------------------------------------------------------------

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("VmRSS not found")

    # -- TLS material ---------------------------------------------------------------------------

    def install_cert(self, sc: ServerCert) -> None:
        """Atomically replace the configured cert/key files (write new file, then os.replace)."""
        _write_atomic(self.cert_path, sc.cert.read_bytes())
        _write_atomic(self.key_path, sc.key.read_bytes())

    def install_raw(self, cert: bytes, key: bytes) -> None:
        _write_atomic(self.cert_path, cert)
        _write_atomic(self.key_path, key)

    def close_logs(self):
        for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if f:
                f.close()


class RelayStartError(AssertionError):
    def __init__(self, relay: Relay):
        self.relay = relay
        super().__init__(f"relay exited during startup with code {relay.proc.returncode}\n"
                         f"args: {relay.args}\nstderr:\n{relay.stderr_tail()}")


@pytest.fixture
def relay_factory(tmp_path, request):
    """Returns start(*extra_args, tls=None|ServerCert, log_level=...) -> Relay. All relays are stopped at teardown
    with SIGTERM; teardown fails if a relay crashed, did not exit within 10 s, or exited non-zero."""
    relays: list[Relay] = []

    def start(*extra_args: str, tls: ServerCert | None = None, log_level: str = LOG_LEVEL,
              port: int | None = None) -> Relay:
        last = None
        for attempt in range(3):  # retry on a port race (free port taken between probe and bind)
            wd = tmp_path / f"relay{len(relays)}"
            wd.mkdir()
            r = Relay(wd, list(extra_args), tls, log_level, port)
            relays.append(r)
            try:
                return r.start()
            except RelayStartError as e:
                last = e
                if "in use" not in r.stderr_text().lower():
                    raise
        raise last

    yield start

    problems = []
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for r in relays:
        if r.proc is None:
            continue
        try:
            if r.alive():
                rc = r.stop(signal.SIGTERM, timeout=10.0)
                if rc != 0:
                    problems.append(f"relay (pid {r.pid}) exited with code {rc} after SIGTERM")
            elif not r.expected_exit:
                problems.append(f"relay (pid {r.pid}) died during the test with code {r.proc.returncode}")
        except AssertionError as e:
            problems.append(str(e))
        crashes = r.crash_lines()
        if crashes:
            problems.append(f"relay (pid {r.pid}) stderr shows a crash: {crashes[:5]}")
        r.close_logs()
        if problems or failed:
            sys.stderr.write(f"\n----- relay pid {r.pid} args {r.args}\n----- stderr (tail):\n{r.stderr_tail(80)}\n")
    if problems:
        pytest.fail("relay teardown problems:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def relay(relay_factory) -> Relay:
    """A plaintext relay with default settings."""
    return relay_factory()


@pytest.fixture
def tls_relay(relay_factory, certs) -> Relay:
    """A relay with a TLS listener serving cert A."""
    return relay_factory(tls=certs.a)
