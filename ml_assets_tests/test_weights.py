"""Pretrained weights pulled once and pinned: every source against a server on loopback (a file
server with Range requests, a minimal Hugging Face Hub, moto's S3), never the Internet."""

import hashlib
import json
import struct
import urllib.parse
import uuid
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from servers import FileHandler, loopback_only, moto_server, serving

from ml_assets.data import weights
from ml_assets.data.store import Store, manifest_key, scan
from ml_assets.data.weights import (
    ChecksumError,
    NotPulledError,
    WeightsChangedError,
    pinned,
    pull,
    resolve,
)
from ml_assets.local.weights import weights as weights_command

LFS = (".safetensors", ".bin", ".pt")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def loopback(monkeypatch):
    loopback_only(monkeypatch)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture(scope="module")
def files_server(tmp_path_factory):
    """A loopback file server of a folder the tests write into (``server.root``)."""
    with serving(tmp_path_factory.mktemp("served")) as server:
        yield server


@pytest.fixture
def served(files_server):
    """(server, write(name, data) -> URL); the server's log, drops and headers start empty."""
    files_server.log.clear()
    files_server.drops.clear()
    files_server.headers.clear()

    def write(name: str, data: bytes) -> str:
        path = files_server.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{files_server.url}/{name}"

    return files_server, write


# --- a minimal Hugging Face Hub: the routes snapshot_download and hf_hub_download use ----------


