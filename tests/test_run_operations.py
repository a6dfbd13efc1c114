"""``workspace-fsm run`` as an operator meets it from a shell: a busy probe port, two embedded runners on
one host, an API server that cannot be reached (and then can), a clean exit that leaves nothing behind,
and presets from ``--catalogue``. Every runner here is a separate process on free ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

CLI = [sys.executable, "-m", "workspace_fsm.cli"]
UNREACHABLE = "https://127.0.0.1:1"  # port 1 (tcpmux): nothing listens there on a normal host


class Proc:
    """A command whose stdout and stderr lines are collected as they come (so waiting on one never blocks
    the other); stopped with SIGTERM at the end of the test if it is still running."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                         for s, lines in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, *, stream: str = "out", timeout: float = 60.0) -> re.Match:
        lines = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.p.poll() is not None and not any(t.is_alive() for t in self._readers):
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} on std{stream}; stdout: {self.out}\nstderr: {self.err}")

    def count(self, pattern: str, *, stream: str = "err") -> int:
        return sum(1 for line in list(self.out if stream == "out" else self.err) if re.search(pattern, line))

    def finish(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        rc = self.p.wait(timeout)
        for t in self._readers:
            t.join(5)
        return rc

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop()


def start(procs: list[Proc], *args: str) -> Proc:
    proc = Proc(*args)
    procs.append(proc)
    return proc


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return -1


def wait_for(what: str, check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def write_kubeconfig(path: Path, server: str) -> Path:
    cluster = {"server": server}
    if server.startswith("https:"):
        cluster["insecure-skip-tls-verify"] = True
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }))
    return path


