"""S3 landing against a real S3 API server on loopback (moto in server mode, one per module)."""

import uuid

import dagster as dg
import pytest
from click.testing import CliRunner
from servers import moto_server

from ml_assets.cli import main
from ml_assets.data import landing as landing_module
from ml_assets.data.landing import WRITING
from ml_assets.data.store import Store
from ml_assets.defs import automation, datasets
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome

KEY_ID = "AKIAH10AKEYIDVALUE77"
SECRET = "h10a-secret-value-never-shown-9f3e"


@pytest.fixture(scope="module")
def s3_server():
    """``python -m moto.server`` on a free loopback port, in its own process session."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_server, monkeypatch, home):
    """A fresh bucket; the endpoint and credentials in the standard AWS variables; returns
    (boto3 client, landing URL)."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "ML_ASSETS_LANDING"):
        monkeypatch.delenv(variable, raising=False)
    client = boto3.client("s3")
    bucket = f"landing-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, f"s3://{bucket}/drops"


def upload(client, url: str, folder, name: str, only=None) -> list[str]:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if only is None or rel in only:
            client.put_object(Bucket=bucket, Key=f"{prefix}/{name}/{rel}", Body=path.read_bytes())
            keys.append(rel)
    return keys


def tick(instance, home, cursor=None):
    # Entered: the context closes what it opened (an instance it enters on first use) on exit.
    resources = {"home": home}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return automation.landing_sensor(context)


def test_a_new_drop_settles_then_becomes_the_version_its_content_names(
    s3, home, tiny_sample, tree_digest, monkeypatch, tmp_path
):
    client, url = s3
    resource = MLAssetsHome(root=str(home), landing=url)
    files = sorted(p.relative_to(tiny_sample).as_posix() for p in tiny_sample.rglob("*.png"))
    with dg.instance_for_test() as instance:
        assert "no visible files" in tick(instance, resource).skip_reason.skip_message

        upload(client, url, tiny_sample, "shapes", only=set(files[:5]))  # being written
        first = tick(instance, resource)
        assert "shapes: 5 files, changed" in first.skip_reason.skip_message
        upload(client, url, tiny_sample, "shapes")
        second = tick(instance, resource, first.cursor)
        assert (
            not second.run_requests
            and "shapes: 13 files, changed" in second.skip_reason.skip_message
        )
        assert not list(home.glob("store/versions/*"))

        downloads = []
        opened = landing_module.S3Opener.__call__
        monkeypatch.setattr(
            landing_module.S3Opener, "__call__", lambda o: downloads.append(str(o)) or opened(o)
        )
        third = tick(instance, resource, second.cursor)
        [request] = third.run_requests
        key = request.partition_key
        assert key == Store(tmp_path / "local").register(tiny_sample)  # local or S3: one key
        assert request.run_key == f"ingest-{key}" and request.tags["ml_assets/dataset"] == "shapes"
        assert len(downloads) == 13 and all(d.startswith(f"{url}/shapes/") for d in downloads)
        assert resource.store.landing_of(key) == f"{url}/shapes"
        instance.add_dynamic_partitions(dataset_versions.name, [key])

        downloads.clear()
        quiet = tick(instance, resource, third.cursor)
        assert f"shapes: 13 files, unchanged: version {key}" in quiet.skip_reason.skip_message
        assert downloads == []  # an unchanged listing reads nothing

        result = dg.materialize(
            [datasets.raw_dataset],
            partition_key=key,
            resources={"home": resource},
            instance=instance,
        )
        assert result.success and downloads == []  # the sensor stored every object already
        assert tree_digest(resource.store.files_dir(key)) == tree_digest(tiny_sample)


def test_same_content_no_new_version_a_changed_object_a_new_one(s3, home, tiny_sample, monkeypatch):
    client, url = s3
    resource = MLAssetsHome(root=str(home), landing=url)
    bucket = url[len("s3://") :].split("/")[0]
    upload(client, url, tiny_sample, "shapes")
    with dg.instance_for_test() as instance:
        cursor = tick(instance, resource).cursor
        settled = tick(instance, resource, cursor)
        key = settled.run_requests[0].partition_key
        instance.add_dynamic_partitions(dataset_versions.name, [key])

        # The same content again, through `ml-assets ingest --replace`: no new version.
        runner = CliRunner()
        out = runner.invoke(
            main, ["ingest", str(tiny_sample), "--name", "shapes", "--landing", url]
        )
        assert out.exit_code == 1 and "already exists: pass --replace" in out.output
        out = runner.invoke(
            main, ["ingest", str(tiny_sample), "--name", "shapes", "--landing", url, "--replace"]
        )
        assert out.exit_code == 0, out.output
        cursor = settled.cursor
        for _ in range(2):
            again = tick(instance, resource, cursor)
            assert not again.run_requests and f"version {key}" in again.skip_reason.skip_message
            cursor = again.cursor

        downloads = []
        opened = landing_module.S3Opener.__call__
        monkeypatch.setattr(
            landing_module.S3Opener, "__call__", lambda o: downloads.append(str(o)) or opened(o)
        )
        client.put_object(Bucket=bucket, Key="drops/shapes/annotations.json", Body=b'{"x": 1}')
        moving = tick(instance, resource, cursor)
        assert (
            not moving.run_requests
            and "shapes: 13 files, changed" in moving.skip_reason.skip_message
        )
        changed = tick(instance, resource, moving.cursor)
        [request] = changed.run_requests
        assert request.partition_key != key
        assert downloads == [f"{url}/shapes/annotations.json"]  # only what is new is copied
        assert resource.store.manifest(request.partition_key) != resource.store.manifest(key)


