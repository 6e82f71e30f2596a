"""The Docker isolation mode (`--isolation docker`, docs/ISOLATION.md) against a real Docker
engine: dockerd started by this module with its own data and exec roots (no host networking
touched), the session image built from the relay binary by deploy/docker/build-image.sh, real
containers. Bridges are the strict Python tether.v1 bridge (any protocol slip across a park and
resume is a violation), the legacy JSON bridge, and the Swift tether-bridge where reconnecting
matters."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from async_http import IncompleteResponse, bearer, open_request, request
from legacy_client import LegacyBridge
from test_sessions import wait_audit
from test_tunnel_relay import assert_error, blob, bridge, http, make_handler, run, wait_bridges
from tether_testlib import OP_TEXT, ws_expect_close, ws_frame, ws_handshake
from tunnel_fixtures import MiB, legacy_url, session_id

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
RELAY_BIN = Path(os.environ.get("TETHER_RELAY") or REPO / ".build" / "release" / "tether-relay")
# The binary baked into the session image (the ASan pass of scripts/test keeps the release one).
WORKER_BIN = Path(os.environ.get("TETHER_WORKER_BIN") or RELAY_BIN)
IMAGE = "tether-session:test"


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


class Engine:
    """dockerd on a private unix socket, data root and exec root (platform.md: no bridge
    network, no iptables), started and stopped by the tests."""

    def __init__(self, root: Path):
        self.root = root
        self.socket = root / "docker.sock"
        self.log = root / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self.docker_cli = shutil.which("docker")

    @property
    def env(self) -> dict:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}

    def start(self, timeout: float = 30.0) -> None:
        args = ["dockerd", "--host", f"unix://{self.socket}", "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"),
                "--storage-driver", "overlay2", "--bridge=none", "--iptables=false", "--ip-forward=false",
                "--ip-masq=false", "--userland-proxy=false"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dockerd exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if self.ping():
                return
            time.sleep(0.05)
        raise AssertionError(f"dockerd not answering within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def ping(self) -> bool:
        try:
            r = subprocess.run(["curl", "-s", "--max-time", "2", "--unix-socket", str(self.socket), "http://docker/_ping"],
                               capture_output=True, text=True, timeout=5)
            return r.stdout == "OK"
        except subprocess.TimeoutExpired:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, as an operator would (its containers stop with it)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run([self.docker_cli, *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def containers(self, *labels: str) -> list[dict]:
        """Every container (any state) carrying all these labels (`key=value`)."""
        args = ["ps", "-a", "--no-trunc", "--format", "{{json .}}"]
        for label in labels:
            args += ["--filter", f"label={label}"]
        out = self.docker(*args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def inspect(self, name: str) -> dict:
        return json.loads(self.docker("inspect", name).stdout)[0]

    def remove_all(self) -> None:
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)


@pytest.fixture(scope="session")
def engine():
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        pytest.fail("dockerd and docker are needed (Debian package docker.io; scripts/test installs it)", pytrace=False)
    # Short paths: containerd's sockets live under the exec root.
    root = Path(tempfile.mkdtemp(prefix="tdk-", dir="/tmp"))
    e = Engine(root)
    e.start()
    yield e
    if not e.alive():
        e.start()
    e.remove_all()
    e.stop()
    subprocess.run(["umount", "-R", str(root / "exec")], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def image(engine) -> str:
    """The session image, built from the binary under test like an operator would."""
    r = subprocess.run([str(REPO / "deploy" / "docker" / "build-image.sh"), str(WORKER_BIN), IMAGE],
                       capture_output=True, text=True, env=engine.env, timeout=600)
    assert r.returncode == 0, f"build-image.sh failed:\n{r.stdout}\n{r.stderr}"
    config = engine.inspect(IMAGE)["Config"]
    assert config["User"] == "1001:1001"
    return IMAGE


@pytest.fixture
def docker_engine(engine):
    """The engine, running (a test may have stopped it), with no containers left over."""
    if not engine.alive():
        engine.start()
    yield engine


@pytest.fixture
def iso_relay(tunnel_relay_factory, docker_engine, image, request):
    """start(*args, instance=None) -> a relay in Docker isolation mode on the test engine."""
    run_dirs: list[str] = []

    def start(*extra: str, instance: str | None = None, **kw):
        run_dir = tempfile.mkdtemp(prefix="tri-", dir="/tmp")
        run_dirs.append(run_dir)
        relay = tunnel_relay_factory(
            "--isolation", "docker", "--docker-socket", str(docker_engine.socket), "--isolation-image", image,
            "--isolation-run-dir", run_dir, "--isolation-instance", instance or f"it-{uuid.uuid4().hex[:12]}",
            "--isolation-retry-initial", "0.2", "--isolation-retry-max", "1", "--isolation-worker-log-level", "info",
            *extra, **kw)
        relay.run_dir = run_dir
        return relay

    yield start
    for run_dir in run_dirs:
        shutil.rmtree(run_dir, ignore_errors=True)


def metrics(relay) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def session_containers(engine, sub: str) -> list[dict]:
    return engine.containers(f"tether.session={session_id(sub)}")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


async def await_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------
# A request's life through a container, park and revival
# --------------------------------------------------------------------------------------------


def handler_with_headers(name: str):
    """make_handler's paths, plus /headers/<n>: an empty answer with n extra header fields."""
    base = make_handler(name)

    async def handler(s):
        if s.path.startswith("/headers/"):
            n = int(s.path.split("/")[2])
            await s.respond(200, [("x-bridge", name)] + [(f"x-field-{i}", "v" * 40) for i in range(n)])
        else:
            await base(s)

    return handler


