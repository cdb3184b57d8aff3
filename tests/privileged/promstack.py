"""Debian's prometheus-node-exporter and prometheus, started on loopback ports in a
temporary directory, each stopped by the PID recorded when it was started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
PROMETHEUS = "/usr/bin/prometheus"
REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "contrib/prometheus/scratch_stage.rules.yml"


def missing() -> str | None:
    for program in (NODE_EXPORTER, PROMETHEUS):
        if not os.access(program, os.X_OK):
            return f"{program} missing (apt install prometheus prometheus-node-exporter)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()  # type: ignore[no-any-return]


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            http_get(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def started(argv: list[str], log: Path, ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """ARGV running (its output in LOG) until READY_URL answers; stopped by its PID."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        wait_http(ready_url, proc)
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def node_exporter(textfile_dir: Path, workdir: Path) -> Iterator[str]:
    """node_exporter with only the textfile collector; its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults", "--collector.textfile",
            f"--collector.textfile.directory={textfile_dir}"]  # fmt: skip
    with started(argv, workdir / "node-exporter.log", url + "/metrics"):
        yield url


@contextlib.contextmanager
def prometheus(targets: list[str], workdir: Path, *, interval: str = "1s") -> Iterator[str]:
    """A Prometheus server scraping TARGETS (host:port) with our rules; its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": interval, "evaluation_interval": interval},
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": targets}]}],
            }
        )
    )  # fmt: skip  (JSON is YAML)
    storage = workdir / "tsdb"
    storage.mkdir()
    argv = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    with started(argv, workdir / "prometheus.log", url + "/-/ready"):
        yield url


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """The result vector of an instant query through the HTTP API."""
    answer = json.loads(
        http_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    )
    assert answer["status"] == "success", answer
    return answer["data"]["result"]  # type: ignore[no-any-return]


def wait_for_query(base: str, promql: str, predicate: Any, timeout: float = 90.0) -> Any:
    """Poll QUERY until PREDICATE(result) is true; the result."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(base, promql)
        if predicate(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql}: still {result}")
        time.sleep(0.5)
