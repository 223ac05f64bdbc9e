"""`ml-assets weights`: pretrained weights pulled once into the store, pinned, listed."""

from __future__ import annotations

import click
import orjson

from ml_assets.local.store import size, table


def home_store():
    from ml_assets import runtime
    from ml_assets.data.store import Store

    return Store(runtime.home() / "store")


@click.group("weights")
def weights() -> None:
    """Pretrained weights: fetched once (the only step that uses the network), stored by
    content, pinned by name; training then uses the stored copy, offline."""


@weights.command()
@click.argument("spec")
@click.option("--name", default=None, help="Pin under NAME [the spec's file or model name].")
@click.option("--replace", is_flag=True, help="Fetch again and pin whatever bytes come.")
def pull(spec: str, name: str | None, replace: bool) -> None:
    """Fetch SPEC into the store and pin it: a local file or folder, an http(s):// URL (a
    #sha256=<hex> fragment is checked), s3://bucket/key, hf://org/repo[@revision][/file], a timm
    model name (resnet50.a1_in1k) or an ultralytics weights name (yolo11n.pt). Pulling a pinned
    spec again downloads nothing; a different hash under NAME is refused without --replace."""
    from ml_assets.data.weights import pull as pull_weights

    pin = pull_weights(spec, home_store(), name=name, replace=replace)
    said = "pulled" if pin.fetched else "already pulled"
    revision = f" at revision {pin.revision}" if pin.revision else ""
    click.echo(
        f"{said} {pin.name}: {pin.kind} {pin.hash} ({size(pin.size)}) from {pin.source}{revision}"
    )
    click.echo(f"stored at {pin.path}")


@weights.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_pins(as_json: bool) -> None:
    """Every pin (name, kind, spec, hash, size, source revision, when it was pulled), base model
    snapshots included."""
    from ml_assets.data.weights import pinned

    pins = pinned(home_store())
    if as_json:
        doc = [p.to_dict() for p in pins]
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    if not pins:
        click.echo("no weights pulled yet: ml-assets weights pull SPEC")
        return
    head = ["name", "kind", "spec", "hash", "size", "revision", "pulled at"]
    rows = [
        [p.name, p.kind, p.spec, p.hash[:12], size(p.size), (p.revision or "")[:12], p.pulled_at]
        for p in pins
    ]
    click.echo("\n".join(table(head, rows)))