def test_streaming_through_a_container_parked_when_idle_and_revived(iso_relay, docker_engine, mint_token):
    relay = iso_relay("--session-idle-timeout", "2", "--tunnel-ping-interval", "0.5")
    tok = mint_token("alice")
    sid = session_id("alice")

    async def main():
        async with bridge(relay, tok, handler=handler_with_headers("alice-desk"), name="alice-desk") as b:
            await wait_bridges(relay, tok, 1)
            # The bridge's connect started the container.
            await await_until(lambda: session_containers(docker_engine, "alice"), 15, "alice's container")

            # Streamed: lines arrive as the bridge sends them, not at the end.
            rs = await open_request(relay.port, "GET", "/api/ollama/chunks/5/300", bearer(tok))
            assert rs.status == 200 and rs.chunked, rs.headers
            arrivals = [t async for _, t in rs.iter_lines()]
            rs.close()
            assert len(arrivals) == 5 and arrivals[-1] - arrivals[0] > 0.9, arrivals

            # Byte-exact both ways, larger than every window on the way (and than the request
            # body limit: responses have none).
            r = await http(relay, "GET", "/api/ollama/blob/24000000/3", tok, timeout=60)
            assert r.status == 200 and r.body == blob(24_000_000, 3), r.describe()
            r = await http(relay, "GET", "/api/ollama/headers/300", tok)
            assert r.status == 200 and sum(1 for k, _ in r.headers if k.startswith("x-field-")) == 300, r.describe()
            upload = blob(3_000_000, 4)
            r = await http(relay, "POST", "/api/ollama/echo", tok, body=upload)
            assert r.status == 200 and r.body == upload, r.describe()
            r = await http(relay, "POST", "/api/ollama/info?token=" + tok, None, body=b"x" * 1000)
            info = r.json()
            headers = {k.lower(): v for k, v in info["headers"]}
            assert "authorization" not in headers and "token=" not in info["target"], info
            assert headers["x-forwarded-for"] == "127.0.0.1" and headers["x-forwarded-proto"] == "http", info

            running = session_containers(docker_engine, "alice")
            assert len(running) == 1 and running[0]["State"] == "running", running
            assert running[0]["Names"] == f"tether-session-{sid}"
            first_id = running[0]["ID"]

            # Idle: the container goes, the bridge stays (and keeps answering the relay's pings).
            await await_until(lambda: not session_containers(docker_engine, "alice"), 20, "the idle container to go")
            await asyncio.sleep(1.5)
            assert not b.closed.is_set(), f"the bridge was dropped: {b.close_code} {b.close_reason}"
            st = await http(relay, "GET", "/api/ollama/bridge/status", tok)
            assert st.json() == {"status": "connected", "bridges": 1}
            assert not os.path.exists(os.path.join(relay.run_dir, sid)), "the session directory outlived its container"

            # The next request starts a new container, transparently.
            t0 = time.monotonic()
            r = await http(relay, "GET", "/api/ollama/blob/2000000/5", tok)
            assert r.status == 200 and r.body == blob(2_000_000, 5), r.describe()
            revived = session_containers(docker_engine, "alice")
            assert len(revived) == 1 and revived[0]["ID"] != first_id
            print(f"cold start request: {time.monotonic() - t0:.3f} s")
            b.assert_clean()

            m = metrics(relay)
            assert m["tether_isolation_starts_total"] >= 2 and m["tether_isolation_parks_total"] >= 1, m
            assert m["tether_isolation_cold_start_seconds_count"] >= 2
            assert m["tether_isolation_bridge_resumes_total"] >= 2
            assert m['tether_isolation_failures_total{reason="container_died"}'] == 0
        assert wait_audit(relay, "isolation_parked") and wait_audit(relay, "isolation_started")

    run(main(), timeout=120)


