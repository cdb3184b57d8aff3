"""Instant queries to a Prometheus server's HTTP API (urllib only; no new dependency).

https://prometheus.io/docs/prometheus/latest/querying/api/: GET /api/v1/query?query=...
answers {"status": "success", "data": {"resultType": "vector", "result": [{"metric":
{...}, "value": [time, "text"]}]}}.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from scratch_stage.core.errors import ScratchStageError


class PrometheusError(ScratchStageError):
    """The server could not be asked, or did not answer a query (one line why)."""


def instant_query(base_url: str, promql: str, *, timeout: float = 10.0) -> list[
    tuple[dict[str, str], float]
]:  # fmt: skip
    """The vector PROMQL evaluates to now: (labels, value) per series; NaN values dropped."""
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            answer: Any = json.loads(response.read(16 * 1024 * 1024))
    except urllib.error.HTTPError as e:
        raise PrometheusError(f"{base_url}: HTTP {e.code} for {promql!r}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PrometheusError(f"{base_url} cannot be reached: {reason}") from None
    except ValueError:
        raise PrometheusError(f"{base_url}: the answer is not JSON") from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise PrometheusError(f"{base_url}: query failed: {str(answer)[:200]}")
    data = answer.get("data", {})
    if data.get("resultType") != "vector":
        raise PrometheusError(f"{base_url}: expected a vector for {promql!r}")
    out = []
    for series in data.get("result", []):
        try:
            value = float(series["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if not math.isnan(value):
            out.append(({str(k): str(v) for k, v in series.get("metric", {}).items()}, value))
    return out
