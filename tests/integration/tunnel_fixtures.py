"""Fixtures for the tunnel tests (loaded by conftest.py through `pytest_plugins`).

  jwt_secret, mint_token     HS256 tokens (stdlib hmac), plus helpers for broken ones (make_jwt)
  tunnel_relay               the relay with --jwt-secret; tunnel_relay_factory(*extra_args)
  standin                    demo/ollama_standin.py on a free port; a str (its base URL) with
                             .port, .stats(), .proc; standin_factory(token_rate=..., tokens=...)
  nginx                      /usr/sbin/nginx on a free port (session scope) serving files of
                             0 B, 1 KiB, 1 MiB, 64 MiB and 1 GiB at /files/<name>, and storing
                             PUT bodies under /upload/<name> (WebDAV PUT)
  bridge_factory             the Swift tether-bridge ($TETHER_BRIDGE) pointed at a relay and a
                             local target; waits until its status file says "connected"
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tether_testlib import HOST, free_port

REPO = Path(__file__).resolve().parents[2]
BRIDGE_BIN = Path(os.environ.get("TETHER_BRIDGE") or REPO / ".build" / "release" / "tether-bridge")
STANDIN = REPO / "demo" / "ollama_standin.py"
NGINX_BIN = Path(os.environ.get("TETHER_NGINX") or "/usr/sbin/nginx")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

CRASH_PATTERNS = re.compile(
    r"Fatal error|Segmentation fault|Illegal instruction|Program crashed|Current stack trace|"
    r"AddressSanitizer|LeakSanitizer|ThreadSanitizer|double free|Assertion failed|SIGSEGV|SIGABRT|SIGILL|SIGBUS"
)

_PROCS: list[subprocess.Popen] = []


def _kill_all() -> None:
    for p in _PROCS:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


def pytest_sessionfinish(session, exitstatus):
    _kill_all()


# --------------------------------------------------------------------------------------------
# JWT (HS256 with the standard library)
# --------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(secret: str | bytes | None, sub: str | None, ttl: float | None = 3600, *, alg: str = "HS256",
             header: dict | None = None, now: float | None = None, signature: bytes | None = None,
             **claims) -> str:
    """A compact JWS. Claims: sub, iat, exp (= now + ttl; ttl None omits exp; negative ttl gives an
    expired token) and **claims (a claim given as None is omitted, e.g. iat=None).
    alg "HS256"/"HS384"/"HS512" sign with secret; alg "none" gives an unsigned token (empty
    signature); `signature` overrides the signature bytes."""
    now = int(time.time() if now is None else now)
    payload: dict = {}
    if sub is not None:
        payload["sub"] = sub
    payload["iat"] = now
    if ttl is not None:
        payload["exp"] = int(now + ttl)
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    hdr = {"alg": alg, "typ": "JWT"}
    hdr.update(header or {})
    signing_input = (b64url(json.dumps(hdr, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(payload, separators=(",", ":")).encode()))
    if signature is None:
        if alg.lower() == "none":
            signature = b""
        else:
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
            key = secret.encode() if isinstance(secret, str) else secret
            signature = hmac.new(key, signing_input.encode(), digest).digest()
    return signing_input + "." + b64url(signature)


def session_id(sub: str, iss: str | None = None) -> str:
    """PROTOCOL.md §9."""
    i, s = (iss or "").encode(), sub.encode()
    return hashlib.sha256(b"tether-session-v1\x00" + len(i).to_bytes(4, "big") + i
                          + len(s).to_bytes(4, "big") + s).hexdigest()


@pytest.fixture(scope="session")
def jwt_secret() -> str:
    return "test-secret-" + secrets.token_hex(16)


@pytest.fixture(scope="session")
def mint_token(jwt_secret):
    """mint_token(sub, ttl=3600, **claims) -> a valid HS256 token for the tunnel relay's secret
    (same keywords as make_jwt: alg=, header=, now=, secret=...)."""

    def mint(sub: str | None = "alice", ttl: float | None = 3600, *, secret: str | None = None, **kw) -> str:
        return make_jwt(jwt_secret if secret is None else secret, sub, ttl, **kw)

    return mint


# --------------------------------------------------------------------------------------------
# Relay with tunnels
# --------------------------------------------------------------------------------------------


def tunnel_url(relay, path: str = "/ws/tunnel") -> str:
    return f"ws://{HOST}:{relay.port}{path}"


def legacy_url(relay) -> str:
    return f"ws://{HOST}:{relay.port}/ws/bridge"


@pytest.fixture
def tunnel_relay_factory(relay_factory, jwt_secret):
    """start(*extra_args, **kw) -> Relay started with --jwt-secret <secret> plus extra_args."""

    def start(*extra_args: str, quotas: bool = False, **kw):
        # The per-session quotas (10 requests/s, 64 streams, 3 bridges) would get in the way of
        # the tunnel tests; the quota tests ask for them with quotas=True.
        relaxed = () if quotas else ("--rate-limit", "0", "--max-streams", "4096", "--max-bridges", "64",
                                       "--session-memory", str(1 << 30), "--bandwidth-limit", "0")
        return relay_factory("--jwt-secret", jwt_secret, *relaxed, *extra_args, **kw)

    return start


@pytest.fixture
def tunnel_relay(tunnel_relay_factory):
    """The relay with --jwt-secret (tokens from mint_token are valid)."""
    return tunnel_relay_factory()


# --------------------------------------------------------------------------------------------
# Ollama stand-in
# --------------------------------------------------------------------------------------------


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            b = os.read(fd, 4096)
            if not b:
                break
            buf += b
            if b"\n" in buf:
                return buf.split(b"\n", 1)[0].decode()
        elif proc.poll() is not None:
            break
    raise AssertionError(f"no ready line within {timeout}s (rc={proc.poll()}, output {buf!r})")


class Standin(str):
    """The stand-in's base URL (a str, e.g. "http://127.0.0.1:40123"), with extras."""

    proc: subprocess.Popen
    port: int
    stderr_path: Path

    def stats(self) -> dict:
        import urllib.request
        req = urllib.request.Request(f"{self}/stats", headers={"Host": f"127.0.0.1:{self.port}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def served(self) -> int:
        """Requests served, not counting GET /stats itself."""
        return sum(v for k, v in self.stats()["by_path"].items() if k != "/stats")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"stand-in did not exit within {timeout}s of SIGTERM")


@pytest.fixture
def standin_factory(tmp_path, request):
    """start(token_rate=20, tokens=32) -> Standin. Stopped with SIGTERM at teardown (must exit 0)."""
    started: list[Standin] = []

    def start(token_rate: float = 20.0, tokens: int = 32) -> Standin:
        err = tmp_path / f"standin{len(started)}.stderr.log"
        errf = open(err, "wb")
        proc = subprocess.Popen([sys.executable, str(STANDIN), "--host", HOST, "--port", "0",
                                 "--token-rate", str(token_rate), "--tokens", str(tokens)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf)
        errf.close()
        _PROCS.append(proc)
        line = _read_line(proc, 15.0)
        m = re.search(r"listening on http://([\d.]+):(\d+)", line)
        assert m, f"unexpected stand-in ready line {line!r}"
        s = Standin(f"http://{m.group(1)}:{m.group(2)}")
        s.proc, s.port, s.stderr_path = proc, int(m.group(2)), err
        started.append(s)
        return s

    yield start

    problems = []
    for s in started:
        try:
            rc = s.stop()
            if rc != 0:
                problems.append(f"stand-in exited with {rc} after SIGTERM")
        except AssertionError as e:
            problems.append(str(e))
        if "Traceback" in s.stderr_text():
            problems.append(f"stand-in stderr shows a traceback:\n{s.stderr_text()[-3000:]}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def standin(standin_factory) -> Standin:
    """demo/ollama_standin.py at 20 tokens/s, 32 tokens; yields its base URL (a str with .port, .stats())."""
    return standin_factory()


# --------------------------------------------------------------------------------------------
# nginx (files of known content, WebDAV PUT uploads)
# --------------------------------------------------------------------------------------------

NGINX_SIZES = {"0B.bin": 0, "1KiB.bin": KiB, "1MiB.bin": MiB, "64MiB.bin": 64 * MiB, "1GiB.bin": GiB}


@dataclass(frozen=True)
class FileInfo:
    name: str
    path: Path
    size: int
    sha256: str


def _write_pattern_file(path: Path, size: int, seed: int) -> str:
    """Deterministic content, fast even for 1 GiB: a random 1 MiB block, with each 1 MiB block
    stamped with its index and the seed (so reordered or repeated blocks change the hash)."""
    rnd = random.Random(seed)
    base = bytearray(rnd.randbytes(min(size, MiB)))
    h = hashlib.sha256()
    with open(path, "wb") as f:
        off = 0
        i = 0
        while off < size:
            n = min(MiB, size - off)
            block = base[:n]
            stamp = f"<{seed}:{i}>".encode()
            if n >= 2 * len(stamp):
                block[: len(stamp)] = stamp
                block[n - len(stamp):] = stamp
            f.write(block)
            h.update(block)
            off += n
            i += 1
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


class Nginx:
    def __init__(self, root: Path):
        self.root = root
        self.files_dir = root / "files"
        self.uploads_dir = root / "uploads"
        self.tmp_dir = root / "tmp"
        self.conf = root / "nginx.conf"
        self.stderr_path = root / "nginx.stderr.log"
        self.files: dict[str, FileInfo] = {}
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def file_url(self, name: str) -> str:
        return f"{self.url}/files/{name}"

    def upload_url(self, name: str) -> str:
        return f"{self.url}/upload/{name}"

    def uploaded(self, name: str) -> Path:
        return self.uploads_dir / name

    def clear_uploads(self) -> None:
        for p in self.uploads_dir.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def make_files(self, sizes: dict[str, int]) -> None:
        for d in (self.files_dir, self.uploads_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        for i, (name, size) in enumerate(sizes.items()):
            path = self.files_dir / name
            self.files[name] = FileInfo(name, path, size, _write_pattern_file(path, size, 1000 + i))

    def config(self) -> str:
        t = self.tmp_dir
        return f"""
daemon off;
master_process off;
worker_processes 1;
pid {self.root}/nginx.pid;
error_log stderr info;
events {{ worker_connections 4096; }}
http {{
    access_log {self.root}/access.log;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen {HOST}:{self.port} reuseport;
        server_name localhost;
        location = / {{ return 200 "nginx test server\\n"; }}
        location /files/ {{ alias {self.files_dir}/; }}
        location /upload/ {{
            alias {self.uploads_dir}/;
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;
            client_body_buffer_size 1m;
            client_body_temp_path {t}/upload_body;
        }}
    }}
}}
"""

    def start(self, timeout: float = 10.0) -> None:
        last = ""
        for _ in range(3):
            self.port = free_port()
            self.conf.write_text(self.config())
            err = open(self.stderr_path, "wb")
            self.proc = subprocess.Popen([str(NGINX_BIN), "-p", str(self.root), "-c", str(self.conf), "-e", "stderr"],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
            err.close()
            _PROCS.append(self.proc)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with socket.create_connection((HOST, self.port), timeout=0.5):
                        return
                except OSError:
                    time.sleep(0.05)
            last = self.stderr_path.read_text(errors="replace")
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            if "in use" not in last:
                break
        raise AssertionError(f"nginx did not start:\n{last}")

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(5)
        return self.proc.returncode if self.proc else 0

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""


@pytest.fixture(scope="session")
def nginx(tmp_path_factory) -> Nginx:
    """nginx on a free loopback port: GET /files/<name> for the files in NGINX_SIZES (0B.bin,
    1KiB.bin, 1MiB.bin, 64MiB.bin, 1GiB.bin; `nginx.files[name]` has path, size, sha256), and
    PUT /upload/<name> stored at `nginx.uploaded(name)`."""
    if not (NGINX_BIN.is_file() and os.access(NGINX_BIN, os.X_OK)):
        pytest.fail(f"nginx not found at {NGINX_BIN} (install the Debian package `nginx`)", pytrace=False)
    n = Nginx(tmp_path_factory.mktemp("nginx"))
    n.make_files(NGINX_SIZES)
    n.start()
    yield n
    n.stop()
    shutil.rmtree(n.root, ignore_errors=True)


@pytest.fixture
def nginx_uploads(nginx):
    """The nginx fixture with an empty upload directory, emptied again after the test."""
    nginx.clear_uploads()
    yield nginx
    nginx.clear_uploads()


# --------------------------------------------------------------------------------------------
# tether-bridge (Swift)
# --------------------------------------------------------------------------------------------


class BridgeProcess:
    """A running tether-bridge."""

    def __init__(self, workdir: Path, relay_url: str, token: str, target: str, extra_args: list[str],
                 log_level: str = "debug"):
        self.workdir = workdir
        self.token_file = workdir / "token"
        self.status_file = workdir / "status"
        self.stderr_path = workdir / "bridge.stderr.log"
        self.stdout_path = workdir / "bridge.stdout.log"
        self.token_file.write_text(token + "\n")
        os.chmod(self.token_file, 0o600)
        self.args = [str(BRIDGE_BIN), "--relay", relay_url, "--token-file", str(self.token_file),
                     "--target", target, "--status-file", str(self.status_file), "--log-level", log_level,
                     *extra_args]
        self.proc: subprocess.Popen | None = None
        self.expected_exit = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> "BridgeProcess":
        out = open(self.stdout_path, "wb")
        err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=self.workdir)
        out.close()
        err.close()
        _PROCS.append(self.proc)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> str | None:
        """The status file's state word: JSON {"status": ...} / {"state": ...}, or the first word."""
        try:
            text = self.status_file.read_text().strip()
        except FileNotFoundError:
            return None
        if not text:
            return None
        if text.startswith("{"):
            try:
                doc = json.loads(text)
                v = doc.get("status", doc.get("state"))
                return str(v).lower() if v is not None else None
            except ValueError:
                return None
        return text.split()[0].strip().lower().rstrip(":,.")

    def wait_status(self, want: str = "connected", timeout: float = 15.0, negate: bool = False) -> float:
        """Wait until status() == want (or != want with negate). Returns the seconds waited."""
        t0 = time.monotonic()
        while True:
            st = self.status()
            if (st != want) if negate else (st == want):
                return time.monotonic() - t0
            if self.proc.poll() is not None and not negate:
                raise AssertionError(f"tether-bridge exited with {self.proc.returncode} (status {st!r})\n"
                                     f"{self.stderr_tail()}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"bridge status is {st!r}, wanted {'not ' if negate else ''}{want!r} "
                                     f"within {timeout}s\n{self.stderr_tail()}")
            time.sleep(0.05)

    def wait_exit(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"tether-bridge still running after {timeout}s\n{self.stderr_tail()}") from None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.expected_exit = True
        if self.alive():
            os.kill(self.proc.pid, sig)
        if sig in (signal.SIGKILL,):
            self.proc.wait(5)

    def stop(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"tether-bridge did not exit within {timeout}s of SIGTERM\n{self.stderr_tail()}")

    def stderr_text(self) -> str:
        return self.stderr_path.read_bytes().decode("utf-8", "replace") if self.stderr_path.exists() else ""

    def stderr_tail(self, n: int = 60) -> str:
        return "\n".join(self.stderr_text().splitlines()[-n:])


@pytest.fixture
def bridge_factory(tmp_path, request):
    """start(relay_or_url, token, target, *extra_args, wait_connected=True, timeout=15) -> BridgeProcess.

    relay_or_url: a Relay (-> ws://127.0.0.1:<port>) or a ws:// URL. The bridge runs with
    --token-file, --target, --status-file and --log-level debug; unless wait_connected=False the
    call returns once the status file says "connected". Teardown: SIGTERM (then SIGKILL); stderr
    is printed when the test failed; a crash in stderr fails the test."""
    if not (BRIDGE_BIN.is_file() and os.access(BRIDGE_BIN, os.X_OK)):
        pytest.fail(f"tether-bridge binary not found or not executable at {BRIDGE_BIN} "
                    f"(build it with `swift build -c release` or set TETHER_BRIDGE)", pytrace=False)
    bridges: list[BridgeProcess] = []

    def start(relay_or_url, token: str, target: str, *extra_args: str, wait_connected: bool = True,
              timeout: float = 15.0, log_level: str = "debug") -> BridgeProcess:
        url = relay_or_url if isinstance(relay_or_url, str) else f"ws://{HOST}:{relay_or_url.port}"
        wd = tmp_path / f"bridge{len(bridges)}"
        wd.mkdir()
        b = BridgeProcess(wd, url, token, target, list(extra_args), log_level)
        bridges.append(b)
        b.start()
        if wait_connected:
            b.wait_status("connected", timeout)
        return b

    yield start

    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    problems = []
    for b in bridges:
        if b.proc is None:
            continue
        if b.alive():
            try:
                b.stop()
            except AssertionError as e:
                problems.append(str(e))
        crashes = [ln for ln in b.stderr_text().splitlines() if CRASH_PATTERNS.search(ln)]
        if crashes and not b.expected_exit:
            problems.append(f"tether-bridge (pid {b.pid}) stderr shows a crash: {crashes[:5]}")
        if failed or problems:
            sys.stderr.write(f"\n----- tether-bridge pid {b.pid} args {b.args} rc {b.proc.returncode}\n"
                             f"----- status file: {b.status()!r}\n----- stderr (tail):\n{b.stderr_tail(80)}\n")
    if problems:
        pytest.fail("tether-bridge teardown problems:\n" + "\n".join(problems), pytrace=False)
