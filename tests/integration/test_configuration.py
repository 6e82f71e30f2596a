"""The relay's configuration: YAML file, environment, flags (in that order of precedence),
check-config, generated docs, structured logs, secrets kept out of every output.

Observable behaviour only: the port the relay listens on, 413 for a body over the configured
limit (seen by curl), exit codes and messages of the real binary.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RELAY_BIN, REPO, Relay, RelayStartError, http_get_status
from tether_testlib import HOST, free_port

ADMIN_TOKEN = "admin-token-" + "7f3c9a1be2d84f60a5c1"
JWT_SECRET = "jwt-secret-for-config-tests-0123456789"


class BareRelay(Relay):
    """A relay started with exactly `args` and `env` (no fixture flags), ready on `port`."""

    def __init__(self, workdir: Path, args: list[str], port: int, env: dict[str, str] | None):
        super().__init__(workdir, [], None)
        self.port = port
        self.admin_port = None  # whatever the test's own settings say; readiness is probed on `port`
        self.args = [str(RELAY_BIN), *args]
        self.env = env

    def start(self, ready_timeout: float = 10.0) -> "BareRelay":
        if self.env is None:
            return super().start(ready_timeout)
        saved = dict(os.environ)
        os.environ.update(self.env)  # Popen in Relay.start inherits the environment
        try:
            return super().start(ready_timeout)
        finally:
            os.environ.clear()
            os.environ.update(saved)


@pytest.fixture
def bare_relay(tmp_path, request):
    """start(args, port, env=None) -> a running BareRelay; stopped (SIGTERM, exit 0) at teardown."""
    relays: list[BareRelay] = []

    def start(args: list[str], port: int, env: dict[str, str] | None = None) -> BareRelay:
        wd = tmp_path / f"bare{len(relays)}"
        wd.mkdir()
        r = BareRelay(wd, args, port, env)
        relays.append(r)
        return r.start()

    yield start
    problems = []
    for r in relays:
        if r.proc is None:
            continue
        if r.alive():
            rc = r.stop(signal.SIGTERM)
            if rc != 0:
                problems.append(f"relay exited with {rc}\n{r.stderr_tail()}")
        elif not r.expected_exit:
            problems.append(f"relay died with {r.proc.returncode}\n{r.stderr_tail()}")
        if r.crash_lines():
            problems.append(f"relay crashed: {r.crash_lines()[:5]}")
        r.close_logs()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def relay_cmd(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs the relay binary to completion (check-config, token, config-doc, --help)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([str(RELAY_BIN), *args], capture_output=True, text=True, timeout=30, env=full_env,
                          cwd=cwd, stdin=subprocess.DEVNULL)


def post_status(port: int, size: int) -> int:
    """POST /echo with a `size`-byte body through curl; returns the HTTP status."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "*",
                          "--data-binary", "@-", "-H", "Content-Type: application/octet-stream",
                          f"http://{HOST}:{port}/echo"],
                         input=b"x" * size, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Sources and precedence
# ---------------------------------------------------------------------------------------------


def test_starts_with_no_file_and_no_flags(bare_relay):
    """Embedded defaults: only the port is moved (8080 may be taken on a shared machine)."""
    port = free_port()
    relay = bare_relay([], port, env={"TETHER_PORT": str(port), "TETHER_ADMIN_PORT": "0", "TETHER_CONFIG": ""})
    assert http_get_status(port) == 200
    assert post_status(port, 1024) == 200
    # The default body limit is 10 MiB.
    assert post_status(port, 10 * 1024 * 1024 + 1) == 413
    assert "configuration error" not in relay.stderr_text()


def test_file_only(bare_relay, tmp_path):
    port = free_port()
    cfg = write(tmp_path / "relay.yaml", f"""\
listen:
  host: {HOST}
  port: {port}
admin:
  port: 0
limits:
  max_body_size: 4KiB
""")
    bare_relay(["--config", str(cfg)], port)
    assert post_status(port, 4096) == 200
    assert post_status(port, 4097) == 413


def test_config_file_from_the_environment(bare_relay, tmp_path):
    port = free_port()
    cfg = write(tmp_path / "relay.yaml", f"listen: {{port: {port}}}\nadmin: {{port: 0}}\nlimits: {{max_body_size: 100}}\n")
    bare_relay([], port, env={"TETHER_CONFIG": str(cfg)})
    assert post_status(port, 100) == 200
    assert post_status(port, 101) == 413


