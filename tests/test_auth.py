"""Who may do what, against a real server with a tokens file: tokens, roles, tenants; and the
refusals at start (no auth off loopback, a port or a data dir already taken)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from conftest import BLOCK, ThreadedServer, make_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kvstore.sdk import Client

from kvstore import errors
from kvstore.auth_tokens import entry_yaml, new_token
from kvstore.config import ConfigError, Settings, load_settings
from kvstore.kvctl import main as kvctl
from kvstore.server.app import KVStoreServer
from kvstore.server.auth import check_exposure
from kvstore.server.process import ServerProcess
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

NAMESPACES = [
    {"name": "a-ns", "model": "m", "tenant": "a", "block_tokens": 4, "block_bytes": BLOCK},
    {"name": "b-ns", "model": "m", "tenant": "b", "block_tokens": 4, "block_bytes": BLOCK},
]
ROLES = {
    "engine-a": ("a", "engine"),
    "engine-b": ("b", "engine"),
    "agent-a": ("a", "agent"),
    "agent-b": ("b", "agent"),
    "admin": ("ops", "admin"),
}


def write_tokens(path: Path) -> dict[str, str]:
    tokens = {name: new_token() for name in ROLES}
    entries: list[Any] = []
    for name, (tenant, role) in ROLES.items():
        entries += yaml.safe_load(entry_yaml(tokens[name], tenant, role, name))  # type: ignore[arg-type]
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return tokens


def auth_settings(tmp_path: Path, **overrides: Any) -> tuple[Settings, dict[str, str]]:
    tokens = write_tokens(tmp_path / "tokens.yaml")
    settings = make_settings(
        tmp_path / "data", namespaces=NAMESPACES, auth={"tokens_file": tmp_path / "tokens.yaml"}, **overrides
    )
    return settings, tokens


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[ThreadedServer, dict[str, str]]]:
    settings, tokens = auth_settings(tmp_path)
    srv = ThreadedServer(settings)
    yield srv, tokens
    srv.stop()


def md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def put_chain(
    address: str, token: str, namespace: str, n: int = 3, session: str | None = None
) -> list[bytes]:
    with Client(address, token=token, shared_memory=False) as kv:
        keys = kv.keys_for(namespace, range(4 * n))
        kv.put(namespace, keys, [bytes([i]) * BLOCK for i in range(n)], session=session)
    return keys


def test_no_or_unknown_token_is_unauthenticated(secured: tuple[ThreadedServer, dict[str, str]]) -> None:
    srv, tokens = secured
    with Client(srv.address, token="", shared_memory=False) as kv, pytest.raises(errors.Unauthenticated):
        kv.namespace("a-ns")
    with grpc.insecure_channel(srv.address) as ch:
        kv_stub, admin = pb_grpc.KVStoreStub(ch), pb_grpc.AdminStub(ch)
        get = pb.GetRequest(namespace="a-ns", keys=[b"k" * 16])
        assert code_of(lambda: list(kv_stub.Get(get))) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: admin.Stats(pb.StatsRequest())) == grpc.StatusCode.UNAUTHENTICATED
        wrong = md(new_token())
        assert (
            code_of(lambda: admin.Stats(pb.StatsRequest(), metadata=wrong)) == grpc.StatusCode.UNAUTHENTICATED
        )
        # gRPC health stays open: probes carry no token.
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert admin.Health(pb.HealthRequest(), metadata=md(tokens["agent-b"])).status == "SERVING"


def test_tenants_read_only_their_blocks(
    secured: tuple[ThreadedServer, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, tokens = secured
    keys = put_chain(srv.address, tokens["engine-a"], "a-ns")
    # The owner reads its blocks; the token comes from the environment here.
    monkeypatch.setenv("KVSTORE_TOKEN", tokens["engine-a"])
    with Client(srv.address, shared_memory=False) as kv:
        assert [b[:1] for b in kv.get("a-ns", keys)] == [b"\x00", b"\x01", b"\x02"]  # type: ignore[union-attr]
    with Client(srv.address, token=tokens["engine-b"], shared_memory=False) as kv:
        with pytest.raises(errors.PermissionDenied, match="another tenant"):
            kv.get("a-ns", keys)
        with pytest.raises(errors.PermissionDenied):
            kv.lookup("a-ns", keys=keys)
        with pytest.raises(errors.PermissionDenied):
            kv.delete("a-ns", keys)
        with pytest.raises(errors.PermissionDenied):  # a Put stream into another's namespace stores nothing
            kv.put("a-ns", [b"x" * 16], [b"\x07" * BLOCK])
    assert srv.store.index.get("a-ns", b"x" * 16) is None and len(srv.store.index) == 3
    # An agent may not move block bytes; an engine may not send hints.
    with grpc.insecure_channel(srv.address) as ch:
        get = pb.GetRequest(namespace="a-ns", keys=keys)
        kv_stub = pb_grpc.KVStoreStub(ch)
        denied = grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: list(kv_stub.Get(get, metadata=md(tokens["agent-a"])))) == denied
        lookup = kv_stub.Lookup(pb.LookupRequest(namespace="a-ns", keys=keys), metadata=md(tokens["agent-a"]))
        assert lookup.prefix_blocks == 3
        opened = pb.OpenSessionRequest(session="s", namespace="a-ns")
        hints = pb_grpc.AgentHintsStub(ch)
        assert code_of(lambda: hints.OpenSession(opened, metadata=md(tokens["engine-a"]))) == denied
        # Admin reaches every tenant.
        assert len(list(kv_stub.Get(get, metadata=md(tokens["admin"])))) == 3


def test_listings_show_only_the_callers_tenant(secured: tuple[ThreadedServer, dict[str, str]]) -> None:
    srv, tokens = secured
    put_chain(srv.address, tokens["engine-a"], "a-ns", 3)
    put_chain(srv.address, tokens["engine-b"], "b-ns", 2)
    with grpc.insecure_channel(srv.address) as ch:
        hints, admin = pb_grpc.AgentHintsStub(ch), pb_grpc.AdminStub(ch)
        hints.OpenSession(
            pb.OpenSessionRequest(session="sa", namespace="a-ns"), metadata=md(tokens["agent-a"])
        )
        hints.OpenSession(
            pb.OpenSessionRequest(session="sb", namespace="b-ns"), metadata=md(tokens["agent-b"])
        )

        def sessions(who: str) -> list[str]:
            reply = admin.ListSessions(pb.ListSessionsRequest(), metadata=md(tokens[who]))
            return sorted(s.session for s in reply.sessions)

        assert sessions("agent-a") == ["sa"] and sessions("engine-b") == ["sb"]
        assert sessions("admin") == ["sa", "sb"]

        def blocks(who: str, namespace: str = "") -> tuple[set[str], int]:
            reply = admin.ListBlocks(pb.ListBlocksRequest(namespace=namespace), metadata=md(tokens[who]))
            return {b.namespace for b in reply.blocks}, reply.total

        assert blocks("engine-a") == ({"a-ns"}, 3) and blocks("agent-b") == ({"b-ns"}, 2)
        assert blocks("admin") == ({"a-ns", "b-ns"}, 5)
        assert code_of(lambda: blocks("engine-a", "b-ns")) == grpc.StatusCode.PERMISSION_DENIED

        stats = admin.Stats(pb.StatsRequest(), metadata=md(tokens["engine-b"]))
        assert [ns.name for ns in stats.namespaces] == ["b-ns"] and stats.blocks == 2
        assert sum(t.used_bytes for t in stats.tiers) == 2 * BLOCK
        assert admin.Stats(pb.StatsRequest(), metadata=md(tokens["admin"])).blocks == 5
        # Freeing bytes from a tier moves every tenant's blocks: admin only.
        evict = pb.EvictRequest(tier="hbm", bytes=BLOCK)
        assert (
            code_of(lambda: admin.Evict(evict, metadata=md(tokens["engine-a"])))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert admin.Evict(evict, metadata=md(tokens["admin"])).blocks == 1


def test_hints_on_another_tenants_session_are_denied(secured: tuple[ThreadedServer, dict[str, str]]) -> None:
    srv, tokens = secured
    keys = put_chain(srv.address, tokens["engine-a"], "a-ns")
    denied = grpc.StatusCode.PERMISSION_DENIED
    with grpc.insecure_channel(srv.address) as ch:
        hints = pb_grpc.AgentHintsStub(ch)
        a, b = md(tokens["agent-a"]), md(tokens["agent-b"])
        hints.OpenSession(pb.OpenSessionRequest(session="sa", namespace="a-ns"), metadata=a)
        hints.BindChain(pb.BindChainRequest(session="sa", namespace="a-ns", keys=keys), metadata=a)
        call = hints.BeginToolCall(pb.BeginToolCallRequest(session="sa", tool_name="grep"), metadata=a)
        fan = hints.AnnounceFanout(pb.AnnounceFanoutRequest(session="sa", n=2, ttl_s=60), metadata=a)
        for attempt in (
            lambda: hints.CloseSession(pb.SessionRequest(session="sa"), metadata=b),
            lambda: hints.AwaitingUser(pb.SessionRequest(session="sa"), metadata=b),
            lambda: hints.BeginToolCall(pb.BeginToolCallRequest(session="sa", tool_name="x"), metadata=b),
            lambda: hints.EndToolCall(pb.EndToolCallRequest(call_id=call.call_id), metadata=b),
            lambda: hints.BranchDone(pb.BranchDoneRequest(fanout_id=fan.fanout_id), metadata=b),
            lambda: hints.WaitReady(pb.WaitReadyRequest(session="sa"), metadata=b),
            lambda: hints.OpenSession(pb.OpenSessionRequest(session="sb", namespace="a-ns"), metadata=b),
        ):
            assert code_of(attempt) == denied
        # A data-path call naming another tenant's session is denied too, even in its own namespace.
        get = pb.GetRequest(namespace="b-ns", keys=keys, session="sa")
        assert (
            code_of(lambda: list(pb_grpc.KVStoreStub(ch).Get(get, metadata=md(tokens["engine-b"])))) == denied
        )
    session = srv.store.sessions.sessions["sa"]
    assert session.state.value == "in_tool" and session.blocks == 3


def test_a_hint_queued_behind_another_tenants_open_cannot_reach_its_session(
    secured: tuple[ThreadedServer, dict[str, str]],
) -> None:
    """Hints run in arrival order on one worker: b's BeginToolCall for "x" arrives while "x" is not
    open yet (a's OpenSession for it is queued first). Checked on arrival, it passed and then acted
    on a's session; checked where it acts, under the store's lock, it is denied."""
    srv, tokens = secured
    with grpc.insecure_channel(srv.address) as ch:
        hints = pb_grpc.AgentHintsStub(ch)
        a, b = md(tokens["agent-a"]), md(tokens["agent-b"])
        with srv.store.lock:  # the worker waits: both hints are queued before either runs
            opened = hints.OpenSession.future(
                pb.OpenSessionRequest(session="x", namespace="a-ns"), metadata=a
            )
            time.sleep(0.3)
            begun = hints.BeginToolCall.future(
                pb.BeginToolCallRequest(session="x", tool_name="grep", call_id="c"), metadata=b
            )
            time.sleep(0.3)
        assert opened.result(timeout=10).session == "x"
        with pytest.raises(grpc.RpcError) as err:
            begun.result(timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    session = srv.store.sessions.sessions["x"]
    assert session.tool is None and "c" not in srv.store.sessions.calls


def test_shared_memory_only_for_a_tenant_owning_every_namespace(
    secured: tuple[ThreadedServer, dict[str, str]],
) -> None:
    srv, tokens = secured
    if not srv.server.leases.shared_tiers:
        pytest.skip("no shared memory on this host")
    with Client(srv.address, token=tokens["engine-a"]) as kv:
        assert kv.transport() == "grpc"  # segments hold tenant b's bytes too
        keys = kv.keys_for("a-ns", range(8))
        kv.put("a-ns", keys, [b"\x05" * BLOCK] * 2)
        assert kv.get("a-ns", keys)[1][:1] == b"\x05"  # type: ignore[index,union-attr]
    with Client(srv.address, token=tokens["admin"]) as kv:
        assert kv.transport() == "shm"
    with grpc.insecure_channel(srv.address) as ch:
        reserve = pb.ReserveRequest(namespace="a-ns", blocks=[pb.BlockHeader(key=b"r" * 16, size=BLOCK)])
        call = lambda: pb_grpc.KVStoreStub(ch).Reserve(reserve, metadata=md(tokens["engine-a"]))  # noqa: E731
        assert code_of(call) == grpc.StatusCode.PERMISSION_DENIED
        commit = pb.CommitSlotsRequest(blocks=[pb.SlotBlock(lease_id=1, slot=0, key=b"r" * 16)])
        call = lambda: pb_grpc.KVStoreStub(ch).CommitSlots(commit, metadata=md(tokens["engine-a"]))  # noqa: E731
        assert code_of(call) == grpc.StatusCode.PERMISSION_DENIED


def test_kvctl_and_minted_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    minted = subprocess.run(
        [sys.executable, "-m", "kvstore.cli", "token", "new", "--tenant", "a", "--role", "admin"],
        capture_output=True,
        text=True,
        check=True,
    )
    token = minted.stderr.strip().rsplit(" ", 1)[-1]
    assert token not in minted.stdout and yaml.safe_load(minted.stdout)[0]["role"] == "admin"
    (tmp_path / "tokens.json").write_text(json.dumps({"tokens": yaml.safe_load(minted.stdout)}))
    settings = make_settings(tmp_path / "data", auth={"tokens_file": tmp_path / "tokens.json"})
    srv = ThreadedServer(settings)
    try:
        assert kvctl(["--address", srv.address, "--json", "stats"]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert kvctl(["--address", srv.address, "--token", token, "--json", "stats"]) == 0
        assert json.loads(capsys.readouterr().out)["policy"] == "lru"
    finally:
        srv.stop()


def test_refuses_unauthenticated_on_a_reachable_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0.*without authentication"):
        KVStoreServer(make_settings(tmp_path / "data", host="0.0.0.0"))
    assert not (tmp_path / "data").exists()  # refused before anything was made
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens: [{sha256: nothex, tenant: a, role: engine}]")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        KVStoreServer(make_settings(tmp_path / "data", auth={"tokens_file": bad}))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvstore.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "without authentication" in done.stderr and "Traceback" not in done.stderr


SMALL = ["--shared-memory", "off", "--dram", "16MiB", "--disk", "16MiB"]


def test_deploy_example_starts() -> None:
    """deploy/kvstore.yaml listens on 0.0.0.0 inside a private compose network: it says so."""
    check_exposure(load_settings(Path(__file__).resolve().parents[1] / "deploy" / "kvstore.yaml"))


def _serve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli", "serve", "--data-dir", str(data_dir), *SMALL, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_second_server_on_a_port_or_data_dir_refuses(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "one", args=SMALL) as first:
        port = first.address.rsplit(":", 1)[1]
        done = _serve(tmp_path / "two", "--port", port)
        assert done.returncode != 0 and f"127.0.0.1:{port}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        done = _serve(tmp_path / "one", "--port", "0")
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert str(tmp_path / "one") in done.stderr and f"pid {first.proc.pid}" in done.stderr, done.stderr


def _certs(tmp_path: Path) -> dict[str, bytes]:
    """A CA, a server cert for 127.0.0.1 and a client cert, all signed by the CA (PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def issue(
        cn: str, key: Any, issuer: x509.Name, signer: Any, ca: bool, san: list[Any]
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = issue("kvstore test CA", ca_key, name("kvstore test CA"), ca_key, True, [])
    server = issue(
        "127.0.0.1",
        server_key,
        ca.subject,
        ca_key,
        False,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = issue("engine-a", client_key, ca.subject, ca_key, False, [x509.DNSName("engine-a")])
    out = {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "server": server.public_bytes(serialization.Encoding.PEM),
        "server_key": pem_key(server_key),
        "client": client.public_bytes(serialization.Encoding.PEM),
        "client_key": pem_key(client_key),
    }
    for label, data in out.items():
        (tmp_path / f"{label}.pem").write_bytes(data)
    return out


def test_mutual_tls_with_tokens(tmp_path: Path) -> None:
    pem = _certs(tmp_path)
    tls = {
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server_key.pem",
        "client_ca": tmp_path / "ca.pem",
    }
    settings, tokens = auth_settings(tmp_path, tls=tls)
    srv = ThreadedServer(settings)
    try:
        client_cert = {"private_key": pem["client_key"], "certificate_chain": pem["client"]}
        with Client(
            srv.address,
            token=tokens["engine-a"],
            root_certificates=pem["ca"],
            shared_memory=False,
            **client_cert,
        ) as kv:
            keys = kv.keys_for("a-ns", range(8))
            kv.put("a-ns", keys, [b"\x09" * BLOCK] * 2)
            assert kv.get("a-ns", keys)[0][:1] == b"\x09"  # type: ignore[index]
        # TLS does not stand in for a token, and a client without a certificate is turned away.
        with (
            Client(
                srv.address, token="", root_certificates=pem["ca"], shared_memory=False, **client_cert
            ) as kv,
            pytest.raises(errors.Unauthenticated),
        ):
            kv.namespace("a-ns")
        for kwargs in ({"root_certificates": pem["ca"]}, {}):
            with (
                Client(srv.address, token=tokens["engine-a"], shared_memory=False, timeout=5, **kwargs) as kv,
                pytest.raises(errors.KVStoreError, match="UNAVAILABLE"),
            ):
                kv.namespace("a-ns")
    finally:
        srv.stop()


def test_async_client_and_agent_session_send_the_token(
    secured: tuple[ThreadedServer, dict[str, str]],
) -> None:
    import asyncio

    from kvstore.sdk import AgentSession, AsyncClient

    srv, tokens = secured

    async def roundtrip() -> list[bytes | None]:
        async with AsyncClient(srv.address, token=tokens["engine-b"], shared_memory=False) as kv:
            keys = await kv.keys_for("b-ns", range(8))
            await kv.put("b-ns", keys, [b"\x03" * BLOCK] * 2)
            with pytest.raises(errors.PermissionDenied):
                await kv.get("a-ns", keys)
            return await kv.get("b-ns", keys)  # type: ignore[no-any-return]

    assert [b[:1] for b in asyncio.run(roundtrip())] == [b"\x03", b"\x03"]  # type: ignore[index]
    with AgentSession(srv.address, session_id="sb", namespace="b-ns", token=tokens["agent-b"]) as session:
        session.awaiting_user()
        assert session.flush() and session.healthy
        assert srv.store.sessions.sessions["sb"].state.value == "awaiting_user"
    with AgentSession(srv.address, session_id="sx", namespace="b-ns", token=tokens["agent-a"]) as session:
        assert (
            session.flush()
            and not session.healthy
            and "PERMISSION_DENIED" in (session._sender.last_error or "")
        )
