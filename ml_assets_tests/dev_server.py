"""`make ui`'s `dagster dev` for tests: on a free loopback port, stopped with everything it started.

Started the way the Makefile starts it (in $DAGSTER_HOME, holding the repository's dagster.yaml,
with the repository's workspace.yaml), in its own process session, so that SIGINT, then SIGTERM,
then SIGKILL of its process group stops the webserver, the daemon, the code server and every run
worker they started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    response = requests.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": query, "variables": variables or {}},
        timeout=60,
    )
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise AssertionError(body["errors"])
    return body["data"]


def stop_group(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGINT, then SIGTERM, then SIGKILL of the process group, each given ``grace_s``."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children that ignored the signal still get the next ones.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 0)
            time.sleep(2)
            os.killpg(process.pid, signal.SIGKILL)
        return


@contextlib.contextmanager
def dagster_dev(
    home: Path, port: int, env: dict | None = None, timeout: float = 180
) -> Iterator[Path]:
    """Run `dagster dev` for ``home`` (ML_ASSETS_HOME; DAGSTER_HOME is <home>/dagster); yields
    the file its output goes to."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        shutil.copy(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    environment = {
        **os.environ,
        "ML_ASSETS_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        **(env or {}),
    }
    # As make ui does first: dead runs marked failed, the UI's automation state what it is.
    ready = [str(Path(sys.executable).parent / "ml-assets"), "ready-instance"]
    subprocess.run(ready, cwd=ROOT, env=environment, check=True, capture_output=True)
    command = [
        str(Path(sys.executable).parent / "dagster"),
        "dev",
        "-w",
        str(ROOT / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    log = home / "dagster-dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=dagster_home,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    url = f"http://127.0.0.1:{port}/server_info"
                    requests.get(url, timeout=2).raise_for_status()
                    break
                except requests.RequestException:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError(
                            f"dagster dev did not answer within {timeout} s:\n{log.read_text()}"
                        ) from None
                    time.sleep(1)
            yield log
        finally:
            stop_group(process)