def test_environment_overrides_the_file_and_flags_override_the_environment(bare_relay, tmp_path):
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    cfg = write(tmp_path / "relay.yaml", f"""\
listen:
  port: {file_port}
admin:
  port: 0
limits:
  max_body_size: 1KiB
""")
    env = {"TETHER_PORT": str(env_port), "TETHER_MAX_BODY_SIZE": "8KiB"}

    relay = bare_relay(["--config", str(cfg)], env_port, env=env)
    assert http_get_status(file_port, timeout=1.0) is None  # the file's port is not used
    assert post_status(env_port, 8 * 1024) == 200  # the environment's limit, not the file's 1 KiB
    assert post_status(env_port, 8 * 1024 + 1) == 413
    assert relay.stop() == 0
    relay.expected_exit = True

    bare_relay(["--config", str(cfg), "--port", str(flag_port), "--max-body-size", "2048"], flag_port, env=env)
    assert http_get_status(env_port, timeout=1.0) is None
    assert post_status(flag_port, 2048) == 200
    assert post_status(flag_port, 2049) == 413


def test_flags_keep_working_with_the_fixture(relay_factory):
    """The suite's own style: the conftest fixture's flags plus --max-body-size."""
    relay = relay_factory("--max-body-size", "512", "--admin-port", "off")
    assert post_status(relay.port, 512) == 200
    assert post_status(relay.port, 513) == 413


def test_invalid_configuration_refuses_to_start_and_lists_every_error(tmp_path):
    cfg = write(tmp_path / "relay.yaml", "listen:\n  port: 80800\nlimits:\n  max_body_sise: 1\n")
    out = relay_cmd("--config", str(cfg), "--workers", "0", env={"TETHER_HEADER_TIMEOUT": "soon"})
    assert out.returncode == 1, out
    err = out.stderr
    assert "4 configuration errors" in err, err
    assert f"listen.port (from {cfg}:2): must be 0...65535, got 80800" in err
    assert f"limits.max_body_sise (from {cfg}:4): unknown key (did you mean limits.max_body_size?)" in err
    assert "limits.header_timeout (from TETHER_HEADER_TIMEOUT): must be seconds" in err
    assert "listen.workers (from --workers): must be 1...256, got 0" in err


def test_help_lists_every_flag_with_its_key_and_variable():
    out = relay_cmd("--help")
    assert out.returncode == 0, out.stderr
    for line in ("--port <port>", "[listen.port, TETHER_PORT; default 8080; restart]", "--log-module-level",
                 "[auth.jwt_secret, TETHER_JWT_SECRET; default none]", "--admin-token-file"):
        assert line in out.stdout, line


# ---------------------------------------------------------------------------------------------
# check-config
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tls_files(certs, tmp_path):
    return certs.a.cert, certs.a.key


