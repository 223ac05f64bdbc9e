"""Who may do what (issue 20): a read-only webserver refuses what changes state, no credential is
written where the deployment ships it, and `make ui` listens on loopback only. (A gate reported
passed by hand promotes nothing: test_promotion.py, beside the launch past a failed gate.)

The webserver here is a real `dagster-webserver --read-only` (the chart's `enableReadOnly`
deployment runs the same command) on a free loopback port, with the repository's workspace.
"""

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest
import requests
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.config import pg_config
from dev_server import graphql, stop_group
from servers import free_port, wait_for

from ml_assets.defs.partitions import dataset_versions

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = [
    K8S / "values.yaml",
    K8S / "ingress.yaml",
    K8S / "serve.yaml",
    K8S / "mlflow.yaml",
    K8S / "oauth2-proxy.yaml",
]
INSTANCES = [
    ROOT / "dagster.yaml",
    ROOT / "deploy" / "postgres" / "dagster.yaml",
    K8S / "dagster.yaml",
]
LOCATION = "ml_assets"
REPOSITORY = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
ANSWER = "__typename ... on UnauthorizedError { message } ... on PythonError { message }"


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    """(port, DAGSTER_HOME) of `dagster-webserver --read-only` once its code location loaded."""
    home = tmp_path_factory.mktemp("read-only")
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, "ML_ASSETS_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}
    port = free_port()
    command = [str(Path(sys.executable).parent / "dagster-webserver"), "--read-only"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", str(ROOT / "workspace.yaml")]
    log = home / "webserver.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, cwd=dagster_home, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:

        def loaded():
            try:
                data = graphql(port, "{ workspaceOrError { ... on Workspace { locationEntries {"
                               " locationOrLoadError { __typename } } } } }")  # fmt: skip
            except (requests.RequestException, AssertionError):
                return False
            entries = data["workspaceOrError"]["locationEntries"]
            kinds = [
                e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"] for e in entries
            ]
            assert "PythonError" not in kinds, log.read_text()
            return kinds == ["RepositoryLocation"]

        wait_for("the read-only webserver and its code location", loaded, 120, 1, server)
        yield port, dagster_home
    finally:
        stop_group(server)


def mutate(port: int, query: str, variables: dict) -> dict:
    (answer,) = graphql(port, query, variables).values()
    return answer


def test_the_read_only_webserver_refuses_launches_wipes_deletes_and_reported_checks(read_only):
    port, dagster_home = read_only
    data = graphql(port, "{ assetNodes { assetKey { path } } }")
    assert {"path": ["raw_dataset"]} in [n["assetKey"] for n in data["assetNodes"]]
    asset = {"path": ["raw_dataset"]}
    refused = {
        "launchRun": mutate(
            port,
            f"mutation($p: ExecutionParams!) {{ launchRun(executionParams: $p) {{ {ANSWER} }} }}",
            {
                "p": {
                    "selector": {**REPOSITORY, "jobName": "__ASSET_JOB", "assetSelection": [asset]}
                }
            },
        ),
        "launchPartitionBackfill": mutate(
            port,
            "mutation($p: LaunchBackfillParams!) "
            f"{{ launchPartitionBackfill(backfillParams: $p) {{ {ANSWER} }} }}",
            {"p": {"assetSelection": [asset], "allPartitions": True}},
        ),
        "wipeAssets": mutate(
            port,
            "mutation($k: [PartitionsByAssetSelector!]!) "
            f"{{ wipeAssets(assetPartitionRanges: $k) {{ {ANSWER} }} }}",
            {"k": [{"assetKey": asset}]},
        ),
        "deleteDynamicPartitions": mutate(
            port,
            "mutation($r: RepositorySelector!, $n: String!, $k: [String!]!) "
            "{ deleteDynamicPartitions(repositorySelector: $r, partitionsDefName: $n, "
            f"partitionKeys: $k) {{ {ANSWER} }} }}",
            {"r": REPOSITORY, "n": dataset_versions.name, "k": ["abcdef123456"]},
        ),
        "reportAssetCheckEvaluations": mutate(
            port,
            "mutation($p: ReportAssetCheckEvaluationsParams!) "
            f"{{ reportAssetCheckEvaluations(eventParams: $p) {{ {ANSWER} }} }}",
            {
                "p": {
                    "assetKey": {"path": ["image_classifier_final"]},
                    "checkName": "beats_champion",
                    "passed": True,
                    "partitionKeys": ["abcdef123456"],
                }
            },
        ),
    }
    for name, answer in refused.items():
        assert answer["__typename"] == "UnauthorizedError", (name, answer)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert not instance.get_runs() and not instance.get_backfills()
    # What the read-only UI still does: read.
    assert graphql(port, "{ runsOrError { ... on Runs { results { runId } } } }")


# Names that hold a credential, and keys that only name where one is kept (a Secret's name).
SECRETISH = re.compile(
    r"(?i)(password|passwd|secret|token|api_?key|access_?key|credential|private_?key|"
    r"(database|db|pg|postgres)_?ur[li]|dsn)"
)
REFERENCE = re.compile(
    r"(?i)(secret_?name|existing_?secret|env_?secrets|secret_?ref|secret_?key_?ref)$"
)
URL_WITH_PASSWORD = re.compile(r"[a-z][\w+.-]*://[^\s/:@]+:[^\s/@]+@")


def secret_mounts(tree) -> dict[str, str]:
    """mountPath -> Secret name of every volume from a Secret in the pod specs of ``tree``."""
    found = {}
    for pod in walk_dicts(tree):
        volumes = {
            v["name"]: v["secret"]["secretName"] for v in pod.get("volumes") or [] if "secret" in v
        }
        for container in pod.get("containers") or []:
            for mount in container.get("volumeMounts") or []:
                if mount["name"] in volumes:
                    found[mount["mountPath"]] = volumes[mount["name"]]
    return found


def walk_dicts(tree):
    if isinstance(tree, dict):
        yield tree
        for value in tree.values():
            yield from walk_dicts(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from walk_dicts(value)


def literal_credentials(tree, mounts: dict[str, str], where: str = "") -> list[str]:
    """Every place of ``tree`` where a credential is written rather than referenced."""
    bad = []
    if isinstance(tree, dict):
        if {"name", "value"} <= set(tree) and SECRETISH.search(str(tree["name"])):
            value = str(tree["value"])  # a k8s EnvVar: only a path into a mounted Secret
            if not any(value.startswith(path.rstrip("/") + "/") for path in mounts):
                bad.append(f"{where}: env {tree['name']} has a literal value")
        for key, value in tree.items():
            if key in ("name", "value"):
                continue
            # A scalar is written; a mapping (dagster's `{env: NAME}`, a secretKeyRef, a Secret
            # volume) is walked on; flags (generatePostgresqlPasswordSecret) say nothing.
            written = isinstance(value, str | int) and not isinstance(value, bool) and value != ""
            if SECRETISH.search(str(key)) and not REFERENCE.search(str(key)) and written:
                bad.append(f"{where}.{key}: literal {type(value).__name__}")
            bad += literal_credentials(value, mounts, f"{where}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            bad += literal_credentials(value, mounts, f"{where}[{i}]")
    elif isinstance(tree, str):
        if URL_WITH_PASSWORD.search(tree):
            bad.append(f"{where}: a URL with a password")
        name, sep, _ = tree.partition("=")  # NAME=VALUE in env_vars / envVars
        if sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name) and SECRETISH.search(name):
            bad.append(f"{where}: {name} set literally")
    return bad


@pytest.mark.parametrize("path", MANIFESTS + INSTANCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_credentials_are_referenced_never_written(path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    mounts = secret_mounts(documents)
    assert not literal_credentials(documents, mounts)
    # The walker catches what it should (a guard against a test that passes on anything).
    planted = {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}], "postgres_url": "x"}
    assert len(literal_credentials(planted, mounts)) == 2
    assert literal_credentials({"env_vars": ["HF_TOKEN=x", "ML_ASSETS_HOME=/d"]}, {}) != []


def test_secrets_of_the_values_and_manifests_are_secrets_named_by_reference():
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    assert (
        values["global"]["postgresqlSecretName"] and not values["generatePostgresqlPasswordSecret"]
    )
    assert "postgresqlPassword" not in values["postgresql"]
    (serve, service) = yaml.safe_load_all((K8S / "serve.yaml").read_text())
    (container,) = serve["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    tokens_file = Path(env["ML_ASSETS_SERVE_TOKENS"])
    assert secret_mounts(serve) == {str(tokens_file.parent): "ml-assets-serve-tokens"}
    assert env["ML_ASSETS_SERVE_OPEN_PATHS"] == "/health,/ready,/metrics"
    assert "ML_ASSETS_SERVE_CORS_ORIGINS" not in env  # CORS off
    assert container["command"] == ["ml-assets", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert service["spec"]["type"] == "ClusterIP"
    proxy = yaml.safe_load((K8S / "oauth2-proxy.yaml").read_text())
    assert proxy["config"] == {"existingSecret": "oauth2-proxy"}


def test_planted_credentials_never_reach_a_file_the_deployment_ships(tmp_path, monkeypatch):
    planted = {
        "AWS_ACCESS_KEY_ID": "planted-AKIA0000",
        "AWS_SECRET_ACCESS_KEY": "planted-aws-secret",
        "DAGSTER_PG_URL": "postgresql+psycopg2://dagster:planted-pg-password@db:5432/dagster",
        "HF_TOKEN": "planted-hf-token",
        "ML_ASSETS_SERVE_TOKENS": str(tmp_path / "planted-token-file"),
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    # The instance files resolve the URL from the environment, in memory only.
    for folder in (K8S, ROOT / "deploy" / "postgres"):
        config, _ = dagster_instance_config(str(folder))
        resolved = process_config(dg.Shape(pg_config()), config["storage"]["postgres"])
        assert resolved.success and resolved.value["postgres_url"] == planted["DAGSTER_PG_URL"]
    # What `make ui` writes into a fresh home with the environment set.
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
    env = {**os.environ, "ML_ASSETS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    ready = [str(Path(sys.executable).parent / "ml-assets"), "ready-instance"]
    subprocess.run(ready, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)

    shipped = [p for p in (ROOT / "deploy").rglob("*") if p.is_file()]
    shipped += build_context(ROOT) + [p for p in home.rglob("*") if p.is_file()]
    assert len(shipped) > 20
    secrets = [v.encode() for k, v in planted.items() if k != "ML_ASSETS_SERVE_TOKENS"]
    for path in shipped:
        data = path.read_bytes()
        assert not [s for s in secrets if s in data], path
    # The image sets no credential either (ENV/ARG lines of the Dockerfile).
    dockerfile = (K8S / "Dockerfile").read_text()
    for line in re.findall(r"^(?:ENV|ARG)\s+(.+(?:\\\n.+)*)", dockerfile, flags=re.MULTILINE):
        names = re.findall(r"([A-Z_][A-Z0-9_]*)=", line) or [line.split()[0]]
        assert not [n for n in names if SECRETISH.search(n)], line


def build_context(root: Path) -> list[Path]:
    """The files `docker build -f deploy/k8s/Dockerfile .` copies into the image: its COPY
    sources, less what Dockerfile.dockerignore excludes (its patterns, matched per path)."""
    dockerfile = (K8S / "Dockerfile").read_text()
    sources = [
        s
        for line in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.MULTILINE)
        for s in line.split()
    ]
    ignore = [
        p.strip()
        for p in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]

    def ignored(relative: Path) -> bool:
        for pattern in ignore:
            if pattern.startswith("**/"):  # any file or folder of that name, at any depth
                if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in relative.parts):
                    return True
            elif relative.parts[: len(Path(pattern).parts)] == Path(pattern).parts:
                return True
        return False

    files = []
    for source in sources:
        start = root / source
        for path in [start] if start.is_file() else start.rglob("*"):
            if path.is_file() and not ignored(path.relative_to(root)):
                files.append(path)
    return files


def test_the_image_leaves_credentials_files_out_of_its_build_context(tmp_path):
    ignore = (K8S / "Dockerfile.dockerignore").read_text().split()
    for pattern in (".ml_assets", "**/.env", "**/.aws", "**/*.pem"):
        assert pattern in ignore, pattern
    # A credentials file dropped in the copied package stays out of the image.
    root = tmp_path / "repo"
    shutil.copytree(
        ROOT / "ml_assets", root / "ml_assets", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "setup.cfg", "constraints.txt", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, root / name)
    for planted in ("ml_assets/.env", "ml_assets/.aws/credentials", "ml_assets/tls.pem"):
        (root / planted).parent.mkdir(parents=True, exist_ok=True)
        (root / planted).write_text("planted")
    copied = {str(p.relative_to(root)) for p in build_context(root)}
    assert "ml_assets/definitions.py" in copied
    assert not {"ml_assets/.env", "ml_assets/.aws/credentials", "ml_assets/tls.pem"} & copied


def test_make_ui_and_make_mlflow_listen_on_loopback_only():
    dry = subprocess.run(
        ["make", "-n", "ui", "mlflow"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    dagster = re.findall(r"bin/dagster\S*\" dev (.*)", dry)
    mlflow = re.findall(r"bin/mlflow ui (.*)", dry)
    assert len(dagster) == 1 and len(mlflow) == 2, dry
    for command in dagster + mlflow:
        hosts = re.findall(r"(?:-h|--host)[ =](\S+)", command)
        assert hosts == ["127.0.0.1"], command
    (said,) = [line for line in dry.splitlines() if line.startswith('echo "Dagster UI')]
    assert "loopback only" in said and "0.0.0.0" not in dry


# Keys of the Dagster chart's values schema (helm/dagster/schema: subschema/webserver.py, whose
# model forbids other keys). dagster-k8s does not ship the chart's schema, so these are copied
# from it; the chart has no `extraManifests`, hence ingress.yaml, serve.yaml and mlflow.yaml
# beside it.
CHART_WEBSERVER = {
    "replicaCount", "image", "nameOverride", "pathPrefix", "service", "workspace", "env",
    "envConfigMaps", "envSecrets", "deploymentLabels", "labels", "nodeSelector", "affinity",
    "tolerations", "podSecurityContext", "securityContext", "resources", "readinessProbe",
    "livenessProbe", "startupProbe", "annotations", "enableReadOnly", "dbStatementTimeout",
    "dbPoolRecycle", "logLevel", "schedulerName", "volumeMounts", "volumes",
}  # fmt: skip
AUTH = "nginx.ingress.kubernetes.io/auth-"
EDITORS, VIEWERS = "ml-editors", "ml-viewers"
# ingress-nginx's annotation validation (internal/ingress/annotations/parser/validators.go):
# auth-url is a URL of these characters only (URLIsValidRegex; no `%`, so no encoded commas),
# auth-signin may add nginx variables (URLWithNginxVariableRegex).
NGINX_URL = re.compile(r"^[-._~a-zA-Z0-9/:,?&=]*$")
NGINX_URL_WITH_VARIABLES = re.compile(r"^[-._~a-zA-Z0-9/:, ?&=$]*$")


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def ingresses() -> dict[str, dict]:
    """Every Ingress the deployment creates by hand, by name (ingress.yaml, mlflow.yaml)."""
    found = {}
    for path in (K8S / "ingress.yaml", K8S / "mlflow.yaml"):
        for doc in documents(path):
            if doc["kind"] == "Ingress":
                assert doc["metadata"]["name"] not in found
                found[doc["metadata"]["name"]] = doc
    return found


def backends(ingress: dict) -> dict[str, set[tuple[str, int]]]:
    """host -> the (Service, port) pairs its rules route to (a default backend counts for all)."""
    spec = ingress["spec"]
    assert "defaultBackend" not in spec, "a default backend serves every host"
    routes = {}
    for rule in spec["rules"]:
        assert rule.get("host"), "a rule without host serves every host"
        routes.setdefault(rule["host"], set()).update(  # two rules of one host: both count
            (p["backend"]["service"]["name"], p["backend"]["service"]["port"]["number"])
            for p in rule["http"]["paths"]
        )
    return routes


def allowed_groups(ingress: dict) -> set[str]:
    """The groups oauth2-proxy's /oauth2/auth lets through for this Ingress (none: any session)."""
    url = urlsplit(ingress["metadata"]["annotations"][AUTH + "url"])
    assert url.path == "/oauth2/auth" and url.hostname.endswith(".svc.cluster.local")
    (groups,) = parse_qs(url.query, strict_parsing=True)["allowed_groups"]
    return set(groups.split(","))


def webserver_services() -> tuple[tuple[str, int], tuple[str, int]]:
    """The chart's (Service, port) of the full and of the read-only webserver for the release
    the README installs: `<release>-webserver[-read-only]` (helm/dagster/templates/helpers/
    _helpers.tpl, dagster.webserver.fullname)."""
    readme = (K8S / "README.md").read_text()
    (release,) = set(re.findall(r"helm upgrade --install (\S+) dagster/dagster", readme))
    webserver = yaml.safe_load((K8S / "values.yaml").read_text())["dagsterWebserver"]
    name = f"{release}-{webserver.get('nameOverride') or 'webserver'}"
    port = webserver["service"]["port"]
    return (name, port), (f"{name}-read-only", port)


def test_the_full_ui_lets_in_editors_only_and_the_read_only_ui_routes_only_to_read_only():
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    webserver = values["dagsterWebserver"]
    assert webserver["enableReadOnly"] is True and set(webserver) <= CHART_WEBSERVER
    # The chart's one Ingress for both hosts (one set of annotations) stays off.
    assert values["ingress"] == {"enabled": False} and "extraManifests" not in values
    full, read_only = webserver_services()
    assert full == ("dagster-webserver", 80) and read_only == ("dagster-webserver-read-only", 80)

    found = ingresses()
    routes = {name: backends(ingress) for name, ingress in found.items()}
    reaching = {name for name, r in routes.items() if any(full in s for s in r.values())}
    reaching_read_only = {
        name for name, r in routes.items() if any(read_only in s for s in r.values())
    }
    assert reaching == {"ml-assets-dagster-webserver"}
    assert reaching_read_only == {"ml-assets-dagster-webserver-read-only"}
    # The full UI: one host, the full webserver only, editors only.
    (full_ingress,) = [found[n] for n in reaching]
    assert list(routes["ml-assets-dagster-webserver"].values()) == [{full}]
    assert allowed_groups(full_ingress) == {EDITORS}
    # The read-only UI: one host, the read-only webserver only, viewers and editors.
    (read_only_ingress,) = [found[n] for n in reaching_read_only]
    assert list(routes["ml-assets-dagster-webserver-read-only"].values()) == [{read_only}]
    assert allowed_groups(read_only_ingress) == {VIEWERS, EDITORS}
    # MLflow has no read-only mode: editors only, like the full UI.
    assert allowed_groups(found["ml-assets-mlflow"]) == {EDITORS}
    # Viewers reach nothing that is not read-only.
    for name, ingress in found.items():
        if VIEWERS in allowed_groups(ingress):
            assert set().union(*routes[name].values()) == {read_only}, name
    # The guard sees a shared Ingress for what it is (a test that passes on anything is none).
    shared = {"spec": {"rules": [
        {"host": "a", "http": {"paths": [{"backend": {"service": {"name": n, "port": {"number": p}}}}]}}
        for n, p in (full, read_only)
    ]}}  # fmt: skip
    assert backends(shared) == {"a": {full, read_only}}


def test_every_ui_is_reached_only_through_the_sign_in_proxy():
    proxy = yaml.safe_load((K8S / "oauth2-proxy.yaml").read_text())
    args = proxy["extraArgs"]
    # Groups in the session, for allowed_groups: the OIDC groups scope and claim.
    assert args["provider"] == "oidc" and args["oidc-groups-claim"] == "groups"
    assert {"openid", "email", "groups"} <= set(args["scope"].split())
    (sign_in_host,) = proxy["ingress"]["hosts"]
    found = ingresses()
    assert len(found) == 3
    for name, ingress in found.items():
        annotations = ingress["metadata"]["annotations"]
        assert ingress["spec"]["ingressClassName"] == "nginx", name
        assert allowed_groups(ingress) <= {EDITORS, VIEWERS} and allowed_groups(ingress), name
        url = annotations[AUTH + "url"]
        assert url.startswith("http://oauth2-proxy.ml-assets.svc.cluster.local/oauth2/auth?")
        assert NGINX_URL.fullmatch(url), url
        signin = annotations[AUTH + "signin"]
        assert signin.startswith(f"https://{sign_in_host}/oauth2/start?rd=https://$host")
        assert NGINX_URL_WITH_VARIABLES.fullmatch(signin), signin
        assert annotations[AUTH + "response-headers"] == "X-Auth-Request-User,X-Auth-Request-Email"
        hosts = set(backends(ingress))
        tls = {h for entry in ingress["spec"]["tls"] for h in entry["hosts"]}
        assert hosts == tls, name  # every host on TLS
        assert all(h.endswith(args["cookie-domain"]) for h in hosts), name
    # The validation refuses an encoded comma: the groups are listed with a plain one.
    assert not NGINX_URL.fullmatch("http://o.svc.cluster.local/oauth2/auth?allowed_groups=a%2Cb")


def test_no_host_is_served_by_two_ingresses_and_every_service_is_cluster_ip():
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    proxy = yaml.safe_load((K8S / "oauth2-proxy.yaml").read_text())
    served = [h for ingress in ingresses().values() for h in backends(ingress)]
    served += proxy["ingress"]["hosts"]  # the oauth2-proxy chart's own Ingress
    assert not values["ingress"]["enabled"]  # else the chart's Ingress serves hosts too
    assert len(served) == len(set(served)) == 4, served
    # No other way in: every Service is ClusterIP, the webservers' and oauth2-proxy's too.
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP"
    assert proxy["service"]["type"] == "ClusterIP"
    kinds = set()
    for path in (K8S / "ingress.yaml", K8S / "serve.yaml", K8S / "mlflow.yaml"):
        for doc in documents(path):
            kinds.add(doc["kind"])
            if doc["kind"] == "Service":
                assert doc["spec"].get("type") == "ClusterIP", path
    assert kinds == {"Deployment", "Service", "Ingress"}
