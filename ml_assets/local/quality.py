"""`ml-assets label-issues`: the labels most likely wrong in a dataset version, from the
out-of-fold predictions its evaluations wrote (what the ``<kind>_label_issues`` asset computes)."""

from __future__ import annotations

import click
import orjson

FIELDS = ("file", "record", "type", "score", "given", "suggested")


@click.command("label-issues")
@click.argument("version")
@click.option("--kind", "kind_name", default="image_classifier", help="Model kind or alias.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
def label_issues(version: str, kind_name: str, as_json: bool) -> None:
    """Label issues of VERSION from KIND's evaluations of every fold, worst first: file, record,
    type, score, given and suggested label."""
    from ml_assets.defs.quality import find_label_issues
    from ml_assets.defs.resources import MLAssetsHome
    from ml_assets.train.registry import kind

    try:
        found = find_label_issues(MLAssetsHome(), kind(kind_name), version)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    rows = found[list(FIELDS)].to_dict("records")
    for row in rows:
        row["score"] = round(float(row["score"]), 4)
        if as_json:
            click.echo(orjson.dumps(row).decode())
        else:
            click.echo("\t".join(str(row[f]) for f in FIELDS))
    if not as_json:
        click.echo(f"{len(rows)} label issues in version {version}", err=True)
