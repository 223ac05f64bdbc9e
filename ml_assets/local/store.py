"""`ml-assets store`: what the store costs per dataset version, a retention rule that bounds it,
pins, and a check that every stored object still holds the bytes its name promises.

The rules live in ``ml_assets.data.retention``; this module adds what only the home, the models
and the Dagster instance know, and prints:

- champions: every kind's champion record (``MLAssetsHome.champion_path``) and the one it
  replaced name versions whose data must stay (the record's version and the version its model's
  ``model.json`` card names) and paths that must stay (the model folder, its deployable export);
- running runs: a version is in use while a run of the Dagster instance that names it in a
  partition tag (``dagster/partition``, ``dagster/partition/version``, or a backfill's range) is
  queued, starting, started or cancelling; the instance is $DAGSTER_HOME, else ``<home>/dagster``
  where it exists (as ``ml-assets demo`` makes it); without one nothing can be running;
- partitions: a collected version's partition of ``dataset_versions`` is removed from that
  instance, one line each.
Heavy imports (Dagster) happen inside the commands, so ``ml-assets --help`` answers at once.
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson

from ml_assets.data import retention

RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def area_root(path: Path, kind: str, version: str) -> Path:
    """The folder above ``<kind>/<version>`` in one of MLAssetsHome's per-version paths."""
    parts = path.parts
    at = parts.index(kind)
    assert parts[at + 1] == version, f"{path} is not <area>/<kind>/<version>/..."
    return Path(*parts[:at])


def layout(home) -> retention.Layout:
    """Where ``home`` (an MLAssetsHome) keeps every version's outputs, asked of its methods with
    a probe kind and version."""
    from ml_assets.train.base_models import MANIFEST, snapshot_dir

    k, v = "<kind>", "<version>"
    store = home.store
    areas = {
        "models": area_root(home.model_dir(k, v, None), k, v),
        "runs": area_root(home.run_dir(k, v, None), k, v),
        "evaluations": area_root(home.evaluation_dir(k, v, 0), k, v),
        "reports": area_root(home.report_dir(k, v), k, v),
        "model_exports": area_root(home.exports_dir(k, v), k, v),
        "predictions": area_root(home.predictions_dir(k, v), k, v),
    }
    return retention.Layout(
        store=store,
        data=frozenset({home.tables_dir(v).name, home.folds_path(v).name}),
        areas=areas,
        base_manifests=tuple(sorted(snapshot_dir(store, v).parent.glob(f"*/{MANIFEST}"))),
        trash=home.path / ".trash",
    )


def champion_needs(home, areas: dict[str, Path]) -> tuple[dict[str, list[str]], set[Path]]:
    """Versions a champion (or the one it replaced) needs, with why, and the paths it needs."""
    from ml_assets.train.runs import card_path, read_champion, read_lineage

    needs, paths = defaultdict(list), set()
    for kind in retention.subfolders(areas["models"]):
        record = read_champion(home.champion_path(kind.name)) or {}
        for what, champion in (("champion", record), ("previous champion", record.get("previous"))):
            if not champion:
                continue
            model = Path(champion["model"])
            named = {champion["version"]}
            if card_path(model) is not None:
                named.add(read_lineage(model)["version"])
            for key in sorted(named):
                needs[key].append(f"{what} of {kind.name}")
            paths |= {model, home.exports_dir(kind.name, champion["version"])}
    return dict(needs), paths


def instance_folder(home_path: Path) -> Path | None:
    folder = Path(os.environ.get("DAGSTER_HOME") or home_path / "dagster")
    return folder if folder.is_dir() else None


def running_versions(instance) -> dict[str, list[str]]:
    """Versions named by runs in flight, with the runs."""
    import dagster as dg

    from ml_assets.defs.partitions import dataset_versions
    from ml_assets.defs.policies import IN_FLIGHT

    order = instance.get_dynamic_partitions(dataset_versions.name)
    found = defaultdict(list)
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT)):
        tags = run.tags
        keys = {
            part
            for name, value in tags.items()
            if name == "dagster/partition" or name.startswith("dagster/partition/")
            for part in value.split("|")
        }
        start, end = (tags.get(t, "") for t in RANGE_TAGS)
        if start in order and end in order:
            keys.update(order[order.index(start) : order.index(end) + 1])
        for key in keys:
            found[key].append(f"run {run.run_id[:8]} of {run.job_name} is {run.status.value}")
    return dict(found)


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M") if ns else ""


