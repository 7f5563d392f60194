"""The Python package with a collection on a real Milvus server (``milvus://HOST:PORT/NAME``).

The server is the standalone one of the ``milvus`` PyPI package (2.3.5), started here on free
loopback ports as the Rust tests start it (crates/gclip-search/tests/support/milvus_server.rs)
and stopped at the end. It is found through ``GCLIP_MILVUS_SERVER`` (``tools/test.sh``, which
CI runs, installs it with tools/milvus_setup.sh and exports the variable before running these
tests), else in target/milvus-venv. Without either the tests are skipped, saying so; a
``GCLIP_MILVUS_SERVER`` that names no file is a failure, not a skip.
"""

import errno
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

import gclip

ROOT = pathlib.Path(__file__).resolve().parents[3]
OC = ROOT / "tests" / "fixtures" / "models" / "oc-fullvocab"
OC_MODEL = str(OC / "open_clip_model.safetensors")
OC_ARCH = str(OC / "open_clip_config.json")
SECRET = "root:py7secret"


def _server_script():
    named = os.environ.get("GCLIP_MILVUS_SERVER")
    if named:
        return pathlib.Path(named)
    fallback = ROOT / "target" / "milvus-venv" / "bin" / "milvus-server"
    return fallback if fallback.exists() else None


SCRIPT = _server_script()
pytestmark = pytest.mark.skipif(
    SCRIPT is None,
    reason="no Milvus server: set GCLIP_MILVUS_SERVER to a milvus-server script, or install "
    "one into target/milvus-venv with tools/milvus_setup.sh (tools/test.sh, which CI runs, "
    "does both)",
)

# A watcher outside the server's process group stops the group and removes the data folder
# when this process ends without doing it (killed by a timeout): it waits for the end of a pipe
# only this process holds (as the Rust harness does).
_WRAPPER = r"""exec 3<&0
setsid sh -c 'cat >/dev/null; kill -INT -$1; sleep 10; kill -KILL -$1; rm -rf "$2"' \
  watcher $$ "$GCLIP_MILVUS_TEST_DATA" <&3 >/dev/null 2>&1 &
exec "$0" "$@" </dev/null 3<&-"""


# Every port the server listens on is chosen here: its components' defaults (53100, 13333, …)
# lie in the range the system hands out to outgoing connections, and the script checks them only
# on 127.0.0.1 while the server binds every address (a Rust test's two starts both failed on
# ":53100 address already in use" in CI). Ports below that range, free on both loopbacks.
_SERVER_PORTS = [
    "--proxy-port", "--proxy-internal-port", "--root-coord-port", "--query-coord-port",
    "--query-node-port", "--index-coord-port", "--index-node-port", "--data-coord-port",
    "--data-node-port", "--etcd-port",
]


def _hold_on_loopback(port):
    held = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            s = socket.socket(family)
        except OSError:
            continue  # no IPv6 on this machine
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen()
        except OSError as e:
            s.close()
            if family == socket.AF_INET6 and e.errno != errno.EADDRINUSE:
                continue  # no ::1 on this machine
            for h in held:
                h.close()
            return None
        held.append(s)
    return held


def _listen_ports(n):
    try:
        low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = max(low - 1, 2048)
    bottom = max(top - 16384, 1024)
    pool = top - bottom + 1
    seed = os.getpid() ^ time.time_ns()
    held, chosen = [], []
    try:
        for step in range(pool):
            if len(chosen) == n:
                break
            port = bottom + (seed + step * 7919) % pool
            if port in chosen:
                continue
            sockets = _hold_on_loopback(port)
            if sockets:
                held += sockets
                chosen.append(port)
        assert len(chosen) == n, f"only {len(chosen)} free loopback ports below {top}"
        return chosen
    finally:
        for s in held:
            s.close()


# How many times a server that dies while starting is started again, on new ports and a new data
# folder, before the module fails with every attempt's log (as the Rust harness does). Another
# test process may take a chosen port between the choice and the server's start: tools/test.sh
# runs these tests beside the Rust ones, which start servers of their own.
_START_ATTEMPTS = 3


def _stop(proc):
    try:
        os.killpg(proc.pid, 2)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


