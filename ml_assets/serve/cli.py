"""``ml-assets serve``: the champions behind a prediction API (see ``ml_assets.serve.app``)."""

from __future__ import annotations

from pathlib import Path

import click

from ml_assets.serve import CORS_ENV, OPEN_PATHS, OPEN_PATHS_ENV, TOKENS_ENV


def settings_for(
    home: Path,
    kinds: tuple[str, ...],
    tokens: Path | None = None,
    open_paths: str = ",".join(OPEN_PATHS),
    cors_origins: str = "",
    **limits,
):
    """The server's settings: ``kinds`` by name or alias (none: every kind with a champion),
    the token file's digests, the open paths and CORS origins as comma lists."""
    from ml_assets.serve.app import Settings, read_token_hashes, split_list
    from ml_assets.serve.models import champion_kinds
    from ml_assets.train.registry import kind as kind_named

    names = [kind_named(k).name for k in kinds] or champion_kinds(home)
    if not names:
        raise ValueError(f"no kind has a champion under {home}: promote one first")
    missing = [k for k in names if kind_named(k).export_tolerance is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} cannot be served: the kind has no ONNX export")
    return Settings(
        home=home,
        kinds=names,
        token_hashes=read_token_hashes(tokens) if tokens else None,
        open_paths=tuple(split_list(open_paths)),
        cors_origins=split_list(cors_origins),
        **limits,
    )


@click.command()
@click.option("--kind", "kinds", multiple=True, help="Kind to serve (repeat); default: every "
              "kind with a champion.")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="ml_assets home [$ML_ASSETS_HOME or .ml_assets].")  # fmt: skip
@click.option("--poll", default=1.0, show_default=True,
              help="Seconds between reads of the champion records (0: never reload).")  # fmt: skip
@click.option("--max-body-mb", default=20.0, show_default=True, help="Request body limit.")
@click.option("--max-images", default=16, show_default=True, help="Images per request.")
@click.option("--max-pixels", default=40_000_000, show_default=True, help="Pixels per image.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds per request.")
@click.option("--threads", default=0, show_default=True,
              help="onnxruntime threads per model (0: its default).")  # fmt: skip
@click.option("--tokens", envvar=TOKENS_ENV, type=click.Path(exists=True, path_type=Path),
              default=None, help=f"File of SHA-256 hex digests of bearer tokens, one a line "
              f"[${TOKENS_ENV}]; unset: no token asked.")  # fmt: skip
@click.option("--open-paths", envvar=OPEN_PATHS_ENV, default=",".join(OPEN_PATHS),
              show_default=True, help=f"Paths open without a token [${OPEN_PATHS_ENV}].")  # fmt: skip
@click.option("--cors-origins", envvar=CORS_ENV, default="",
              help=f"Comma list of origins CORS allows [${CORS_ENV}]; unset: CORS off.")  # fmt: skip
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn's access log).")
def serve(kinds, host, port, home, max_body_mb, access_log, **options) -> None:
    """Serve the champion ONNX export of each kind over HTTP (onnxruntime, never PyTorch):
    POST /predict/{kind}, GET /health, /ready, /models, /metrics, /docs. Follows promotion
    without a restart."""
    import uvicorn

    from ml_assets import runtime
    from ml_assets.serve.app import create_app

    home = Path(home).resolve() if home else runtime.home()
    settings = settings_for(home, kinds, max_body_bytes=int(max_body_mb * 2**20), **options)
    click.echo(f"serving {', '.join(settings.kinds)} from {home} on http://{host}:{port}")
    uvicorn.run(create_app(settings), host=host, port=port, access_log=access_log)