class HubHandler(FileHandler):
    """``GET /api/models/{repo}/revision/{rev}`` (the commit), ``GET /api/models/{repo}/tree/
    {commit}`` (files with their git blob ids and LFS sha256), and ``HEAD``/``GET /{repo}/resolve/
    {commit}/{path}`` (``X-Repo-Commit``; ``ETag``, or ``X-Linked-Etag``/``X-Linked-Size`` for LFS
    files), from ``server.repos[repo] = {"refs": {rev: commit}, "commits": {commit: {path:
    bytes}}}``. A path in ``server.lie`` is served with another file's checksum."""

    def serve_path(self, head: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.server.log.append((self.command, path, self.headers.get("Range")))
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo, what, rev = "/".join(parts[2:4]), parts[4], parts[5]
            commit = self.commit(repo, rev)
            if commit is None:
                return
            files = self.server.repos[repo]["commits"][commit]
            if what == "revision":
                siblings = [{"rfilename": p} for p in files]
                self.send_json({"id": repo, "sha": commit, "siblings": siblings})
            else:
                self.send_json([self.tree_entry(p, data) for p, data in sorted(files.items())])
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, file = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            commit = self.commit(repo, rev)
            if commit is None:
                return
            data = self.server.repos[repo]["commits"][commit].get(file)
            if data is None:
                self.send_error_code(404, "EntryNotFound", {"X-Repo-Commit": commit})
                return
            blob = self.server.root / "blobs" / sha256(data)
            blob.parent.mkdir(exist_ok=True)
            blob.write_bytes(data)
            entry = self.tree_entry(file, b"a lie" if file in self.server.lie else data)
            headers = {"X-Repo-Commit": commit}
            if "lfs" in entry:
                headers |= {
                    "X-Linked-Etag": f'"{entry["lfs"]["oid"]}"',
                    "X-Linked-Size": str(len(data)),
                }
            self.send_file(blob, head, headers, etag=f'"{entry.get("lfs", entry)["oid"]}"')
        else:
            self.send_error_code(404, "RepoNotFound")

    def commit(self, repo: str, rev: str) -> str | None:
        known = self.server.repos.get(repo)
        if known is None:
            self.send_error_code(404, "RepoNotFound")
            return None
        commit = known["refs"].get(rev, rev if rev in known["commits"] else None)
        if commit is None:
            self.send_error_code(404, "RevisionNotFound")
        return commit

    @staticmethod
    def tree_entry(path: str, data: bytes) -> dict:
        blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        entry = {"type": "file", "oid": blob_id, "size": len(data), "path": path}
        if path.endswith(LFS):
            entry["lfs"] = {"oid": sha256(data), "size": len(data), "pointerSize": 134}
        return entry

    def send_json(self, doc) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_error_code(self, status: int, code: str, headers: dict | None = None) -> None:
        body = json.dumps({"error": code}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def commit_id(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


V1, MAIN = commit_id("v1"), commit_id("main")
TINY = {
    "refs": {"v1": V1, "main": MAIN},
    "commits": {
        V1: {"config.json": b'{"model_type": "vit", "v": 1}', "model.safetensors": b"weights one"},
        MAIN: {
            "config.json": b'{"model_type": "vit", "v": 2}',
            "model.safetensors": b"weights two",
            "extra/notes.txt": b"two files share nothing",
        },
    },
}
TIMM = {
    "refs": {"main": commit_id("timm")},
    "commits": {commit_id("timm"): {"pytorch_model.bin": b"resnet18 tensors"}},  # no safetensors
}


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("hub"), HubHandler) as server:
        server.repos = {"org/tiny": TINY, "timm/resnet18.a1_in1k": TIMM}
        server.lie = set()
        yield server


@pytest.fixture
def hub(hub_server, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub_server.log.clear()
    hub_server.lie.clear()
    return hub_server


@pytest.fixture(scope="module")
def s3_server():
    with moto_server() as endpoint:
        yield endpoint


# --- HTTP ----------------------------------------------------------------------------------------


def test_a_url_is_pulled_once_and_a_second_pull_downloads_and_hashes_nothing(
    served, store, monkeypatch
):
    server, write = served
    data = b"pretrained bytes " * 1000
    url = write("models/resnet.pth", data)
    pin = pull(url, store)
    assert pin.fetched and pin.name == "resnet.pth" and pin.kind == "file"
    assert pin.hash == sha256(data) and pin.size == len(data) and pin.source == url
    assert pin.revision  # the server's ETag
    assert pin.path.read_bytes() == data and pin.path.name == "resnet.pth"
    assert store.object_path(pin.hash).read_bytes() == data
    assert [m for m, *_ in server.log] == ["GET"]
    record = orjson.loads((store.root / "weights" / "resnet.pth.json").read_bytes())
    assert record["spec"] == url and record["hash"] == pin.hash and "pulled_at" in record

    server.log.clear()
    monkeypatch.setattr(weights, "hash_file", lambda *_: pytest.fail("hashed again"))
    monkeypatch.setattr(weights, "download", lambda *_: pytest.fail("downloaded again"))
    again = pull(url, store)
    assert not again.fetched and again.to_dict() == pin.to_dict()
    assert server.log == []
    leftovers = [p.name for p in (store.root / "objects").glob(".*")]
    assert all(name.endswith(".lock") for name in leftovers)  # no partial, no state


def test_a_dropped_connection_is_resumed_with_a_range_request(served, store):
    server, write = served
    data = bytes(range(256)) * 4096  # 1 MiB
    url = write("big.bin", data)
    server.drops["/big.bin"] = 300_000
    pin = pull(url, store)
    assert pin.path.read_bytes() == data and pin.hash == sha256(data)
    assert server.log == [("GET", "/big.bin", None), ("GET", "/big.bin", "bytes=300000-")]


def test_a_partial_download_left_by_an_earlier_pull_is_resumed(served, store, monkeypatch):
    server, write = served
    data = b"0123456789" * 50_000
    url = write("half.bin", data)
    server.drops["/half.bin"] = 123_456
    with monkeypatch.context() as one_attempt:  # the loopback guard stays on
        one_attempt.setattr(weights, "ATTEMPTS", 1)
        with pytest.raises(ConnectionError, match="run the pull again to resume after the 123,456"):
            pull(url, store)
    pin = pull(url, store)
    assert pin.path.read_bytes() == data
    assert server.log[-1] == ("GET", "/half.bin", "bytes=123456-")


def test_a_changed_file_on_the_server_restarts_the_resumed_download(served, store, monkeypatch):
    server, write = served
    url = write("moving.bin", b"a" * 200_000)
    server.drops["/moving.bin"] = 50_000
    with monkeypatch.context() as one_attempt:
        one_attempt.setattr(weights, "ATTEMPTS", 1)
        with pytest.raises(ConnectionError):
            pull(url, store)
    write("moving.bin", b"b" * 150_000)  # a new ETag: If-Range fails, the whole file comes
    pin = pull(url, store)
    assert pin.path.read_bytes() == b"b" * 150_000


def test_published_checksums_are_verified(served, store):
    server, write = served
    data = b"checked weights"
    url = write("checked.pt", data)
    with pytest.raises(ChecksumError, match=f"the source published {'0' * 64}: nothing stored"):
        pull(f"{url}#sha256={'0' * 64}", store)
    assert not list((store.root / "weights").glob("*.json"))
    assert pull(f"{url}#sha256={sha256(data)}", store).hash == sha256(data)

    server.headers["/checked.pt"] = {"X-Checksum-Sha256": "1" * 64}
    with pytest.raises(ChecksumError):
        pull(url, store, name="other")
    server.headers["/checked.pt"] = {"X-Linked-Etag": f'"{sha256(data)}"'}
    assert pull(url, store, name="other").hash == sha256(data)


def test_a_different_hash_under_a_pinned_name_is_refused_unless_replace(served, store):
    server, write = served
    first = write("v1/detector.pt", b"first weights")
    second = write("v2/detector.pt", b"second weights")
    old = pull(first, store)
    with pytest.raises(WeightsChangedError, match="pass --replace to pin the new bytes"):
        pull(second, store)
    assert resolve(store, "detector.pt").read_bytes() == b"first weights"
    new = pull(second, store, replace=True)
    assert new.hash == sha256(b"second weights") and new.spec == second
    assert resolve(store, "detector.pt").read_bytes() == b"second weights"
    assert old.path.read_bytes() == b"first weights"  # a snapshot never changes

    write("v2/detector.pt", b"second weights, retrained")  # same spec, new bytes upstream
    assert pull(second, store).hash == new.hash  # a pin is a pin: nothing fetched
    assert pull(second, store, replace=True).hash == sha256(b"second weights, retrained")


def test_resolve_never_downloads_and_names_the_command_that_pulls(served, store):
    with pytest.raises(NotPulledError) as refused:
        resolve(store, "yolo11n.pt")
    assert str(refused.value) == (
        "weights 'yolo11n.pt' are not pulled: run `ml-assets weights pull yolo11n.pt`"
    )
    _, write = served
    url = write("named.pt", b"bytes")
    pin = pull(url, store, name="my-detector")
    assert resolve(store, "my-detector") == pin.path == resolve(store, url)
    assert weights.lookup(store, "my-detector") == pin  # name, hash, path: for lineage
    with pytest.raises(NotPulledError, match="not pulled: run `ml-assets weights pull named.pt`"):
        resolve(store, "named.pt")


# --- local files and folders ---------------------------------------------------------------------


def test_a_local_file_and_folder_are_copied_once(tmp_path, store):
    weights_file = tmp_path / "best.pt"
    weights_file.write_bytes(b"local weights")
    pin = pull(str(weights_file), store)
    assert (pin.name, pin.kind, pin.spec) == ("best.pt", "file", str(weights_file))
    assert pin.path.read_bytes() == b"local weights" and pull(str(weights_file), store) == pin

    weights_file.write_bytes(b"local weights, changed")
    with pytest.raises(WeightsChangedError):
        pull(str(weights_file), store)
    assert pull(str(weights_file), store, replace=True).hash == sha256(b"local weights, changed")

    folder = tmp_path / "vit"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "vit"}')
    (folder / "sub" / "model.safetensors").write_bytes(b"tensors")
    snap = pull(str(folder), store)
    assert snap.kind == "folder" and snap.hash == manifest_key(scan(folder))
    assert (snap.path / "sub" / "model.safetensors").read_bytes() == b"tensors"
    assert snap.path == store.root / "base_models" / snap.hash / "files"
    assert snap.size == len(b"tensors") + len('{"model_type": "vit"}')


# --- S3 ------------------------------------------------------------------------------------------


def test_an_s3_object_is_pulled_through_the_landing_client(s3_server, store, monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3")
    bucket = f"weights-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    data = b"s3 weights " * 500
    client.put_object(
        Bucket=bucket, Key="pretrained/yolo.pt", Body=data, ChecksumAlgorithm="SHA256"
    )
    clients = []

    def factory():
        clients.append(1)
        return boto3.client("s3")

    pin = pull(f"s3://{bucket}/pretrained/yolo.pt", store, client_factory=factory)
    assert (pin.name, pin.hash, pin.path.read_bytes()) == ("yolo.pt", sha256(data), data)
    assert pin.revision and clients == [1]
    assert pull(f"s3://{bucket}/pretrained/yolo.pt", store, client_factory=factory) == pin
    assert clients == [1]  # pinned: no client, no request
    with pytest.raises(OSError, match="S3 download of s3://.*/missing.pt failed: NoSuchKey"):
        pull(f"s3://{bucket}/missing.pt", store)


# --- Hugging Face --------------------------------------------------------------------------------


def test_a_hub_repository_is_pinned_at_the_revision_asked_for(hub, store):
    pin = pull("hf://org/tiny@v1", store)
    assert (pin.name, pin.kind, pin.revision) == ("org/tiny", "folder", V1)
    assert {p.split("/resolve/")[1] for _, p, _ in hub.log if "/resolve/" in p} == {
        f"{V1}/config.json",
        f"{V1}/model.safetensors",
    }
    assert pin.source == f"hf://org/tiny@{V1}"
    assert (pin.path / "model.safetensors").read_bytes() == b"weights one"
    assert json.loads((pin.path / "config.json").read_text())["v"] == 1
    manifest = orjson.loads((pin.path.parent / "manifest.json").read_bytes())
    assert manifest["hash"] == pin.hash and manifest["source"] == "hf://org/tiny@v1"

    latest = pull("hf://org/tiny", store, name="tiny-latest")
    assert latest.revision == MAIN and (latest.path / "extra" / "notes.txt").is_file()
    assert latest.hash != pin.hash

    hub.log.clear()
    assert pull("hf://org/tiny@v1", store) == pin
    assert hub.log == []  # pinned: not one request

    one = pull("hf://org/tiny@v1/model.safetensors", store)
    assert (one.name, one.kind, one.hash) == (
        "org/tiny/model.safetensors",
        "file",
        sha256(b"weights one"),
    )
    assert one.path.read_bytes() == b"weights one"
    assert not list((store.root / "objects").glob(".hf.*"))  # the temporary cache is gone


def test_a_hub_file_that_fails_its_checksum_is_refused(hub, store):
    hub.lie.add("model.safetensors")
    with pytest.raises(ChecksumError, match="does not match the Hub's checksum"):
        pull("hf://org/tiny@v1", store)
    assert pinned(store) == []


def test_a_timm_name_is_pulled_from_where_timm_loads_it(hub, store, served, monkeypatch):
    pin = pull("resnet18.a1_in1k", store)  # timm's hf_hub_id: model.safetensors, else .bin
    assert (pin.name, pin.kind) == ("resnet18.a1_in1k", "file")
    assert pin.hash == sha256(b"resnet18 tensors") and pin.path.name == "pytorch_model.bin"
    assert pin.source == f"hf://timm/resnet18.a1_in1k@{commit_id('timm')}/pytorch_model.bin"
    assert not list((store.root / "objects").glob(".hf.*"))

    import timm.models

    _, write = served
    url = write("timm/old_weights.pth", b"weights on a release page")
    config = timm.models.get_pretrained_cfg("resnet18.a1_in1k")
    config = type(config)(**{**config.__dict__, "hf_hub_id": None, "url": url})
    monkeypatch.setattr(timm.models, "get_pretrained_cfg", lambda name: config)
    older = pull("resnet18.tv_in1k", store)
    assert older.source == url and older.path.read_bytes() == b"weights on a release page"


def test_an_ultralytics_name_is_pulled_from_its_release_url(served, store, monkeypatch):
    server, write = served
    write("assets/v8.4.0/yolo11n-seg.pt", b"segmenter weights")
    monkeypatch.setenv(weights.ULTRALYTICS_URL_ENV, f"{server.url}/assets/v8.4.0")
    pin = pull("yolo11n-seg.pt", store)
    assert pin.name == "yolo11n-seg.pt" and pin.path.read_bytes() == b"segmenter weights"
    assert server.log == [("GET", "/assets/v8.4.0/yolo11n-seg.pt", None)]
    with pytest.raises(ValueError, match="nor a weights name ultralytics publishes"):
        pull("yolo99z.pt", store)


# --- base models, listing, the command -----------------------------------------------------------


def write_base_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "vit", "architectures": ["ViTModel"]}')
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    return folder


def test_base_model_snapshots_are_pins_where_they_always_were(tmp_path, store):
    from ml_assets.train.base_models import named_snapshot, snapshot_base_models

    [record] = snapshot_base_models({"vit-tiny": write_base_model(tmp_path / "vit")}, store)
    [pin] = pinned(store)
    assert (pin.name, pin.kind, pin.hash) == ("vit-tiny", "base_model", record["hash"])
    assert pin.path == named_snapshot(store, "vit-tiny").folder  # the folder did not move
    assert pin.spec == str(tmp_path / "vit") and pin.size == record["size_bytes"]
    assert resolve(store, "vit-tiny") == pin.path


def test_the_command_pulls_and_lists(served, home, tmp_path):
    _, write = served
    url = write("cli/detector.pt", b"command line weights")
    runner = CliRunner()
    first = runner.invoke(weights_command, ["pull", url, "--name", "detector"])
    assert first.exit_code == 0, first.output
    digest = sha256(b"command line weights")
    assert first.output.startswith(f"pulled detector: file {digest} (20 B) from {url}")
    again = runner.invoke(weights_command, ["pull", url, "--name", "detector"])
    assert again.output.startswith("already pulled detector:")

    listed = runner.invoke(weights_command, ["list"])
    head, row = listed.output.splitlines()
    assert head.split() == ["name", "kind", "spec", "hash", "size", "revision", "pulled", "at"]
    assert row.split()[:5] == ["detector", "file", url, digest[:12], "20"]
    [doc] = orjson.loads(runner.invoke(weights_command, ["list", "--json"]).output)
    assert doc["name"] == "detector" and doc["hash"] == digest and doc["size"] == 20
    assert Path(doc["path"]).read_bytes() == b"command line weights"
    assert Path(doc["path"]).is_relative_to(home / "store")
