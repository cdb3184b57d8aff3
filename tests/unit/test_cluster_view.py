"""Cluster view pieces: sinfo feature parsing, and Prometheus' HTTP API through urllib
against a real local HTTP server (answers, errors, NaN)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from scratch_stage.cli import format_cluster
from scratch_stage.host.prometheus import PrometheusError, instant_query
from scratch_stage.slurm.cluster import cached_on, parse_sinfo_features

# `sinfo -h -N -o '%N|%b'` on a two-partition cluster: a node appears once per partition
SINFO = """cn01|ds_imagenet,gpu
cn01|ds_imagenet,gpu
cn02|(null)
cn03|ds_coco,ds_imagenet
cn04|ds_
"""


def test_sinfo_features_give_the_nodes_caching_each_dataset() -> None:
    features = parse_sinfo_features(SINFO)
    assert features == {"cn01": ("ds_imagenet", "gpu"), "cn02": (), "cn03": ("ds_coco",
                        "ds_imagenet"), "cn04": ("ds_",)}  # fmt: skip
    assert cached_on(features) == {"coco": ["cn03"], "imagenet": ["cn01", "cn03"]}


class _Handler(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query).get("query", [""])[0]
        status, body = self.answers.get(query, (400, {"status": "error", "error": "bad"}))
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def vector(*series: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": m, "value": [1.0, v]} for m, v in series]}}  # fmt: skip


def test_instant_query_returns_labels_and_values_and_drops_nan(server: str) -> None:
    _Handler.answers = {"q": (200, vector(({"dataset": "a"}, "0.75"), ({"dataset": "b"}, "NaN")))}
    assert instant_query(server, "q") == [({"dataset": "a"}, 0.75)]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((400, {"status": "error"}), "HTTP 400"),
        ((200, b"<html>"), "not JSON"),
        ((200, {"status": "error", "error": "x"}), "query failed"),
        ((200, {"status": "success", "data": {"resultType": "matrix"}}), "expected a vector"),
    ],
)
def test_instant_query_errors_are_one_line(server: str, answer: Any, message: str) -> None:
    _Handler.answers = {"q": answer}
    with pytest.raises(PrometheusError, match=message) as raised:
        instant_query(server, "q")
    assert "\n" not in str(raised.value)


def test_an_unreachable_server_is_one_line() -> None:
    with pytest.raises(PrometheusError, match="cannot be reached"):
        instant_query("http://127.0.0.1:9", "q", timeout=2)


def test_table_escapes_names_and_says_what_is_unknown() -> None:
    data = {
        "nodes": 3, "prometheus_url": None, "cluster_hit_ratio": None,
        "datasets": [
            {"name": "imagenet", "cached_on": ["cn01", "cn03"], "pending_jobs": 4,
             "hit_ratio": None, "copied_bytes": None},
            {"name": "bad\x1bname", "cached_on": [], "pending_jobs": None, "hit_ratio": 0.5,
             "copied_bytes": 2_000_000},
        ],
    }  # fmt: skip
    text = format_cluster(data, "1h")
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].split() == ["DATASET", "CACHED", "ON", "PENDING", "JOBS", "HIT", "RATIO",
                                "(1h)", "COPIED", "(1h)"]  # fmt: skip
    assert lines[1].split() == ["imagenet", "2:", "cn01,cn03", "4", "-", "-"]
    assert lines[2].split() == ["bad\\x1bname", "-", "?", "50.0%", "1.9", "MiB"]
    assert lines[-1] == "3 node(s); no prometheus_url configured: no hit ratios"