def test_an_upload_in_progress_is_never_a_version(s3, home, tiny_sample):
    client, url = s3
    resource = MLAssetsHome(root=str(home), landing=url)
    bucket = url[len("s3://") :].split("/")[0]
    upload(client, url, tiny_sample, "shapes")
    client.put_object(Bucket=bucket, Key=f"drops/shapes/{WRITING}", Body=b"")
    with dg.instance_for_test() as instance:
        cursor = None
        for _ in range(3):
            result = tick(instance, resource, cursor)
            assert not result.run_requests
            assert "still being written by ml-assets ingest" in result.skip_reason.skip_message
            cursor = result.cursor
        client.delete_object(Bucket=bucket, Key=f"drops/shapes/{WRITING}")
        first = tick(instance, resource, cursor)
        assert not first.run_requests
        assert len(tick(instance, resource, first.cursor).run_requests) == 1


def test_ingest_to_s3_and_the_resource_configuration(s3, s3_server, home, tiny_sample, monkeypatch):
    client, url = s3
    bucket = url[len("s3://") :].split("/")[0]
    monkeypatch.setenv("ML_ASSETS_LANDING", url)
    out = CliRunner().invoke(main, ["ingest", str(tiny_sample)])
    assert out.exit_code == 0, out.output
    assert f"{url}/{tiny_sample.name}" in out.output
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"drops/{tiny_sample.name}/")
    assert len(listed["Contents"]) == 13  # the marker is gone

    # Endpoint and credentials from the resource's configuration instead of the environment.
    for variable in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable)
    resource = MLAssetsHome(
        root=str(home),
        s3_endpoint_url=s3_server,
        s3_region="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    with dg.instance_for_test() as instance:
        first = tick(instance, resource)
        (request,) = tick(instance, resource, first.cursor).run_requests
        # Objects missing from the store are fetched again through the resource's client.
        key = request.partition_key
        entries = resource.store.manifest(key)
        for entry in entries:
            resource.store.object_path(entry.sha256).unlink(missing_ok=True)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        result = dg.materialize(
            [datasets.raw_dataset],
            partition_key=key,
            resources={"home": resource},
            instance=instance,
        )
        (event,) = result.asset_materializations_for_node("raw_dataset")
        assert event.metadata["new_objects"].value == len({e.sha256 for e in entries})


def test_credentials_never_reach_logs_messages_metadata_or_tags(
    s3, home, tiny_sample, caplog, capfd
):
    client, url = s3
    resource = MLAssetsHome(root=str(home), landing=url)
    upload(client, url, tiny_sample, "shapes")
    shown = []
    with dg.instance_for_test() as instance:
        first = tick(instance, resource)
        second = tick(instance, resource, first.cursor)
        key = second.run_requests[0].partition_key
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        result = dg.materialize(
            [datasets.raw_dataset],
            partition_key=key,
            resources={"home": resource},
            instance=instance,
            tags=second.run_requests[0].tags,
        )
        shown += [repr(first), repr(second), repr(second.run_requests), first.cursor]
        for event in result.all_events:
            shown.append(repr(event))
        stored = instance.fetch_materializations(datasets.raw_dataset.key, limit=10).records
        shown += [repr(record.event_log_entry) for record in stored]
        for run in instance.get_runs():
            shown.append(repr(run.tags))
    # A missing bucket and a wrong endpoint fail with a message naming the place, not the keys.
    missing = MLAssetsHome(root=str(home), landing="s3://no-such-bucket-h10a/x")
    with dg.instance_for_test() as instance, pytest.raises(Exception) as error:
        tick(instance, missing)
    assert "NoSuchBucket" in str(error.value)
    shown.append(str(error.value))
    out = CliRunner().invoke(main, ["ingest", str(tiny_sample), "--landing", "s3://no-such-b/x"])
    assert out.exit_code == 1 and out.output.startswith("error: S3 ")
    shown.append(out.output)
    shown += [caplog.text, *capfd.readouterr()]
    shown += [p.read_text(errors="replace") for p in home.rglob("*.json") if p.is_file()]
    text = "\n".join(shown)
    assert url in text  # the places are named
    assert KEY_ID not in text and SECRET not in text


def test_mlflow_artifacts_go_to_an_s3_artifact_location(s3, s3_server, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from ml_assets.train.tracking import Tracking, tracking_uri

    client, url = s3
    bucket = url[len("s3://") :].split("/")[0]
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)  # MLflow's own variable
    (tmp_path / "mlflow").mkdir()
    uri = tracking_uri(tmp_path / "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test: Tracking sets it
    # An experiment whose artifact location is S3 (what a server with
    # --default-artifact-root s3://... creates): Tracking uses it as it finds it.
    MlflowClient(uri).create_experiment("image_classifier", f"s3://{bucket}/mlflow")
    with Tracking(uri).run("image_classifier", "fold-0", {"ml_assets/fold": "0"}) as run:
        mlflow.log_text("weights would go here", "model/notes.txt")
    assert run.info.artifact_uri.startswith(f"s3://{bucket}/mlflow/")
    listed = client.list_objects_v2(Bucket=bucket, Prefix="mlflow/")["Contents"]
    assert [o["Key"] for o in listed] == [f"mlflow/{run.info.run_id}/artifacts/model/notes.txt"]