def _start():
    """One start: (process, port, data folder), or (None, why, data folder) when the server died
    or did not answer within 120 s."""
    ports = _listen_ports(len(_SERVER_PORTS) + 1)
    port, etcd_client, etcd_peer = ports[0], ports[len(_SERVER_PORTS) - 1], ports[-1]
    data = pathlib.Path(tempfile.mkdtemp(prefix=f"gclip-py-milvus-{port}-"))
    peer, client = f"http://127.0.0.1:{etcd_peer}", f"http://127.0.0.1:{etcd_client}"
    (data / "embed-etcd.yaml").write_text(
        f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: default={peer}\nlisten-client-urls: {client}\n"
        f"advertise-client-urls: {client}\n"
    )
    env = dict(
        os.environ,
        GCLIP_MILVUS_TEST_DATA=str(data),
        ETCD_CONFIG_PATH=str(data / "embed-etcd.yaml"),
        ETCD_ENDPOINTS=f"127.0.0.1:{etcd_client}",
    )
    with open(data / "server.log", "wb") as log:
        proc = subprocess.Popen(
            ["sh", "-c", _WRAPPER, str(SCRIPT), "--data", str(data)]
            # A time tick every 10 ms, not 200: each Strong search waits for the next one (as
            # the Rust harness, crates/gclip-search/tests/support/milvus_server.rs).
            + ["--extra-config", "proxy.timeTickInterval=10"]
            + [a for flag, p in zip(_SERVER_PORTS, ports) for a in (flag, str(p))],
            stdin=subprocess.PIPE, stdout=log, stderr=log, env=env, start_new_session=True,
        )
    start = time.monotonic()
    while True:
        # Ready when gclip's own client gets the server's answer: no such collection.
        try:
            gclip.Collection.open(f"milvus://127.0.0.1:{port}/probe")
        except gclip.GclipError as e:
            if "holds no collection" in str(e):
                return proc, port, data
        # The script does not exit when the server dies early: the server's own log says so.
        stderr = data / "logs" / "milvus-stderr.log"
        panicked = stderr.exists() and "\npanic:" in "\n" + stderr.read_text(errors="replace")
        if panicked or proc.poll() is not None or time.monotonic() - start > 120:
            _stop(proc)
            why = "panicked" if panicked else "exited" if proc.poll() is not None else "no answer"
            tail = (data / "server.log").read_text(errors="replace")[-3000:]
            if stderr.exists():
                tail += "\n" + stderr.read_text(errors="replace")[-3000:]
            return None, f"port {port}: {why}\n{tail}", data
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server():
    """The port of a Milvus server started for this module (every port it listens on chosen
    here, its embedded etcd's included, so that it never meets another server's)."""
    if not SCRIPT.exists():
        pytest.fail(f"GCLIP_MILVUS_SERVER={SCRIPT} does not exist (tools/milvus_setup.sh)")
    failures = []
    for attempt in range(1, _START_ATTEMPTS + 1):
        proc, port_or_why, data = _start()
        if proc is not None:
            break
        shutil.rmtree(data, ignore_errors=True)
        failures.append(f"start {attempt}: {port_or_why}")
    else:
        pytest.fail("the Milvus server did not start:\n" + "\n\n".join(failures))
    try:
        yield port_or_why
    finally:
        _stop(proc)
        shutil.rmtree(data, ignore_errors=True)


TITLES = ["a photo of a cat", "a photo of a dog", "a red car", "soup", "a drawing of a cat",
          "a blue car", "a bowl of soup", "a photo of a bird"]


def _documents():
    return [
        # Every title different (same texts would tie, and ties may come in any order).
        {"id": f"d{i}", "title": f"{t} in picture {i}", "price": i * 7 % 20,
         "tenant": "acme" if i % 3 else "globex",
         "tags": ["all", "even"] if i % 2 == 0 else ["all"]}
        for i, t in enumerate(TITLES * 2)
    ]


def _same_hits(milvus, embedded, what):
    assert [h["id"] for h in milvus] == [h["id"] for h in embedded], what
    for m, e in zip(milvus, embedded):
        assert abs(m["score"] - e["score"]) < 1e-4, (what, m, e)
        assert m["fields"] == e["fields"], what


def test_a_milvus_address_answers_as_a_directory_collection(server, tmp_path, monkeypatch):
    monkeypatch.delenv("GCLIP_MILVUS_PARTITION_KEY", raising=False)
    address = f"milvus://127.0.0.1:{server}/py_shop"
    with_token = f"{address}?token={SECRET}"
    c = gclip.Collection.create(with_token, OC_MODEL, arch=OC_ARCH, embed="title")
    # Named by its address, without the token.
    assert c.path == address
    local = gclip.Collection.create(tmp_path / "local", OC_MODEL, arch=OC_ARCH, embed="title")
    docs = _documents()
    for coll in (c, local):
        report = coll.add(docs, batch_size=5)
        assert report["written"] == len(docs) and report["failed"] == []
    assert len(c) == len(docs)
    assert c.get("d3") == local.get("d3")
    assert c.info["model"] == local.info["model"]

    for q in ["a photo of a cat", "soup", "a car"]:
        for f in [None, "price < 10", "tags:even AND NOT tenant = acme", "tenant = acme OR price > 15"]:
            for limit, offset in [(5, 0), (4, 3)]:
                got = c.search(q, filter=f, limit=limit, offset=offset, exact=True)
                want = local.search(q, filter=f, limit=limit, offset=offset, exact=True)
                _same_hits(got, want, (q, f, limit, offset))
    _same_hits(c.search(like="d2", exact=True), local.search(like="d2", exact=True), "like")

    # Writes: an update that re-embeds, a delete; then reopened by its path.
    for coll in (c, local):
        assert coll.update("d1", {"title": "a bowl of soup", "price": 99}) is True
        assert coll.delete(["d4", "nope"]) == 1
    c.close()
    with pytest.raises(gclip.GclipError, match="closed"):
        len(c)
    c = gclip.Collection.open(c.path)
    assert len(c) == len(docs) - 1
    _same_hits(c.search("soup", exact=True), local.search("soup", exact=True), "reopened")
    assert c.get("d1")["fields"]["price"] == 99

    # Errors name the address, never the token.
    for bad in [
        lambda: gclip.Collection.create(with_token, OC_MODEL, arch=OC_ARCH, embed="title"),
        lambda: c.search("soup", hybrid=True),
        lambda: gclip.Collection.open(f"milvus://127.0.0.1:{server}/py_absent?token={SECRET}"),
    ]:
        with pytest.raises(gclip.GclipError) as e:
            bad()
        assert "127.0.0.1:" in str(e.value) and "py7secret" not in str(e.value), str(e.value)
    c.close()
    local.close()


