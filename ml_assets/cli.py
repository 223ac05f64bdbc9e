"""`ml-assets`: every step of the pipeline outside Dagster, calling the functions the assets call.

Heavy libraries are imported inside the commands, so `ml-assets --help` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

FORMATS = ["coco", "voc", "yolo", "imagefolder"]
SOURCES = ["auto", *FORMATS]
existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)


class ErrorsAsMessages(click.Group):
    """Every command's error about the user's input or files (a ``ValueError`` such as
    ``DatasetError``, or an ``OSError`` such as ``FileNotFoundError``) becomes one ``error:`` line
    naming the file and record, and exit status 1. Anything else is a bug: one line asking for a
    report. ``ml-assets --debug ...`` shows the traceback instead."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as error:
            if ctx.params.get("debug"):
                raise
            if isinstance(error, ValueError | OSError):
                click.echo(f"error: {error}", err=True)
            else:
                click.echo(
                    f"error: unexpected {type(error).__name__}: {error} (a bug in ml_assets: "
                    "run again with --debug for the traceback and report it)",
                    err=True,
                )
            ctx.exit(1)


@click.group(cls=ErrorsAsMessages, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")
def main(debug: bool) -> None:
    """ml_assets: labelled image data to trained, evaluated, promotable models."""


@main.command("sample-data")
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Same seed, same images.")
@click.option("--images", default=240, show_default=True, help="Number of images.")
@click.option("--size", default=96, show_default=True, help="Image side in pixels.")
def sample_data(dst: Path, seed: int, images: int, size: int) -> None:
    """Write a synthetic shapes detection dataset in COCO layout to DST (must not exist)."""
    from ml_assets.data.sample import write_sample

    write_sample(dst, images=images, seed=seed, size=size)
    click.echo(f"wrote {images} images and {dst / 'annotations.json'}")


@main.command()
@click.argument("landing", type=existing_dir)
def register(landing: Path) -> None:
    """Register each dataset in the folder LANDING as a dataset version and print its key, by
    the landing sensor's rule: LANDING is one dataset when it looks like one (an annotation
    file, export or split folders at its top), else each top-level folder is a dataset."""
    from ml_assets import runtime
    from ml_assets.data.landing import LocalFolder, datasets
    from ml_assets.data.landing import register as register_dataset
    from ml_assets.data.store import Store

    folder, store = LocalFolder(landing), Store(runtime.home() / "store")
    for drop in datasets(folder):
        click.echo(f"{drop.name or landing.name}\t{register_dataset(folder, drop, store)}")


@main.command()
@click.argument("path", type=existing_dir)
@click.option("--name", default=None, help="Dataset name in the landing location [PATH's name].")
@click.option("--replace", is_flag=True, help="Replace a dataset of the same name.")
@click.option(
    "--landing",
    default="",
    help="Landing folder or s3://bucket/prefix [$ML_ASSETS_LANDING, else <home>/landing].",
)
def ingest(path: Path, name: str | None, replace: bool, landing: str) -> None:
    """Copy the dataset folder PATH into the landing location as NAME/, all at once."""
    from ml_assets import runtime
    from ml_assets.data.landing import add_dataset, landing_location, open_landing

    where = open_landing(landing_location(landing, runtime.home()))
    target = add_dataset(path, where, name, replace)
    click.echo(f"copied {path} to {target}: the landing sensor registers it once it settles")


def pipeline_options(command):
    """The options of every command that runs the pipeline on the landing location."""
    options = [
        click.option(
            "--dataset",
            default=None,
            help="Only the dataset of this name in the landing location [every dataset].",
        ),
        click.option("--folds", default=3, show_default=True, help="k of k-fold cross-validation."),
        click.option("--epochs", type=int, default=None, help="Training epochs per fold."),
        click.option(
            "--models",
            default="classifier,yolo",
            show_default=True,
            help="Model kinds to train, comma-separated (names or short names: classifier, yolo,"
            " lora).",
        ),
        click.option("--seed", default=0, show_default=True),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@click.option(
    "--images", default=600, show_default=True, help="Sample images, if landing is empty."
)
@pipeline_options
def demo(images: int, dataset: str | None, folds: int, epochs, models: str, seed: int) -> None:
    """The tour: land sample data if the landing location is empty, then run the whole pipeline
    on every dataset it holds with the demo's settings (epochs: per kind) and print results."""
    from ml_assets.local.demo import run_demo

    run_and_print(run_demo, folds, models, images=images, dataset=dataset, epochs=epochs, seed=seed)


@main.command()
@pipeline_options
def train(dataset: str | None, folds: int, epochs, models: str, seed: int) -> None:
    """Run the pipeline on your own data: every dataset in the landing location (`ml-assets
    ingest PATH --name NAME` puts one there), or --dataset NAME: ingest, k-fold training and
    evaluation with each kind's default settings, the report and its gate; print results."""
    from ml_assets.local.demo import run_pipeline

    run_and_print(run_pipeline, folds, models, dataset=dataset, epochs=epochs, seed=seed)


def run_and_print(run, folds: int, models: str, **options) -> None:
    """Run the pipeline (``run_demo`` or ``run_pipeline``) for the kinds named in ``models`` and
    print one table per dataset and kind; Ctrl-C ends it with one line and status 130."""
    from ml_assets import runtime
    from ml_assets.train.registry import kind

    names = tuple(kind(m.strip()).name for m in models.split(",") if m.strip())
    try:
        results = run(folds=folds, models=names, echo=click.echo, **options)
    except BaseException as interrupted:  # Ctrl-C: one line, not a traceback
        if not is_interrupt(interrupted):
            raise
        click.echo(
            "interrupted: the running run stopped and gave its pool slot back; "
            "run the command again to resume training from the last checkpoint",
            err=True,
        )
        sys.exit(130)
    for dataset, reports in results.items():
        for name, report in reports.items():
            print_report(dataset, name, report, folds)
    click.echo(
        f"\nstate:   {runtime.home()}\n"
        "next:    make ui      (dagster dev on this instance: assets, runs, metadata, checks)\n"
        "         make mlflow  (MLflow UI on the training runs)"
    )


def print_report(dataset: str, name: str, report: dict, folds: int) -> None:
    from ml_assets.local.demo import COUNTS, report_table

    title = f"\n{name} on {dataset}, version {report['version']}"
    if "not_trained" in report:
        click.echo(f"{title}: not trained: {report['not_trained']}")
        return
    click.echo(f"{title}, {folds}-fold cross-validation:")
    if report.get("data_change"):
        click.echo(f"data: {report['data_change']}")
    click.echo("")
    whole = {c: (lambda v: str(int(v))) for c in COUNTS}
    table = report_table(report, headline=True).round(4)
    formatters = {c: f for c, f in whole.items() if c in table}
    click.echo(table.to_string(formatters=formatters, na_rep=""))
    gate = "passed" if report["promotable"] else "FAILED (below the floor or the baseline)"
    click.echo(
        f"promotion gate: {gate} (mean {report['primary_metric']} "
        f"{report['mean'][report['primary_metric']]:.4f}, baseline {report['baseline']:.4f})\n"
        f"report: {report['path']}/report.md"
    )
    if "label_issues" in report:
        count, path = report["label_issues"]
        click.echo(f"label issues: {count}, worst first in {path}")


@main.command("ready-instance")
def ready_instance() -> None:
    """Get the Dagster instance in $DAGSTER_HOME ready for `dagster dev` (make ui runs this
    first): runs whose process died are marked failed and free their pool slots, and the UI's
    automation state reads on (automation runs through automation_sensor)."""
    from ml_assets.local.demo import instance_home
    from ml_assets.local.runs import in_process_instance, reap_dead_runs, show_automation_on

    with in_process_instance(str(instance_home())) as instance:
        reap_dead_runs(instance, click.echo)
        show_automation_on(instance)


def is_interrupt(error: BaseException) -> bool:
    """Ctrl-C, as Python raises it or as Dagster re-raises it from inside a run."""
    return type(error).__name__ in ("KeyboardInterrupt", "DagsterExecutionInterruptedError")


@main.command()
@click.argument("src", type=existing_dir)
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(FORMATS), required=True)
@click.option("--from", "from_", type=click.Choice(SOURCES), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
def convert(src: Path, dst: Path, to: str, from_: str, overwrite: bool) -> None:
    """Convert the dataset in SRC to another format at DST (atomic: all or nothing)."""
    from ml_assets.data.formats import convert as convert_dataset
    from ml_assets.data.tables import task_of

    ds = convert_dataset(src, dst, to=to, from_=from_, overwrite=overwrite)
    labels = "image labels" if task_of(ds) == "classify" else "boxes"
    click.echo(f"wrote {len(ds.images)} images, {len(ds.annotations)} {labels} as {to} to {dst}")


@main.command()
@click.argument("src", type=existing_dir)
@click.option("--from", "from_", type=click.Choice(SOURCES), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON lines.")
@click.option("--strict", is_flag=True, help="Fail on warnings too.")
def validate(src: Path, from_: str, as_json: bool, strict: bool) -> None:
    """Check SRC; exit 1 on any error (on warnings too with --strict), else 0."""
    import orjson

    from ml_assets.data.validate import validate_source

    findings = validate_source(src, from_)
    for f in findings:
        if as_json:
            click.echo(orjson.dumps(f.__dict__).decode())
        else:
            click.echo(f"{f.severity}: {f.file} [{f.record}] {f.code}: {f.message}")
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    if not as_json:
        click.echo(f"{errors} error(s), {warnings} warning(s) in {src}", err=True)
    sys.exit(1 if errors or (strict and warnings) else 0)


@main.command()
@click.argument("src", type=existing_dir)
@click.option("--from", "from_", type=click.Choice(SOURCES), default="auto", show_default=True)
def inspect(src: Path, from_: str) -> None:
    """Print the detected format and layout, the task of the labels, the images per split (and
    the dataset YAML read), then class histogram, boxes per image, box and image sizes of SRC
    (JSON); warnings go to stderr."""
    import orjson

    from ml_assets.data.formats import read_dataset
    from ml_assets.data.inspect import describe, summarize
    from ml_assets.data.layouts import BY_NAME

    ds = read_dataset(src, from_)
    layout = BY_NAME[ds.attrs["layout"]]
    for warning in ds.attrs["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    found = {"format": layout.format, "layout": layout.name, "layout_files": layout.files}
    summary = found | describe(ds) | summarize(ds)
    click.echo(
        orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()
    )


@main.command()
@click.argument("model_dir", type=existing_dir)
@click.argument("src", type=existing_dir)
@click.option("--from", "from_", type=click.Choice(SOURCES), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
def evaluate(model_dir: Path, src: Path, from_: str, device: str) -> None:
    """Score the model saved in MODEL_DIR (any kind) on every image of the dataset in SRC."""
    from ml_assets.data.formats import read_dataset
    from ml_assets.train.device import select_device
    from ml_assets.train.registry import model_card

    found, _ = model_card(model_dir)
    ds = read_dataset(src, from_)
    scores = found.score(model_dir, ds, ds.images["image_id"].tolist(), select_device(device))
    click.echo(f"{found.name} on {src}:")
    for name, value in scores.metrics.items():
        click.echo(f"{name:>24}: {round(value, 4)}")
    click.echo("\n" + scores.per_class.round(4).to_string())


@main.group("base-model")
def base_model() -> None:
    """Base models for LoRA adapters: local transformers folders (nothing is downloaded)."""


@base_model.command("init")
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--arch",
    type=click.Choice(["vit", "dinov2", "convnext", "swin", "grounding-dino", "sam"]),
    required=True,
)
@click.option("--tiny", is_flag=True, help="A tiny model that trains in seconds (tests, demo).")
def base_model_init(dst: Path, arch: str, tiny: bool) -> None:
    """Write a randomly initialized ARCH model with its processor to DST (must not exist).
    A user with real weights skips this and points the base_model asset at their folder."""
    from ml_assets.train.base_models import describe_base_model, init_base_model

    init_base_model(dst, arch, tiny=tiny)
    info = describe_base_model(dst)
    size = "tiny " if tiny else ""
    click.echo(f"wrote a {size}{info.model_type} model ({info.parameters:,} parameters) to {dst}")


@main.command("coco-eval")
@click.argument("ground_truth", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("detections", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: stats, per_class.")
def coco_eval(ground_truth: Path, detections: Path, as_json: bool) -> None:
    """COCO box metrics of the results file DETECTIONS against GROUND_TRUTH (equal to
    pycocotools' COCOeval): the 12 standard numbers and per-class AP."""
    import orjson

    from ml_assets.evaluate.coco import STAT_LABELS, coco_metrics

    metrics = coco_metrics(ground_truth, detections)  # bad input: one "error:" line (main)
    if as_json:
        click.echo(orjson.dumps(metrics.to_json()).decode())
        return
    for name, value in metrics.stats.items():
        click.echo(f"{name:<10} {value:7.4f}   {STAT_LABELS[name]}")
    click.echo(f"\n{'class':<24} {'AP':>7} {'AP50':>7} {'boxes':>7} {'detections':>10}")
    for c in metrics.classes:
        click.echo(f"{c.name:<24} {c.ap:7.4f} {c.ap50:7.4f} {c.ground_truth:>7} {c.detections:>10}")


def register_groups() -> None:
    """Command groups that live in modules of their own."""
    from ml_assets.local.quality import label_issues
    from ml_assets.local.store import store
    from ml_assets.local.weights import weights
    from ml_assets.serve.cli import serve

    main.add_command(serve)
    main.add_command(store)
    main.add_command(weights)
    main.add_command(label_issues)


register_groups()