def home_and_layout():
    from ml_assets.defs.resources import MLAssetsHome

    home = MLAssetsHome()
    return home, layout(home)


@click.group("store")
def store() -> None:
    """The store over time: disk use per version, retention (gc, pins), integrity (verify)."""


@store.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(as_json: bool) -> None:
    """Bytes per dataset version and per kind of output; objects unique to one version or
    shared by several."""
    home, where = home_and_layout()
    found = retention.usage(where)
    pins = set(retention.pinned(where.store))
    needs, _ = champion_needs(home, where.areas)
    doc = status_doc(found, pins, needs, where.store.root)
    if as_json:
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(status_text(doc))


def status_doc(found: retention.Usage, pins: set[str], needs: dict, root: Path) -> dict:
    """Store totals, versions (oldest first) and outputs, in bytes (see ``retention.usage``)."""
    objects = dict.fromkeys(
        ["bytes", "unique_bytes", "shared_bytes", "base_model_bytes", "unreferenced_bytes"], 0
    )
    objects |= {"count": len(found.objects), "unreferenced_count": 0}
    for sha, (n, _) in found.objects.items():
        users = found.used[sha]
        if users == 0:
            which = "unreferenced"
        elif users > 1:
            which = "shared"
        else:
            which = "base_model" if sha in found.base else "unique"
        objects[f"{which}_bytes"] += n
        objects["bytes"] += n
        objects["unreferenced_count"] += users == 0
    versions, by_output = [], defaultdict(lambda: {"versions": 0, "bytes": 0})
    for v in found.versions:
        outputs = {o.label: o.bytes for o in v.outputs if o.label != "snapshot"}
        for label, n in outputs.items():
            by_output[label]["versions"] += 1
            by_output[label]["bytes"] += n
        versions.append(
            {
                "version": v.key,
                "state": v.state,
                "registered": when(v.registered_ns) or None,
                "pinned": v.key in pins,
                "needed_by": needs.get(v.key, []),
                "files": v.files,
                "data_bytes": v.data_bytes,
                "unique_bytes": v.unique_bytes,
                "shared_bytes": v.shared_bytes,
                "outputs": outputs,
                "frees_bytes": v.unique_bytes + sum(outputs.values()),
            }
        )
    return {
        "store": str(root),
        "objects": objects,
        "versions": versions,
        "by_output": dict(sorted(by_output.items())),
    }


def status_text(doc: dict) -> str:
    o = doc["objects"]
    lines = [
        f"store {doc['store']}: {o['count']} objects, {size(o['bytes'])} (unique to one version "
        f"{size(o['unique_bytes'])}, shared by several {size(o['shared_bytes'])}, base models "
        f"{size(o['base_model_bytes'])}, unreferenced {size(o['unreferenced_bytes'])})",
        "",
    ]
    groups = list(dict.fromkeys(label.split("/")[0] for label in doc["by_output"]))
    head = ["version", "registered", "state", "files", "unique", "shared", *groups, "frees"]
    rows = []
    for v in doc["versions"]:
        per_group = dict.fromkeys(groups, 0)
        for label, n in v["outputs"].items():
            per_group[label.split("/")[0]] += n
        notes = ["pinned"] * v["pinned"] + v["needed_by"]
        state = v["state"] + (f" ({', '.join(notes)})" if notes else "")
        numbers = [v["unique_bytes"], v["shared_bytes"], *per_group.values(), v["frees_bytes"]]
        rows.append(
            [v["version"], v["registered"] or "", state, f"{v['files']:,}", *map(size, numbers)]
        )
    lines += table(head, rows)
    lines += ["", *table(["output", "versions", "bytes"], by_output_rows(doc["by_output"]))]
    return "\n".join(lines)


def by_output_rows(by_output: dict) -> list[list[str]]:
    return [[label, str(n["versions"]), size(n["bytes"])] for label, n in by_output.items()]


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Columns as wide as their widest cell; the first three left-aligned, numbers right."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(cells):
        return "  ".join(
            str(c).ljust(w) if i < 3 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(head), *map(line, rows)]