def test_quota_refusals_inside_the_container_reach_the_relays_metrics(iso_relay, docker_engine, mint_token):
    """The worker enforces the session's quotas; its refusals must still show in the relay's
    tether_quota_rejections_total, exactly, including those just before a park (the worker
    exits right after it)."""
    relay = iso_relay("--rate-limit", "0.2", "--rate-burst", "3", "--session-idle-timeout", "2",
                      "--tunnel-ping-interval", "0.5")
    tok = mint_token("carol")
    rate = 'tether_quota_rejections_total{quota="rate"}'
    refused_429 = 'tether_requests_total{code="429"}'

    async def main():
        async with bridge(relay, tok, name="carol-desk") as b:
            await await_until(lambda: session_containers(docker_engine, "carol"), 15, "carol's container")
            before = metrics(relay)
            codes = []
            for _ in range(8):
                r = await http(relay, "GET", "/api/ollama/info", tok)
                codes.append(r.status)
                if r.status == 429:
                    assert_error(r, 429, "RATE_LIMITED")
            refused = codes.count(429)
            assert refused >= 4 and codes.count(200) >= 1, codes
            # Reported within a fraction of a second, and counted once.
            wait_until(lambda: metrics(relay).get(rate, 0) - before.get(rate, 0) >= refused, 5,
                       "the worker's refusals in the relay's metrics")
            after = metrics(relay)
            assert after[rate] - before.get(rate, 0) == refused, (codes, after[rate], before.get(rate))
            assert after[refused_429] - before.get(refused_429, 0) == refused
            for quota in ("streams", "bridges", "body_size", "capacity"):
                assert after.get(f'tether_quota_rejections_total{{quota="{quota}"}}', 0) == 0, quota

            # One more refusal right before the park: it still arrives.
            r = await http(relay, "GET", "/api/ollama/info", tok)
            assert_error(r, 429, "RATE_LIMITED")
            await await_until(lambda: not session_containers(docker_engine, "carol"), 20, "the idle container to go")
            assert metrics(relay)[rate] - before.get(rate, 0) == refused + 1
            b.assert_clean()

    run(main(), timeout=90)