def test_check_config_good_file(tmp_path, tls_files):
    cert, key = tls_files
    token_file = write(tmp_path / "admin-token", ADMIN_TOKEN + "\n")
    cfg = write(tmp_path / "relay.yaml", f"""\
listen: {{host: 127.0.0.1, port: 8080}}
tls: {{port: 8443, cert: {cert}, key: {key}}}
admin: {{token_file: {token_file}}}
auth: {{jwt_secret: {JWT_SECRET}}}
log: {{level: info, format: json, levels: {{tether.tunnel: debug}}}}
""")
    out = relay_cmd("check-config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert f"configuration OK ({cfg})" in out.stdout
    assert "TLS :8443" in out.stdout and "tether.tunnel=debug" in out.stdout
    assert "token set (from " in out.stdout
    assert ADMIN_TOKEN not in out.stdout + out.stderr
    assert JWT_SECRET not in out.stdout + out.stderr


def test_check_config_unknown_key(tmp_path):
    cfg = write(tmp_path / "relay.yaml", "listen:\n  port: 8080\n  hots: 0.0.0.0\n")
    out = relay_cmd("check-config", str(cfg))
    assert out.returncode == 1
    assert f"listen.hots (from {cfg}:3): unknown key (did you mean listen.host?)" in out.stderr, out.stderr
    assert "configuration OK" not in out.stdout


def test_check_config_bad_value(tmp_path):
    cfg = write(tmp_path / "relay.yaml", "tunnel:\n  stream_window: 1KiB\nlog:\n  format: xml\n")
    out = relay_cmd("check-config", str(cfg))
    assert out.returncode == 1
    assert "2 configuration errors" in out.stderr, out.stderr
    assert f"tunnel.stream_window (from {cfg}:2): must be 65536...2147483647 bytes, got 1024" in out.stderr
    assert f"log.format (from {cfg}:4): must be one of text, json, got \"xml\"" in out.stderr


def test_check_config_unreadable_and_broken_certificate(tmp_path, tls_files):
    cert, key = tls_files
    missing = tmp_path / "missing.pem"
    cfg = write(tmp_path / "relay.yaml", f"tls: {{port: 8443, cert: {missing}, key: {key}}}\n")
    out = relay_cmd("check-config", str(cfg))
    assert out.returncode == 1
    assert f"tls.cert (from {cfg}:1): cannot read {missing}: No such file or directory" in out.stderr, out.stderr

    # Readable but not a certificate for this key: TLSContext refuses it, named under tls.cert.
    other = write(tmp_path / "garbage.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    cfg2 = write(tmp_path / "relay2.yaml", f"tls:\n  port: 8443\n  cert: {other}\n  key: {key}\n")
    out = relay_cmd("check-config", str(cfg2))
    assert out.returncode == 1
    assert f"tls.cert (from {cfg2}:3): cannot load the certificate {other}" in out.stderr, out.stderr


def test_check_config_flags_and_environment_after_the_file(tmp_path):
    cfg = write(tmp_path / "relay.yaml", "listen: {port: 8080}\n")
    out = relay_cmd("check-config", str(cfg), "--port", "99999")
    assert out.returncode == 1 and "listen.port (from --port): must be 0...65535, got 99999" in out.stderr
    out = relay_cmd("check-config", str(cfg), env={"TETHER_MAX_SESSIONS": "0", "TETHER_PROT": "1"})
    assert out.returncode == 1 and "limits.max_sessions (from TETHER_MAX_SESSIONS): must be 1...10000000, got 0" in out.stderr
    out = relay_cmd("check-config", str(cfg), env={"TETHER_PROT": "1"})
    assert out.returncode == 0, out.stderr
    assert "warning: TETHER_PROT: unknown variable, ignored (did you mean TETHER_PORT?)" in out.stdout


def test_check_config_quota_and_jwks_files(tmp_path):
    quotas = write(tmp_path / "quotas.json", '{"tiers": {"pro": {"max_streams": "many"}}}')
    jwks = write(tmp_path / "jwks.json", '{"keys": []}')
    cfg = write(tmp_path / "relay.yaml", f"quotas:\n  file: {quotas}\njwks:\n  file: {jwks}\n")
    out = relay_cmd("check-config", str(cfg))
    assert out.returncode == 1
    assert f"quotas.file (from {cfg}:2): {quotas}: tiers.pro.max_streams: expected an integer" in out.stderr, out.stderr
    assert f"jwks.file (from {cfg}:4): " in out.stderr and "contains no keys" in out.stderr


def test_example_file_passes_check_config(tmp_path, tls_files):
    """deploy/tether-relay.yaml as shipped; only the paths of this machine are overridden."""
    cert, key = tls_files
    secret = write(tmp_path / "secret", JWT_SECRET + "\n")
    token = write(tmp_path / "token", ADMIN_TOKEN + "\n")
    example = REPO / "deploy" / "tether-relay.yaml"
    out = relay_cmd("check-config", str(example), "--tls-cert", str(cert), "--tls-key", str(key),
                    "--jwt-secret-file", str(secret), "--admin-token-file", str(token),
                    "--audit-log", str(tmp_path / "audit.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "configuration OK" in out.stdout and "0.0.0.0:8080" in out.stdout
    assert ADMIN_TOKEN not in out.stdout + out.stderr and JWT_SECRET not in out.stdout + out.stderr


def test_committed_doc_is_generated():
    out = relay_cmd("config-doc")
    assert out.returncode == 0
    assert out.stdout == (REPO / "docs" / "CONFIGURATION.md").read_text(), \
        "docs/CONFIGURATION.md is out of date: tether-relay config-doc > docs/CONFIGURATION.md"


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def json_records(relay: Relay) -> list[dict]:
    lines = [ln for ln in relay.stderr_text().splitlines() if ln.strip()]
    assert lines, "the relay logged nothing"
    records = []
    for ln in lines:
        try:
            records.append(json.loads(ln))
        except json.JSONDecodeError as e:
            raise AssertionError(f"not a JSON line: {ln!r}: {e}")
    return records


def test_json_log_lines(relay_factory):
    relay = relay_factory("--log-format", "json", "--admin-port", "off", log_level="debug")
    # A request with hostile bytes in the path and headers, and a malformed one.
    subprocess.run(["curl", "-s", "-o", "/dev/null", "--noproxy", "*", "-H", 'X-Evil: "quoted"\\',
                    f"http://{HOST}:{relay.port}/nope%0a%22%5c"], timeout=10)
    assert relay.stop(signal.SIGTERM) == 0
    relay.expected_exit = True
    records = json_records(relay)
    for rec in records:
        assert {"ts", "level", "logger", "msg"} <= rec.keys(), rec
        assert TS.match(rec["ts"]), rec["ts"]
        assert rec["level"] in ("trace", "debug", "info", "notice", "warning", "error", "critical")
    assert any(r["msg"] == "tether-relay listening" and r["logger"] == "tether.relay" and "http" in r for r in records)
    assert any(r["msg"] == "shutting down" for r in records)


def test_level_per_module(relay_factory):
    """Debug for tether.config only: its debug line appears, tether.relay's does not; and the
    other way round."""
    def debug_loggers(*args: str) -> set[str]:
        relay = relay_factory("--log-format", "json", "--admin-port", "off", *args, log_level="info")
        assert relay.stop(signal.SIGTERM) == 0
        relay.expected_exit = True
        records = json_records(relay)
        assert any(r["level"] == "info" for r in records)
        return {r["logger"] for r in records if r["level"] == "debug"}

    assert debug_loggers("--log-module-level", "tether.config=debug") == {"tether.config"}
    assert debug_loggers("--log-module-level", "tether.relay=debug") == {"tether.relay"}
    assert debug_loggers() == set()


def test_text_log_lines_escape_control_characters(relay_factory):
    relay = relay_factory("--admin-port", "off", log_level="debug")
    assert relay.stop(signal.SIGTERM) == 0
    relay.expected_exit = True
    text = relay.stderr_text()
    assert re.search(r"^\d{4}-\d\d-\d\dT[\d:.]+Z info tether\.relay : .*\] tether-relay listening$", text, re.M), text


# ---------------------------------------------------------------------------------------------
# Secrets and the token subcommand
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env", "file"])
def test_admin_token_never_in_output(bare_relay, tmp_path, how):
    port = free_port()
    base = ["--port", str(port), "--admin-port", "0", "--log-level", "trace", "--log-format", "json"]
    env = {}
    given: list[str] = []
    if how == "flag":
        given = ["--admin-token", ADMIN_TOKEN]
    elif how == "env":
        env["TETHER_ADMIN_TOKEN"] = ADMIN_TOKEN
    else:
        cfg = write(tmp_path / "relay.yaml", f"admin:\n  token: {ADMIN_TOKEN}\n")
        given = ["--config", str(cfg)]
    relay = bare_relay(base + given, port, env=env)
    subprocess.run(["curl", "-s", "-o", "/dev/null", "--noproxy", "*", f"http://{HOST}:{port}/healthz"], timeout=10)
    relay.send_signal(signal.SIGHUP)
    assert relay.stop(signal.SIGTERM) == 0
    relay.expected_exit = True
    output = relay.stderr_text() + relay.stdout_path.read_text()
    assert ADMIN_TOKEN not in output

    # Nor in check-config's summary or errors.
    out = relay_cmd("check-config", *given, env=env)
    assert out.returncode == 0, out.stderr
    assert "token set (from " in out.stdout
    out = relay_cmd("check-config", *given, "--port", "70000", env=env)
    assert out.returncode == 1 and "listen.port (from --port)" in out.stderr
    assert ADMIN_TOKEN not in out.stdout + out.stderr
    if how == "flag":  # a token and a token file from one source: an error that shows neither
        token_file = write(tmp_path / "token", ADMIN_TOKEN + "-other")
        out = relay_cmd("check-config", *given, "--admin-token-file", str(token_file))
        assert out.returncode == 1
        assert "set either admin.token or admin.token_file, not both" in out.stderr, out.stderr
        assert ADMIN_TOKEN not in out.stdout + out.stderr


def test_token_subcommand_uses_the_same_settings(bare_relay, tmp_path):
    """A token minted with the file's secret, issuer and audience is accepted by a relay
    started with that file; one minted with another secret is not."""
    port = free_port()
    secret_file = write(tmp_path / "secret", JWT_SECRET + "\n")
    cfg = write(tmp_path / "relay.yaml", f"""\
listen: {{port: {port}}}
admin: {{port: off}}
auth: {{jwt_secret_file: {secret_file}, issuer: https://issuer.test/, audience: tether}}
""")
    good = relay_cmd("token", "--config", str(cfg), "--sub", "alice", "--ttl", "10m")
    assert good.returncode == 0, good.stderr
    other = relay_cmd("token", "--sub", "alice", "--jwt-secret", "another-secret-0123456789")
    assert other.returncode == 0, other.stderr
    missing = relay_cmd("token", "--sub", "alice", env={"TETHER_JWT_SECRET": ""})
    assert missing.returncode == 1 and "auth.jwt_secret" in missing.stderr

    bare_relay(["--config", str(cfg)], port)

    def status(token: str) -> int:
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "*",
                              "-H", f"Authorization: Bearer {token}",
                              f"http://{HOST}:{port}/api/ollama/bridge/status"], capture_output=True, timeout=10)
        return int(out.stdout)

    assert status(good.stdout.strip()) == 200
    assert status(other.stdout.strip()) == 401