@store.command()
@click.option(
    "--keep-last",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="Keep the N most recently registered versions whole.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be removed; change nothing.")
def gc(keep_last: int, dry_run: bool) -> None:
    """Remove old versions' snapshots, exports, models, checkpoints, evaluations, reports and
    partitions, and the objects no kept version names; never what a pinned version, a run in
    flight or a champion needs (a champion's version keeps its data and the champion's model)."""
    home, where = home_and_layout()
    whole = {key: ["pinned"] for key in retention.pinned(where.store)}
    folder = instance_folder(home.path)
    instance = None
    if folder is None:
        click.echo(
            "no Dagster instance ($DAGSTER_HOME unset, no <home>/dagster): no run can be in "
            "flight, no partition to remove"
        )
    else:
        from ml_assets.local.runs import in_process_instance

        instance = in_process_instance(str(folder))
        for key, reasons in running_versions(instance).items():
            whole.setdefault(key, []).extend(reasons)
    needs, paths = champion_needs(home, where.areas)
    todo = retention.plan(retention.usage(where), keep_last, whole, needs, paths)
    for line in plan_lines(todo):
        click.echo(line)
    forget = partition_remover(instance, dry_run)
    if dry_run:
        for d in todo.decisions:
            if d.action in ("collect", "finish"):
                forget(d.version.key)
        click.echo(f"dry run: nothing changed; gc would free {size(todo.bytes)}")
        return
    freed, objects = retention.collect(where, todo, forget)
    click.echo(f"removed {objects} objects; freed {size(freed)}")


def plan_lines(todo: retention.Plan) -> list[str]:
    lines = []
    for d in todo.decisions:
        if d.action == "keep":
            lines.append(f"keep     {d.version.key}  {'; '.join(d.reasons)}")
        elif d.remove:
            labels = ", ".join(o.label for o in d.remove)
            lines.append(
                f"{d.action:<8} {d.version.key}  {'; '.join(d.reasons)}: removes {labels} "
                f"({size(d.bytes)})"
            )
    lines.append(
        f"objects  {len(todo.objects)} no kept version or base model names "
        f"({size(sum(todo.objects.values()))})"
    )
    return lines


def partition_remover(instance, dry_run: bool):
    """What ``collect`` calls per collected version: remove (or, dry, name) its partition."""

    def forget(key: str) -> None:
        from ml_assets.defs.partitions import dataset_versions

        if instance is None or not instance.has_dynamic_partition(dataset_versions.name, key):
            return
        if not dry_run:
            instance.delete_dynamic_partition(dataset_versions.name, key)
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} partition {key} from {dataset_versions.name}")

    return forget


@store.command()
@click.option("--sample", type=click.IntRange(min=1), default=None, help="Check N at random.")
def verify(sample: int | None) -> None:
    """Hash the store's objects (all, or a sample) and move any whose bytes no longer match its
    name to <store>/quarantine/; exit status 1 when there is one."""
    _, where = home_and_layout()
    checked, damaged = retention.verify(where.store, sample)
    places = retention.users(where.store, {d.sha256 for d in damaged}) if damaged else {}
    for d in damaged:
        used = ", ".join(places.get(d.sha256, [])) or "no registered version"
        click.echo(
            f"damaged object {d.sha256}: its bytes hash to {d.found}; moved to {d.moved_to}; "
            f"used by {used}"
        )
    click.echo(f"checked {checked} objects: {len(damaged)} damaged")
    if damaged:
        raise click.exceptions.Exit(1)


@store.command()
@click.argument("version")
def pin(version: str) -> None:
    """Keep VERSION (a dataset version key) whatever gc's rule says."""
    _, where = home_and_layout()
    retention.pin(where.store, version)
    click.echo(f"pinned {version}")


@store.command()
@click.argument("version")
def unpin(version: str) -> None:
    """Let gc's rule decide about VERSION again."""
    _, where = home_and_layout()
    was = retention.unpin(where.store, version)
    click.echo(f"unpinned {version}" if was else f"{version} was not pinned")