def test_bridge_errors_caught_in_the_relay_are_counted_by_kind(iso_relay, mint_token):
    """A bridge that has not said HELLO lives in the relay (ParkedBridgeState): broken
    WebSocket framing counts as a WebSocket protocol error and a broken tether.v1 as a tunnel
    protocol error, as they do in process."""
    relay = iso_relay()
    tok = mint_token("dora")
    headers = {"Authorization": f"Bearer {tok}", "Sec-WebSocket-Protocol": "tether.v1"}

    def broken(frame: bytes, code: int) -> None:
        s, r, resp = ws_handshake(relay.port, "/ws/tunnel", headers=headers)
        try:
            assert resp.status == 101, resp.describe()
            s.sendall(frame)
            ws_expect_close(s, r, code)
        finally:
            s.close()

    before = metrics(relay)
    broken(ws_frame(OP_TEXT, b"hello", mask=False), 1002)
    broken(ws_frame(OP_TEXT, b"tether.v1 is binary"), 1003)
    after = wait_until(lambda: (m := metrics(relay))["tether_websocket_protocol_errors_total"]
                       - before["tether_websocket_protocol_errors_total"] >= 1 and m, 5, "the errors counted")
    assert after["tether_websocket_protocol_errors_total"] - before["tether_websocket_protocol_errors_total"] == 1
    assert after["tether_tunnel_protocol_errors_total"] - before["tether_tunnel_protocol_errors_total"] == 1


def test_legacy_bridge_through_a_container_and_a_park(iso_relay, docker_engine, mint_token):
    relay = iso_relay("--session-idle-timeout", "1.5")
    tok = mint_token("lena")

    async def handler(req):
        return 200, {"content-type": "text/plain", "x-path": req.path}, f"legacy {req.method} {req.path} {req.body or ''}"

    async def main():
        async with LegacyBridge(legacy_url(relay), token=tok, handler=handler) as lb:
            assert lb.auth and lb.auth["data"]["success"] is True
            bridge_id = lb.auth["data"]["bridgeId"]
            r = await http(relay, "POST", "/api/ollama/api/chat", tok, body=b"hello")
            assert r.status == 200 and r.body == b"legacy POST /api/chat hello", r.describe()
            await await_until(lambda: not session_containers(docker_engine, "lena"), 20, "the idle container to go")
            r = await http(relay, "GET", "/api/ollama/again?x=1", tok)
            assert r.status == 200 and r.body == b"legacy GET /again?x=1 ", r.describe()
            assert lb.violations == [] and not lb.closed.is_set()
            assert [m["type"] for m in lb.messages].count("auth") == 1, "greeted twice"
            assert lb.auth["data"]["bridgeId"] == bridge_id

    run(main(), timeout=90)


# --------------------------------------------------------------------------------------------
# Limits, and the kernel enforcing them
# --------------------------------------------------------------------------------------------