def test_tenants_by_partition_key_from_python(server, monkeypatch):
    address = f"milvus://127.0.0.1:{server}/py_tenants"
    monkeypatch.setenv("GCLIP_MILVUS_PARTITION_KEY", "tenant")
    c = gclip.Collection.create(address, OC_MODEL, arch=OC_ARCH, embed="title")
    monkeypatch.delenv("GCLIP_MILVUS_PARTITION_KEY")
    docs = _documents()[:6] + [{"id": "x1", "title": "soup"}, {"id": "x2", "title": "soup", "tenant": 3}]
    report = c.add(docs, errors="ignore")
    assert report["written"] == 6
    failed = dict(report["failed"])
    assert 'document "x1" has no field "tenant"' in failed["document 6"], failed
    assert "is 3, not a string" in failed["document 7"], failed
    hits = c.search("a photo of a cat", filter="tenant = globex", exact=True)
    assert {h["id"] for h in hits} == {d["id"] for d in docs[:6] if d["tenant"] == "globex"}
    # The key is the collection's: reopened with no variable, it still refuses such documents.
    c.close()
    c = gclip.Collection.open(address)
    with pytest.raises(gclip.GclipError, match='no field "tenant"'):
        c.add([{"id": "x3", "title": "soup"}])
    assert len(c) == 6
    c.close()


def test_scalar_fields_and_partitions_from_python(server, tmp_path, monkeypatch):
    address = f"milvus://127.0.0.1:{server}/py_scalar"
    settings = {
        "GCLIP_MILVUS_PARTITION_KEY": "tenant",
        "GCLIP_MILVUS_PARTITIONS": "4",
        "GCLIP_MILVUS_SCALAR_FIELDS": "price:int",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    c = gclip.Collection.create(address, OC_MODEL, arch=OC_ARCH, embed="title")
    for name in settings:
        monkeypatch.delenv(name)
    local = gclip.Collection.create(tmp_path / "local", OC_MODEL, arch=OC_ARCH, embed="title")
    docs = _documents()
    for coll in (c, local):
        report = coll.add(docs, batch_size=5)
        assert report["written"] == len(docs) and report["failed"] == []
    # Filters on the declared field read its INT64 field, with the directory's answers.
    for f in ["price < 10.5", "price = 7 AND tenant = acme", "price >= 14 OR tags:even",
              "NOT price = '14'"]:
        for limit, offset in [(5, 0), (4, 3)]:
            got = c.search("a photo of a cat", filter=f, limit=limit, offset=offset, exact=True)
            want = local.search("a photo of a cat", filter=f, limit=limit, offset=offset, exact=True)
            assert want or offset, f
            _same_hits(got, want, (f, limit, offset))
    # A document whose declared field has another type is refused alone, naming it.
    report = c.add([{"id": "x1", "title": "soup", "tenant": "acme", "price": 2.5},
                    {"id": "x2", "title": "soup", "tenant": "acme", "price": 3}], errors="ignore")
    assert report["written"] == 1
    failed = dict(report["failed"])
    assert 'document "x1": field "price"' in failed["document 0"], failed
    assert "is 2.5, not a whole number" in failed["document 0"], failed
    c.close()
    # The declarations are the collection's; asking for others is refused, naming both.
    monkeypatch.setenv("GCLIP_MILVUS_PARTITIONS", "8")
    with pytest.raises(gclip.GclipError, match="was created with 4 partitions"):
        gclip.Collection.open(address)
    monkeypatch.setenv("GCLIP_MILVUS_PARTITIONS", "5000")
    with pytest.raises(gclip.GclipError, match="from 1 to 4096"):
        gclip.Collection.open(address)
    monkeypatch.delenv("GCLIP_MILVUS_PARTITIONS")
    c = gclip.Collection.open(address)
    assert len(c) == len(docs) + 1
    c.close()
    local.close()
