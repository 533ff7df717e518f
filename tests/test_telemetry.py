"""What operators see: RPC latency histograms and build info on /metrics, JSON log lines for
failed requests and hints a policy ignores, and an OpenTelemetry span per RPC when enabled."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from conftest import ThreadedServer, free_port, make_settings
from kvstore.sdk import AgentSession, Client

from kvstore import __version__
from kvstore.server.process import ServerProcess
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


def test_metrics_carry_rpc_latencies_by_code_and_build_info(tmp_path: Path) -> None:
    port = free_port()
    srv = ThreadedServer(make_settings(tmp_path / "data", metrics_port=port))
    try:
        with Client(srv.address, shared_memory=False) as kv:
            kv.lookup("t", keys=[bytes(32)])
            with pytest.raises(Exception, match="not configured"):
                kv.lookup("nope", keys=[bytes(32)])
        # An aborted call's status goes out before its handler returns and is timed: the client can
        # see the error a moment before the server has counted it.
        deadline = time.monotonic() + 10
        while True:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            if 'code="NOT_FOUND"' in text or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        srv.stop()
    assert 'kvstore_rpc_duration_seconds_count{code="OK",method="Lookup",service="KVStore"} 1.0' in text
    assert (
        'kvstore_rpc_duration_seconds_count{code="NOT_FOUND",method="Lookup",service="KVStore"} 1.0' in text
    )
    assert (
        'kvstore_rpc_duration_seconds_bucket{code="OK",le="0.5",method="Lookup",service="KVStore"} 1.0'
        in text
    )
    build = next(line for line in text.splitlines() if line.startswith("kvstore_build_info{"))
    assert f'version="{__version__}"' in build and 'policy="lru"' in build


def test_json_logs_name_failed_requests_and_hints_the_policy_ignores(tmp_path: Path) -> None:
    config = tmp_path / "kvstore.yaml"
    config.write_text(
        "log_format: json\nnamespaces: [{name: t, model: m, block_tokens: 4, block_bytes: 4096}]\n"
    )
    with ServerProcess(tmp_path / "data", config=config) as server:
        with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError):
            pb_grpc.KVStoreStub(channel).Lookup(pb.LookupRequest(namespace="nope", keys=[bytes(32)]))
        with AgentSession(server.address, namespace="t") as session:
            session.awaiting_user()
            assert session.flush()
            session.user_active()
            assert session.flush()
    records = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    assert records and all({"asctime", "level", "name", "message"} <= set(r) for r in records)
    failed = [r for r in records if r.get("rpc") == "Lookup"]
    assert failed == [failed[0]] and failed[0]["code"] == "NOT_FOUND" and failed[0]["level"] == "INFO"
    ignored = [r for r in records if "ignores them" in r["message"]]
    assert len(ignored) == 1 and ignored[0]["level"] == "WARNING"  # once, not per hint


def test_tracing_exports_a_span_per_rpc(tmp_path: Path) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exported = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the process's provider can be set only once
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    srv = ThreadedServer(make_settings(tmp_path / "data", tracing={"enabled": True}))
    try:
        with Client(srv.address, shared_memory=False) as kv:
            kv.lookup("t", keys=[bytes(32)])
    finally:
        srv.stop()
    names = [span.name for span in exported.get_finished_spans()]
    assert "/kvstore.v1.KVStore/Lookup" in names


def test_the_grafana_dashboard_queries_metrics_the_server_exports(tmp_path: Path) -> None:
    deploy = Path(__file__).resolve().parents[1] / "deploy"
    dashboard = json.loads((deploy / "grafana" / "dashboards" / "kvstore.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    wanted = {name for e in exprs for name in re.findall(r"\bkvstore_[a-z_]+", e)}
    port = free_port()
    srv = ThreadedServer(make_settings(tmp_path / "data", metrics_port=port, policy="agent"))
    try:
        with Client(srv.address, shared_memory=False) as kv, AgentSession(srv.address, namespace="t") as s:
            keys = kv.keys_for("t", range(4 * 40))
            kv.put("t", keys, [bytes(4096)] * len(keys), session=s.id)  # more than HBM holds: moves
            kv.get("t", [bytes(32), *keys[:2]])
            s.awaiting_user()
            assert s.flush()
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        srv.stop()
    exported = set(re.findall(r"^(kvstore_[a-z_]+)", text, re.MULTILINE))
    assert wanted and wanted <= exported, wanted - exported
    scrape = yaml.safe_load((deploy / "prometheus.yml").read_text())["scrape_configs"][0]
    metrics_port = yaml.safe_load((deploy / "kvstore.yaml").read_text())["metrics_port"]
    assert scrape["static_configs"][0]["targets"] == [f"kvstore:{metrics_port}"]
