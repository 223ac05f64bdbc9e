"""Training one fold with several processes: PyTorch DDP under ``torchrun``.

With ``nproc_per_node * nnodes > 1`` in a kind's training config, the model asset launches

    python -m torch.distributed.run --nproc-per-node N (--standalone | --nnodes M
        --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id ID) -m ml_assets.train.distributed
        REQUEST.json

through Dagster Pipes (``dg.PipesSubprocessClient``). Every rank joins the process group (gloo
on CPU, nccl on CUDA with ``cuda:LOCAL_RANK``) and reads the same request: the fold's
:class:`~ml_assets.train.runs.FoldRun` (configuration, folders, tracking) and where the dataset
tables and fold assignment are. Rank 0 runs :func:`ml_assets.train.runs.train_fold` (run
folder, MLflow, lineage, publishing) and sends its log lines and per-epoch progress through
Pipes while it trains and the trained fold as a Pipes message at the end, from which the asset
builds its metadata; the other ranks run only the kind's ``fit``, whose training loop wraps the
model in ``DistributedDataParallel``, gives each rank its share of the data and lets rank 0 alone
write checkpoints (the DDP primitives those loops use are in ``ml_assets.train.ddp``).
Checkpoints are the single-process ones: a run resumes from either.

On other nodes (``nnodes > 1``) start the same command by hand or from your scheduler: it is
logged when the asset launches it. ``batch_size`` is per process: the global batch is
``batch_size * nproc_per_node * nnodes``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pandas as pd

from ml_assets.data.atomic import write_bytes
from ml_assets.train.ddp import world

if TYPE_CHECKING:
    from ml_assets.train.runs import FoldRun


def torchrun_command(config, request: Path, run_id: str = "ml_assets") -> list[str]:
    """The torchrun command line (this Python's ``torch.distributed.run``) for ``config``."""
    command = [sys.executable, "-m", "torch.distributed.run"]
    command += ["--nproc-per-node", str(config.nproc_per_node)]
    if config.nnodes == 1 and not config.rdzv_endpoint:
        command.append("--standalone")  # a free local port: runs side by side never collide
    else:
        if not config.rdzv_endpoint:
            raise ValueError(
                f"nnodes={config.nnodes} needs rdzv_endpoint (host:port that every node reaches)"
            )
        command += ["--nnodes", str(config.nnodes), "--rdzv-backend", "c10d"]
        command += ["--rdzv-endpoint", config.rdzv_endpoint, "--rdzv-id", run_id]
    return [*command, "-m", "ml_assets.train.distributed", str(request)]


def write_request(
    folder: Path, run: FoldRun, *, tables: Path, files: Path, folds: Path, k: int
) -> Path:
    """The request every rank reads (plain JSON): the fold ``run`` and where its data is (the
    version's ``tables`` and ``files``, and its assignment to ``k`` ``folds``)."""
    request = {"run": run.to_dict(), "tables": tables, "files": files, "folds": folds, "k": k}
    return write_bytes(Path(folder) / "request.json", orjson.dumps(request, default=str))


def request_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="ml_assets_torchrun_")


def trained_message(trained) -> dict:
    """What rank 0 sends back: the trained fold without the model object."""
    return {
        "trained": {
            "model_dir": str(trained.model_dir),
            "history": trained.fit.history.to_dict("records"),
            "resumed_from": trained.fit.resumed_from,
            "summary": trained.fit.summary,
            "lineage": trained.lineage,
            "train_images": trained.train_images,
            "seconds": trained.seconds,
            "mlflow_url": trained.mlflow_url,
            "registered_version": trained.registered_version,
        }
    }


def trained_from_messages(messages: list) -> object:
    """The :class:`~ml_assets.train.runs.TrainedFold` rank 0 sent (its model not included)."""
    from ml_assets.train.kinds import FitResult
    from ml_assets.train.runs import TrainedFold

    found = [m["trained"] for m in messages if isinstance(m, dict) and "trained" in m]
    if not found:
        raise RuntimeError("torchrun finished without rank 0 reporting a trained model")
    t = found[-1]
    fit = FitResult(None, pd.DataFrame(t["history"]), t["resumed_from"], t["summary"])
    return TrainedFold(
        Path(t["model_dir"]),
        fit,
        t["lineage"],
        t["train_images"],
        t["seconds"],
        t["mlflow_url"],
        t["registered_version"],
    )


def _device(name: str):
    """This rank's device and process-group backend: cuda:LOCAL_RANK with nccl, else gloo."""
    import os

    import torch

    if name.startswith("cuda"):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device, "nccl"
    return torch.device(name), "gloo"


def run_rank(request: dict, log: Callable[[str], None]):
    """This rank's share of training the requested fold: rank 0 the whole of ``train_fold``
    (returning the TrainedFold), the others the kind's ``fit`` (returning None)."""
    from ml_assets.data.folds import read_folds
    from ml_assets.data.tables import load_tables
    from ml_assets.train.registry import kind
    from ml_assets.train.runs import FoldRun, train_fold

    run = FoldRun.from_dict(request["run"], kind(request["run"]["kind"]))
    run = replace(run, device=_device(run.device)[0])
    ds = load_tables(Path(request["tables"]), Path(request["files"]))
    assignment, digest = read_folds(Path(request["folds"]), request["k"])
    if world()[0] != 0:
        run.fit(ds, *run.split(assignment))
        return None
    return train_fold(run, ds, assignment, digest, log)


def main(argv: list[str] | None = None) -> None:
    """The torchrun entry point: ``python -m ml_assets.train.distributed REQUEST.json``."""
    import torch.distributed as dist

    (path,) = argv if argv is not None else sys.argv[1:]
    request = orjson.loads(Path(path).read_bytes())
    dist.init_process_group(backend=_device(request["run"]["device"])[1])
    try:
        if dist.get_rank() == 0:
            from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

            from_dagster = PipesEnvVarParamsLoader().is_dagster_pipes_process()
            with open_dagster_pipes() as pipes:  # a no-op context outside Dagster
                trained = run_rank(request, pipes.log.info if from_dagster else print)
                pipes.report_custom_message(trained_message(trained))
        else:
            run_rank(request, print)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