def closed_port() -> int:
    """A port nothing listens on (just released by the system; a server may take it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probes_port(proc: Proc) -> int:
    return int(proc.wait_line(r"probes on port (\d+)").group(1))


def embedded_kubeconfig(proc: Proc) -> Path:
    return Path(proc.wait_line(r"kubeconfig: (\S+)").group(1))


# ---------------------------------------------------------------------------------------------- probe port


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("where", ["kubeconfig", "embedded"])
def test_a_busy_health_port_is_one_line_naming_the_option_and_exit_2(busy_port, tmp_path, where):
    source = (["--embedded"] if where == "embedded"
              else ["--kubeconfig", str(write_kubeconfig(tmp_path / "kubeconfig", UNREACHABLE))])
    p = subprocess.run([*CLI, "run", *source, "--health-port", str(busy_port)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.strip().splitlines() == [
        f"workspace-fsm run: --health-port {busy_port} is already in use (address in use); choose another port, "
        "--health-port auto (a free one) or --health-port 0 (no probes)"], p.stderr
    assert p.stdout == ""  # nothing said it was ready, nothing was started


def test_a_health_port_that_is_not_a_port_is_refused_by_the_parser():
    p = subprocess.run([*CLI, "run", "--health-port", "70000"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--health-port: 70000 is not a port" in p.stderr and "Traceback" not in p.stderr


def test_two_embedded_runners_on_one_host_both_get_ready_on_ports_of_their_own(procs):
    first, second = start(procs, "run", "--embedded", "--time-scale", "300"), start(procs, "run", "--embedded",
                                                                                   "--time-scale", "300")
    ports = [probes_port(first), probes_port(second)]
    assert ports[0] != ports[1]
    for port in ports:
        wait_for(f"/readyz on port {port}", lambda port=port: status(port, "/readyz") == 200)
    kubeconfigs = [embedded_kubeconfig(first), embedded_kubeconfig(second)]
    assert kubeconfigs[0] != kubeconfigs[1]
    assert first.finish() == 0 and second.finish() == 0, (first.err, second.err)


# ------------------------------------------------------------------------------------- unreachable server


def test_an_unreachable_server_is_said_once_retried_quietly_and_not_ready(procs, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", UNREACHABLE)
    runner = start(procs, "run", "--kubeconfig", str(kubeconfig), "--health-port", "auto", "--log-level", "debug")
    port = probes_port(runner)
    line = runner.wait_line(r"cannot reach ", stream="err").string
    assert line.endswith(f"cannot reach {UNREACHABLE}: connection refused; retrying every 2s "
                         f"(check --kubeconfig {kubeconfig} and the server)"), line
    # Every one of the six informers retries at least twice more (at debug level) while nothing new is said.
    wait_for("the informers' quiet retries", lambda: runner.count("still cannot reach") >= 12, timeout=60)
    assert status(port, "/readyz") == 503
    assert status(port, "/healthz") == 200
    assert runner.finish() == 0, runner.err
    assert runner.count(r"cannot reach https://127\.0\.0\.1:1: connection refused; retrying") == 1, runner.err
    assert runner.count("Retrying") == 0, runner.err  # urllib3's own retry warnings
    assert runner.count("Traceback") == 0, runner.err
    assert runner.count("WARNING") == 1, runner.err


def test_a_server_that_comes_up_later_is_said_reachable_once_and_the_runner_gets_ready(procs, tmp_path):
    from workspace_fsm.cli.embedded import crd_paths
    from workspace_fsm.testing import TestAPIServer

    api_port = closed_port()
    server = TestAPIServer(crds=crd_paths(), port=api_port)  # not started: its kubeconfig (HTTPS, CA, token) first
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    runner = start(procs, "run", "--kubeconfig", str(kubeconfig), "--health-port", "auto")
    port = probes_port(runner)
    runner.wait_line("cannot reach ", stream="err")
    assert status(port, "/readyz") == 503
    server.start()
    try:
        runner.wait_line(rf"https://127\.0\.0\.1:{api_port} is reachable again", stream="err")
        wait_for("/readyz", lambda: status(port, "/readyz") == 200)
        assert runner.finish() == 0, runner.err
    finally:
        server.stop()
    assert runner.count("cannot reach ") == 1 and runner.count("reachable again") == 1, runner.err
    assert runner.count("Retrying") == 0, runner.err


# ------------------------------------------------------------------------------------------ clean exits


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_embedded_removes_its_temporary_directory_on_a_clean_exit(procs, sig):
    runner = start(procs, "run", "--embedded", "--time-scale", "300")
    kubeconfig = embedded_kubeconfig(runner)
    assert kubeconfig.is_file()
    wait_for("/readyz", lambda: status(probes_port(runner), "/readyz") == 200)
    assert runner.finish(sig) == 0, runner.err
    assert not kubeconfig.parent.exists()


# ------------------------------------------------------------------------------------------- catalogue

CUSTOM_PRESET = "acme-chat-7b"


def workspace(name: str, preset: str) -> dict:
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name, "namespace": "default"},
            "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"app": name}}},
            "inference": {"preset": {"name": preset}}}


@pytest.fixture
def catalogue_file(tmp_path) -> Path:
    path = tmp_path / "presets.yaml"
    path.write_text(yaml.safe_dump({"presets": [{"name": CUSTOM_PRESET, "type": "text-generation",
                                                 "runtime": "vllm"}]}))
    return path


def test_validate_names_the_catalogue_option_for_an_unknown_preset_and_the_option_works(tmp_path, catalogue_file):
    manifest = tmp_path / "ws.yaml"
    manifest.write_text(yaml.safe_dump(workspace("custom", CUSTOM_PRESET)))
    p = subprocess.run([*CLI, "validate", str(manifest)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "add more with --catalogue FILE" in p.stdout + p.stderr, (p.stdout, p.stderr)
    p = subprocess.run([*CLI, "validate", "--catalogue", str(catalogue_file), str(manifest)], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, (p.stdout, p.stderr)


@pytest.mark.parametrize("command", ["run", "validate"])
def test_an_unreadable_catalogue_is_one_line_and_exit_2(tmp_path, command):
    missing = tmp_path / "nope.yaml"
    extra = ["--health-port", "0"] if command == "run" else [os.devnull]
    p = subprocess.run([*CLI, command, "--catalogue", str(missing), *extra], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2, (p.stdout, p.stderr)
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"workspace-fsm {command}: cannot use --catalogue {missing}: cannot be read"), line


def test_run_with_catalogue_accepts_its_presets_and_names_the_option_for_unknown_ones(procs, catalogue_file):
    from kubernetes import client

    from workspace_fsm.adapters.kubernetes.client import api_client

    runner = start(procs, "run", "--embedded", "--time-scale", "300", "--catalogue", str(catalogue_file))
    kubeconfig = embedded_kubeconfig(runner)
    wait_for("/readyz", lambda: status(probes_port(runner), "/readyz") == 200)
    api = api_client(str(kubeconfig))
    try:
        custom = client.CustomObjectsApi(api)
        for name, preset in (("custom", CUSTOM_PRESET), ("unknown", "no-such-model-xyz")):
            custom.create_namespaced_custom_object("kaito.sh", "v1beta1", "default", "workspaces",
                                                   workspace(name, preset))

        def conditions(name: str) -> list[dict]:
            ws = custom.get_namespaced_custom_object("kaito.sh", "v1beta1", "default", "workspaces", name)
            return (ws.get("status") or {}).get("conditions") or []

        def unknown_reported() -> bool:
            return any(c.get("reason") == "UnknownPreset" for c in conditions("unknown"))

        wait_for("the unknown preset reported", unknown_reported)
        (cond,) = [c for c in conditions("unknown") if c.get("reason") == "UnknownPreset"]
        assert "add more with --catalogue FILE" in cond["message"], cond

        def custom_proceeds() -> bool:
            claims = custom.list_cluster_custom_object("karpenter.sh", "v1", "nodeclaims",
                                                       label_selector="kaito.sh/workspace=custom")
            return bool(claims.get("items"))

        wait_for("a NodeClaim for the Workspace with the catalogue's preset", custom_proceeds)
        assert not any(c.get("reason") == "UnknownPreset" for c in conditions("custom"))
    finally:
        api.close()
    assert runner.finish() == 0, runner.err


# ------------------------------------------------------------------------- how an outage is told (in-process)


def test_connection_failures_are_told_apart_from_answers_and_broken_streams():
    import http.client
    import ssl

    import urllib3
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import MaxRetryError, NameResolutionError, ProtocolError, SSLError

    from workspace_fsm.adapters.kubernetes.informer import connection_failure

    with pytest.raises(MaxRetryError) as refused:
        urllib3.PoolManager(retries=urllib3.Retry(total=0)).request("GET", f"http://127.0.0.1:{closed_port()}/")
    assert connection_failure(refused.value) == "connection refused"
    assert connection_failure(MaxRetryError(None, "/", NameResolutionError("api.example", None, OSError(-2, "x")))) \
        == "host name not found"
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message, untrusted.reason = "self-signed certificate", "CERTIFICATE_VERIFY_FAILED"
    assert connection_failure(MaxRetryError(None, "/", SSLError(untrusted))) \
        == "its TLS certificate is not trusted (self-signed certificate)"
    assert connection_failure(ProtocolError("Connection aborted.", http.client.RemoteDisconnected("closed"))) is None
    assert connection_failure(ApiException(status=500, reason="boom")) is None
    assert connection_failure(ValueError("a bug")) is None


def test_reachability_says_an_outage_once_and_its_end_once_all_informers_are_back(caplog):
    import logging

    from workspace_fsm.adapters.kubernetes.informer import Reachability

    logger = logging.getLogger("test.reachability")
    reach = Reachability("https://api.example:6443", hint="check the server", logger=logger)
    with caplog.at_level(logging.DEBUG, logger="test.reachability"):
        reach.reached("workspaces")  # never failed: nothing to say
        for who in ("workspaces", "jobs", "workspaces"):
            reach.failed(who, "connection refused")
        assert not reach.reachable
        reach.reached("workspaces")
        assert not reach.reachable  # jobs has not connected yet
        reach.reached("jobs")
        assert reach.reachable
        reach.failed("jobs", "connection timed out")
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno > logging.DEBUG]
    assert said == [
        ("WARNING", "cannot reach https://api.example:6443: connection refused; retrying every 2s (check the server)"),
        ("INFO", "https://api.example:6443 is reachable again"),
        ("WARNING", "cannot reach https://api.example:6443: connection timed out; retrying every 2s (check the server)"),
    ]
    assert reach.outages == 2