def _cgroup_limits(pid: int) -> dict[str, str]:
    """memory, pids and cpu limits of a process's cgroups, v2 or v1 (whatever the host runs)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    out = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":
            base = Path("/sys/fs/cgroup") / path
            if (base / "memory.max").exists():
                out["memory"] = (base / "memory.max").read_text().strip()
                out["pids"] = (base / "pids.max").read_text().strip()
                quota, period = (base / "cpu.max").read_text().split()
                out["cpu"] = f"{quota}/{period}"
            continue
        for controller in controllers.split(","):
            base = Path("/sys/fs/cgroup") / controller / path
            if controller == "memory" and (base / "memory.limit_in_bytes").exists():
                out["memory"] = (base / "memory.limit_in_bytes").read_text().strip()
            elif controller == "pids" and (base / "pids.max").exists():
                out["pids"] = (base / "pids.max").read_text().strip()
            elif controller == "cpu" and (base / "cpu.cfs_quota_us").exists():
                out["cpu"] = f"{(base / 'cpu.cfs_quota_us').read_text().strip()}/{(base / 'cpu.cfs_period_us').read_text().strip()}"
    return out


def test_limits_are_applied_to_the_container(iso_relay, docker_engine, mint_token):
    relay = iso_relay("--isolation-memory", "256MiB", "--isolation-cpus", "0.5", "--isolation-pids-limit", "48",
                      "--isolation-file-limit", "1024", instance="limits-relay")
    sub = "user-with-a-private-id@example.com"
    tok = mint_token(sub)
    sid = session_id(sub)

    async def main():
        async with bridge(relay, tok):
            r = await http(relay, "GET", "/api/ollama/info", tok)
            assert r.status == 200, r.describe()
            c = docker_engine.inspect(f"tether-session-{sid}")
            host, config = c["HostConfig"], c["Config"]
            assert host["NetworkMode"] == "none" and config.get("NetworkDisabled") is True
            assert host["ReadonlyRootfs"] is True
            assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
            assert "no-new-privileges" in host["SecurityOpt"]
            assert host["Memory"] == 256 * MiB and host["MemorySwap"] == 256 * MiB
            assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 48
            assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 1024}]
            assert host["Binds"] == [f"{relay.run_dir}/{sid}:/run/tether"]
            assert host["Privileged"] is False and host["IpcMode"] == "private"
            assert config["User"] == "1001:1001"
            ours = {k: v for k, v in config["Labels"].items() if k.startswith("tether.")}
            assert ours == {"tether.session": sid, "tether.relay": "limits-relay"}, config["Labels"]
            assert c["Name"] == f"/tether-session-{sid}"
            # The raw user id is nowhere in the container's definition.
            assert sub not in json.dumps(c) and "private-id" not in json.dumps(c)

            # What the kernel applies to the worker process itself.
            pid = c["State"]["Pid"]
            status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
            assert status["Uid"].split()[:2] == ["1001", "1001"] and status["Gid"].split()[:2] == ["1001", "1001"]
            assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
            assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
            assert _cgroup_limits(pid) == {"memory": str(256 * MiB), "pids": "48", "cpu": "50000/100000"}
            # No network interface but loopback inside.
            net = Path(f"/proc/{pid}/net/dev").read_text()
            assert [ln.split(":")[0].strip() for ln in net.splitlines()[2:]] == ["lo"], net

    run(main())


def test_a_session_over_its_memory_limit_is_killed_and_only_its_user_sees_errors(iso_relay, docker_engine, mint_token):
    # A session memory quota (and so flow-control windows) far above the container's memory: a
    # client that stops reading makes the worker buffer a fast bridge's response until the
    # kernel kills it. (With quotas below the container's memory this cannot happen.)
    relay = iso_relay("--isolation-memory", "64MiB", "--session-memory", "4GiB", "--max-bridges", "2",
                      "--max-streams", "16", "--stream-window", "512MiB", "--tunnel-window", "1GiB")
    tok_a, tok_b = mint_token("greedy"), mint_token("bystander")

    async def flood(s):
        await s.send_response(200, [("content-type", "application/octet-stream")])
        chunk = b"\xab" * MiB
        try:
            for _ in range(1024):
                await s.send_data(chunk)
        except Exception:  # noqa: BLE001 - the stream dies with the container
            pass

    async def handler_a(s):
        if s.path == "/flood":
            await flood(s)
        else:
            await make_handler("greedy")(s)

    async def main():
        events = subprocess.Popen([docker_engine.docker_cli, "events", "--filter", "event=oom", "--format", "{{.Actor.Attributes.name}}"],
                                  stdout=subprocess.PIPE, text=True, env=docker_engine.env)
        try:
            async with bridge(relay, tok_b, name="bystander") as bb, bridge(relay, tok_a, handler=handler_a, name="greedy") as ba:
                assert (await http(relay, "GET", "/api/ollama/info", tok_b)).status == 200
                assert (await http(relay, "GET", "/api/ollama/info", tok_a)).status == 200
                b_container = session_containers(docker_engine, "bystander")[0]["ID"]

                # A client that never reads its response.
                rs = await open_request(relay.port, "GET", "/api/ollama/flood", bearer(tok_a), rcvbuf=4096)
                assert rs.status == 200
                # The bystander is served while the other session blows up.
                for _ in range(5):
                    r = await http(relay, "GET", "/api/ollama/blob/300000/1", tok_b)
                    assert r.status == 200 and r.body == blob(300_000, 1), r.describe()
                    await asyncio.sleep(0.2)
                await await_until(lambda: ba.closed.is_set(), 60, "the greedy session's container to die")
                with pytest.raises(IncompleteResponse):
                    await asyncio.wait_for(rs.read_all(), 30)
                rs.close()

                # The bystander: same container, same bridge, nothing noticed.
                r = await http(relay, "GET", "/api/ollama/blob/1000000/2", tok_b)
                assert r.status == 200 and r.body == blob(1_000_000, 2), r.describe()
                assert session_containers(docker_engine, "bystander")[0]["ID"] == b_container
                assert not bb.closed.is_set()
                bb.assert_clean()
                m = metrics(relay)
                assert m['tether_isolation_failures_total{reason="container_died"}'] == 1, m

            # The greedy user's bridge reconnects: a new container serves it.
            async with bridge(relay, tok_a, name="greedy-again"):
                r = await http(relay, "GET", "/api/ollama/info", tok_a)
                assert r.status == 200, r.describe()
        finally:
            events.terminate()
            oom = events.communicate(timeout=10)[0]
        assert f"tether-session-{session_id('greedy')}" in oom.split(), f"no OOM event for the greedy session: {oom!r}"
        assert f"tether-session-{session_id('bystander')}" not in oom

    run(main(), timeout=200)


# --------------------------------------------------------------------------------------------
# Two users, two containers
# --------------------------------------------------------------------------------------------


def test_two_users_get_two_containers_that_cannot_reach_each_other(iso_relay, docker_engine, mint_token):
    relay = iso_relay()
    tok_a, tok_b = mint_token("ann"), mint_token("bob")
    sid_a, sid_b = session_id("ann"), session_id("bob")

    async def main():
        async with bridge(relay, tok_a, name="ann"), bridge(relay, tok_b, name="bob"):
            ra = await http(relay, "GET", "/api/ollama/info", tok_a)
            rb = await http(relay, "GET", "/api/ollama/info", tok_b)
            assert ra.json()["bridge"] == "ann" and rb.json()["bridge"] == "bob"
            a = docker_engine.inspect(f"tether-session-{sid_a}")
            b = docker_engine.inspect(f"tether-session-{sid_b}")
            assert a["Id"] != b["Id"]
            assert a["HostConfig"]["Binds"] == [f"{relay.run_dir}/{sid_a}:/run/tether"]
            assert b["HostConfig"]["Binds"] == [f"{relay.run_dir}/{sid_b}:/run/tether"]

            def probe(container: str, *paths: str) -> dict[str, str]:
                out = docker_engine.docker("exec", container, "/tether-relay", "isolation-probe", *paths).stdout
                return dict(line.split(" ", 1) for line in out.splitlines())

            own, other = "/run/tether/worker.sock", f"{relay.run_dir}/{sid_b}/worker.sock"
            seen = probe(f"tether-session-{sid_a}", own, other, f"/run/tether/../{sid_b}/worker.sock",
                         relay.run_dir, "/run/tether")
            assert seen[own] == "connected", seen
            assert seen[other] == "No such file or directory", seen
            assert seen[f"/run/tether/../{sid_b}/worker.sock"] == "No such file or directory", seen
            assert seen[relay.run_dir] != "connected" and not seen[relay.run_dir].startswith("listed"), seen
            assert seen["/run/tether"] == "listed 1", seen  # its own socket, nothing else
            # The container cannot plant files in its directory (locked once the socket exists).
            st = os.stat(f"{relay.run_dir}/{sid_a}")
            assert st.st_mode & 0o777 == 0o750 and st.st_gid == 1001
            root = os.stat(relay.run_dir)
            assert root.st_mode & 0o777 == 0o711, oct(root.st_mode)

    run(main())


# --------------------------------------------------------------------------------------------
# Relay restarts, engine failures
# --------------------------------------------------------------------------------------------


def test_orphans_of_a_killed_relay_are_reaped_at_restart(iso_relay, docker_engine, mint_token):
    relay = iso_relay(instance="reaper")
    tok = mint_token("orphan")
    sid = session_id("orphan")
    decoy = f"decoy-{uuid.uuid4().hex[:8]}"
    docker_engine.docker("create", "--name", decoy, "--label", "tether.relay=another-relay", "--label",
                         f"tether.session={sid}", IMAGE)

    async def connect_and_use():
        async with bridge(relay, tok) as b:
            r = await http(relay, "GET", "/api/ollama/info", tok)
            assert r.status == 200, r.describe()
            return b

    try:
        run(connect_and_use())
        assert docker_engine.containers("tether.relay=reaper"), "no container to orphan"
        os.kill(relay.pid, signal.SIGKILL)
        relay.proc.wait(10)
        relay.expected_exit = True
        left = docker_engine.containers("tether.relay=reaper")
        assert len(left) == 1 and left[0]["Names"] == f"tether-session-{sid}", left

        relay.start_again()
        assert docker_engine.containers("tether.relay=reaper") == [], "orphan survived the restart"
        assert docker_engine.containers(f"name={decoy}") or docker_engine.inspect(decoy), "another relay's container was removed"
        assert wait_audit(relay, "isolation_reaped")
        assert metrics(relay)["tether_isolation_reaped_total"] == 1
        # The same name is free again: the session comes back.
        run(connect_and_use())
    finally:
        docker_engine.docker("rm", "-f", decoy, check=False)


def test_engine_stopped_mid_run_gives_clear_503s_then_recovers(iso_relay, docker_engine, mint_token, bridge_factory, standin):
    relay = iso_relay()
    tok = mint_token("weathered")
    desk = bridge_factory(relay, tok, standin)

    async def tags():
        return await http(relay, "GET", "/api/ollama/api/tags", tok)

    r = run(tags())
    assert r.status == 200, r.describe()
    docker_engine.stop()
    assert not docker_engine.alive()

    def unavailable():
        r = run(tags())
        if r.status == 503 and r.error_code() == "ISOLATION_UNAVAILABLE" and "engine_unreachable" in r.json()["error"]["message"]:
            return r
        return None

    r = wait_until(unavailable, 30, "503 ISOLATION_UNAVAILABLE (engine_unreachable)", interval=0.3)
    assert_error(r, 503, "ISOLATION_UNAVAILABLE")
    assert int(r.header("retry-after")) >= 1
    m = metrics(relay)
    assert m['tether_isolation_failures_total{reason="engine_unreachable"}'] >= 1, m
    # The bridge stays connected to the relay meanwhile (parked there).
    desk.wait_status("connected", timeout=15)

    docker_engine.start()

    def served():
        r = run(tags())
        return r if r.status == 200 else None

    r = wait_until(served, 30, "recovery after the engine came back", interval=0.3)
    assert r.json()["models"], r.describe()
    assert desk.alive()


def test_a_container_killed_from_outside_is_noticed_and_replaced(iso_relay, docker_engine, mint_token):
    relay = iso_relay()
    tok = mint_token("victim")
    name = f"tether-session-{session_id('victim')}"

    async def main():
        async with bridge(relay, tok, name="first") as b1:
            assert (await http(relay, "GET", "/api/ollama/info", tok)).status == 200
            killed = docker_engine.inspect(name)["Id"]
            docker_engine.docker("kill", name)
            # Its tunnel lived in the container: the bridge is told to reconnect.
            await await_until(lambda: b1.closed.is_set(), 15, "the bridge of the killed container to be closed")
        await await_until(lambda: metrics(relay)['tether_isolation_failures_total{reason="container_died"}'] == 1, 10,
                          "the loss to be counted")
        async with bridge(relay, tok, name="second"):
            r = await http(relay, "GET", "/api/ollama/info", tok)
            assert r.status == 200 and r.json()["bridge"] == "second", r.describe()
            assert docker_engine.inspect(name)["Id"] != killed
        # A bridge that reconnects to a running container is served at once, not told that no
        # bridge is connected while it is being handed over.
        for n in range(3):
            async with bridge(relay, tok, name=f"again-{n}"):
                r = await http(relay, "GET", "/api/ollama/info", tok)
                assert r.status == 200 and r.json()["bridge"] == f"again-{n}", r.describe()

    run(main(), timeout=90)


def test_sigterm_drains_through_the_worker_and_leaves_no_container(iso_relay, docker_engine, mint_token):
    relay = iso_relay("--drain-timeout", "15", instance="drainer")
    tok = mint_token("drained")

    async def main():
        async with bridge(relay, tok) as b:
            assert (await http(relay, "GET", "/api/ollama/info", tok)).status == 200
            rs = await open_request(relay.port, "GET", "/api/ollama/chunks/8/250", bearer(tok))
            relay.send_signal(signal.SIGTERM)
            # The worker holds the tunnel: it sends the GOAWAY the relay asks for.
            await asyncio.wait_for(b.goaway_event.wait(), 5)
            lines = [line async for line, _ in rs.iter_lines()]
            assert len(lines) == 8, lines
            rs.close()
            await asyncio.wait_for(b.closed.wait(), 20)
            assert b.close_code == 1001, (b.close_code, b.close_reason)
            b.assert_clean()

    run(main(), timeout=60)
    assert relay.proc.wait(30) == 0
    relay.expected_exit = True
    assert docker_engine.containers("tether.relay=drainer") == [], "a container outlived its relay"
    assert os.listdir(relay.run_dir) == [], "a session directory outlived its relay"


def test_missing_image_is_a_clear_503(iso_relay, mint_token):
    relay = iso_relay("--isolation-image", "tether-session:does-not-exist")
    tok = mint_token("imageless")

    async def main():
        async with bridge(relay, tok):
            r = await http(relay, "GET", "/api/ollama/info", tok)
            assert_error(r, 503, "ISOLATION_UNAVAILABLE")
            assert "image_missing" in r.json()["error"]["message"] and "build-image.sh" in r.json()["error"]["message"]
            assert metrics(relay)['tether_isolation_failures_total{reason="image_missing"}'] >= 1

    run(main())


# --------------------------------------------------------------------------------------------
# A start storm
# --------------------------------------------------------------------------------------------


def test_fifty_sessions_started_at_once_stay_within_the_start_cap(iso_relay, docker_engine, mint_token):
    cap = 4
    relay = iso_relay("--isolation-max-starts", str(cap), "--isolation-memory", "64MiB", "--handshake-rate", "0")
    users = [f"storm-{i}" for i in range(50)]
    tokens = {u: mint_token(u) for u in users}

    async def main():
        bridges = [bridge(relay, tokens[u], name=u) for u in users]
        t0 = time.monotonic()
        await asyncio.gather(*(b.__aenter__() for b in bridges))
        try:
            results = await asyncio.gather(*(http(relay, "GET", "/api/ollama/info", tokens[u], timeout=90) for u in users))
            elapsed = time.monotonic() - t0
            assert all(r.status == 200 for r in results), [r.describe() for r in results if r.status != 200][:3]
            assert [r.json()["bridge"] for r in results] == users
            m = metrics(relay)
            assert m["tether_isolation_starts_total"] == 50 and m["tether_isolation_containers"] == 50, m
            assert m["tether_isolation_starts_in_progress_max"] == cap, m
            assert sum(v for k, v in m.items() if k.startswith("tether_isolation_failures_total")) == 0, m
            assert len(docker_engine.containers("tether.relay")) >= 50
            print(f"50 sessions served in {elapsed:.2f} s with at most {cap} starts at once")
            for b in bridges:
                b.assert_clean()
        finally:
            await asyncio.gather(*(b.__aexit__(None, None, None) for b in bridges), return_exceptions=True)

    run(main(), timeout=200)
