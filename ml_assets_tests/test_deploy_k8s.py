"""deploy/k8s against dagster-k8s's own schemas, and the GPU op tags down to the step pod spec.

No cluster here: the instance file, the Helm values (as the chart turns them into the run
launcher's config) and the executor's run config are validated with the config schemas that
dagster and dagster-k8s validate them with at run time, and each training step's pod is built
with the functions dagster-k8s's step handler uses.
"""

import json
import re
import tomllib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.execution.api import create_execution_plan
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.config import pg_config
from dagster._serdes import ConfigurableClassData
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_k8s_job_name,
    get_user_defined_k8s_config,
)

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
INSTANCES = [
    ROOT / "dagster.yaml",
    ROOT / "deploy" / "postgres" / "dagster.yaml",
    K8S / "dagster.yaml",
]
K8S_CONFIG_TAG = "dagster-k8s/config"
# What the chart writes into its instance ConfigMap for any release (chart defaults).
CHART_DAGSTER_HOME = "/opt/dagster/dagster_home"
RELEASE_NAMESPACE = "ml-assets"

# A kubeconfig that only has to load: the launcher never reaches a cluster in these tests.
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: test, user: {token: test}}]
contexts: [{name: test, context: {cluster: test, user: test}}]
current-context: test
"""


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def valid(config_schema, value) -> dict:
    """Process ``value`` with a dagster config schema (env sources resolved) or fail with why."""
    result = process_config(config_schema, value)
    assert result.success, [error.message for error in result.errors]
    return result.value


def chart_run_launcher_config(values: dict) -> dict:
    """The K8sRunLauncher config the Dagster chart renders from ``runLauncher.config.k8sRunLauncher``
    (templates/helpers/instance/_run-launcher.tpl: camelCase keys become snake_case)."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    config = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or RELEASE_NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": values["global"]["serviceAccountName"],
        "dagster_home": CHART_DAGSTER_HOME,
        "instance_config_map": "dagster-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
        "env_config_maps": [m["name"] for m in k8s["envConfigMaps"]],
        "env_secrets": [s["name"] for s in k8s["envSecrets"]],
        "env_vars": k8s["envVars"],
    }
    chart_keys = {
        "volumeMounts": "volume_mounts",
        "volumes": "volumes",
        "labels": "labels",
        "resources": "resources",
        "schedulerName": "scheduler_name",
        "securityContext": "security_context",
        "failPodOnRunFailure": "fail_pod_on_run_failure",
    }
    config |= {ours: k8s[theirs] for theirs, ours in chart_keys.items() if theirs in k8s}
    unknown = (
        set(k8s)
        - set(chart_keys)
        - {
            "loadInclusterConfig",
            "kubeconfigFile",
            "jobNamespace",
            "imagePullPolicy",
            "image",
            "envConfigMaps",
            "envSecrets",
            "envVars",
            "runK8sConfig",
        }
    )
    assert not unknown, f"keys the chart's k8sRunLauncher section does not take: {unknown}"
    return config


def k8s_run_launcher(tmp_path: Path) -> K8sRunLauncher:
    """deploy/k8s/dagster.yaml's run launcher, loaded by dagster with a local kubeconfig instead of
    the in-cluster one (the only setting that needs a cluster)."""
    launcher = load(K8S / "dagster.yaml")["run_launcher"]
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    config = launcher["config"] | {
        "load_incluster_config": False,
        "kubeconfig_file": str(tmp_path / "kubeconfig"),
    }
    data = ConfigurableClassData(launcher["module"], launcher["class"], yaml.safe_dump(config))
    return data.rehydrate(as_type=K8sRunLauncher)


def step_pod_spec(launcher: K8sRunLauncher, executor_config: dict, step):
    """The pod spec of one step's Kubernetes Job, built the way dagster-k8s 0.29's K8sStepHandler
    builds it (``_get_container_context`` then ``launch_step``): the run launcher's settings,
    merged with the executor's ``step_k8s_config``, merged with the step's own tags."""
    run = dg.DagsterRun(job_name="training_job", run_id="0" * 8 + "-0000-0000-0000-" + "0" * 12)
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
    context = context.merge(
        K8sContainerContext(
            namespace=executor_config.get("job_namespace"),
            run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
                executor_config.get("step_k8s_config", {})
            ),
        )
    )
    context = context.merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step.tags))
    )
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config("registry.example.com/ml-assets:test", launcher),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{get_k8s_job_name(run.run_id, step.key)}",
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/op": step.key},
    )
    return job.spec.template.spec


def executor_config() -> dict:
    run_config = load(K8S / "executor.yaml")
    return valid(k8s_job_executor.config_schema.config_type, run_config["execution"]["config"])


def test_instance_file_validates_with_dagster_and_dagster_k8s_schemas(monkeypatch):
    config, _ = dagster_instance_config(str(K8S))
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    valid(K8sRunLauncher.config_type(), launcher["config"])

    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://dagster:secret@db:5432/dagster")
    storage = valid(dg.Shape(pg_config()), config["storage"]["postgres"])
    assert storage["postgres_url"] == "postgresql://dagster:secret@db:5432/dagster"


def test_helm_values_give_a_valid_run_launcher_and_load_this_code_location():
    values = load(K8S / "values.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    valid(K8sRunLauncher.config_type(), chart_run_launcher_config(values))

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    module = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    assert deployment["codeServerArgs"] == ["-m", module]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["ML_ASSETS_HOME"] == deployment["volumeMounts"][0]["mountPath"]
    launcher_mounts = values["runLauncher"]["config"]["k8sRunLauncher"]["volumeMounts"]
    assert launcher_mounts == deployment["volumeMounts"]  # runs see the code server's store


def test_every_instance_variant_keeps_the_same_pool_monitoring_and_retry_settings():
    shared = ["concurrency", "run_monitoring", "run_retries", "telemetry"]
    repo, *variants = ({key: load(path)[key] for key in shared} for path in INSTANCES)
    assert all(variant == repo for variant in variants)

    values = load(K8S / "values.yaml")
    daemon = values["dagsterDaemon"]
    helm = {
        "concurrency": {
            "pools": {"default_limit": values["concurrency"]["pools"]["defaultLimit"]},
            "runs": {"max_concurrent_runs": values["concurrency"]["runs"]["maxConcurrentRuns"]},
        },
        "run_monitoring": {
            "enabled": daemon["runMonitoring"]["enabled"],
            "poll_interval_seconds": daemon["runMonitoring"]["pollIntervalSeconds"],
            "start_timeout_seconds": daemon["runMonitoring"]["startTimeoutSeconds"],
            "cancel_timeout_seconds": daemon["runMonitoring"]["cancelTimeoutSeconds"],
            "max_resume_run_attempts": daemon["runMonitoring"]["maxResumeRuns"],
            "free_slots_after_run_end_seconds": daemon["runMonitoring"][
                "freeSlotsAfterRunEndSeconds"
            ],
        },
        "run_retries": {
            "enabled": daemon["runRetries"]["enabled"],
            "max_retries": daemon["runRetries"]["maxRetries"],
            "retry_on_asset_or_op_failure": daemon["runRetries"]["retryOnAssetOrOpFailure"],
        },
        "telemetry": values["telemetry"],
    }
    assert values["concurrency"]["enabled"] and helm == repo


def test_executor_run_config_validates_for_the_training_job():
    from pipelines import LOCATION as defs

    config = executor_config()
    assert config["step_k8s_config"]["container_config"]["resources"]["requests"]
    # The same jobs with k8s_job_executor as the code location's executor (see README).
    on_k8s = dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        resources=defs.resources,
        executor=k8s_job_executor,
    )
    # Resolving Definitions reads Dagster's current state storage: give it a live instance
    # (an instance an earlier test entered and disposed can otherwise still be current).
    with dg.instance_for_test():
        job = on_k8s.resolve_job_def("training_job")
    assert job.executor_def is k8s_job_executor
    resolved = dg.validate_run_config(job, load(K8S / "executor.yaml"))["execution"]["k8s"]
    assert (
        resolved["step_k8s_config"]["container_config"]
        == config["step_k8s_config"]["container_config"]
    )


def test_gpu_op_tags_of_training_assets_reach_their_step_pods(tmp_path):
    from pipelines import LOCATION as defs

    launcher = k8s_run_launcher(tmp_path)
    config = executor_config()
    graph = defs.resolve_asset_graph()
    steps = {
        s.key: s for s in create_execution_plan(defs.resolve_implicit_global_asset_job_def()).steps
    }

    def pod_of(key: dg.AssetKey):
        step = steps[defs.resolve_assets_def(key).node_def.name]
        return step, step_pod_spec(launcher, config, step)

    training = [
        key for key in graph.get_all_asset_keys() if graph.get(key).group_name == "training"
    ]
    assert training, "no asset in the group `training`"
    requests = config["step_k8s_config"]["container_config"]["resources"]["requests"]
    for key in training:
        step, pod = pod_of(key)
        declared = json.loads(step.tags[K8S_CONFIG_TAG])["container_config"]["resources"]["limits"]
        assert declared.get("nvidia.com/gpu"), f"{key.to_user_string()} declares no GPU"
        (container,) = pod.containers
        assert container.resources.limits == declared
        assert container.resources.requests == requests  # the executor's, kept beside the GPU
        assert {m.mount_path for m in container.volume_mounts} >= {"/data/ml_assets"}
        assert container.image == "registry.example.com/ml-assets:test"

    # A step that declares nothing gets no GPU: the request comes from the asset, not the run.
    untagged = [k for k in graph.get_all_asset_keys() if K8S_CONFIG_TAG not in pod_of(k)[0].tags]
    assert untagged
    (container,) = pod_of(untagged[0])[1].containers
    assert not (container.resources.limits or {}).get("nvidia.com/gpu")


def test_image_installs_the_pinned_torch_and_the_constrained_project():
    dockerfile = (K8S / "Dockerfile").read_text()
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for package in ("torch", "torchvision"):
        (pinned,) = [p for p in pins if re.fullmatch(rf"{package}==[\w.]+", p)]
        assert re.search(rf"pip install [^\n]*\b{re.escape(pinned)}\b", dockerfile), pinned
    assert "pip install -c constraints.txt ." in dockerfile
    copied = re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.MULTILINE)
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "ml_assets"):
        assert any(needed in line.split() for line in copied), needed


@pytest.mark.parametrize("name", ["dagster.yaml", "values.yaml", "executor.yaml"])
def test_deploy_files_hold_no_password(name):
    text = (K8S / name).read_text()
    assert not re.search(r"(?i)password\s*:\s*\S", text)
    assert not re.search(r"postgresql(\+\w+)?://[^\s:@]+:[^\s@]+@", text)
