import shutil
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from ml_assets.cli import main
from ml_assets.data.tables import DatasetError

sys.path.insert(0, str(Path(__file__).parent / "data"))  # the layout builders live there
from layout_builders import BUILDERS  # noqa: E402


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in [
        "sample-data",
        "register",
        "demo",
        "train",
        "convert",
        "validate",
        "inspect",
        "evaluate",
    ]:
        assert command in result.output


def test_sample_data_and_register(tmp_path, home):
    runner = CliRunner()
    result = runner.invoke(
        main, ["sample-data", str(tmp_path / "s"), "--images", "3", "--size", "32"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "annotations.json").is_file()
    again = runner.invoke(main, ["sample-data", str(tmp_path / "s")])
    assert again.exit_code != 0 and "already exists" in again.output
    registered = runner.invoke(main, ["register", str(tmp_path / "s")])
    assert registered.exit_code == 0, registered.output
    name, key = registered.output.split()  # the folder is one dataset: its name and version
    assert name == "s" and len(key) == 12
    assert (home / "store" / "versions" / key / "manifest.json").is_file()


def test_convert_validate_and_inspect_leave_the_source_untouched(
    tmp_path, tiny_sample, tree_digest
):
    runner = CliRunner()
    before = tree_digest(tiny_sample)
    out = tmp_path / "yolo"
    done = runner.invoke(main, ["convert", str(tiny_sample), str(out), "--to", "yolo"])
    assert done.exit_code == 0, done.output
    assert (out / "data.yaml").is_file() and "as yolo" in done.output
    refused = runner.invoke(main, ["convert", str(tiny_sample), str(out), "--to", "yolo"])
    assert refused.exit_code == 1 and "already exists" in refused.output
    back = runner.invoke(
        main, ["convert", str(out), str(tmp_path / "coco"), "--to", "coco", "--from", "yolo"]
    )
    assert back.exit_code == 0, back.output

    clean = runner.invoke(main, ["validate", str(tiny_sample)])
    assert clean.exit_code == 0
    summary = orjson.loads(runner.invoke(main, ["inspect", str(tiny_sample)]).stdout)
    assert summary["images"] == 12 and set(summary["class_histogram"]) <= {
        "circle",
        "square",
        "triangle",
        "cross",
    }
    assert tree_digest(tiny_sample) == before


def test_validate_reports_each_finding_with_file_and_record(tmp_path, tiny_sample):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sample, broken)
    doc = orjson.loads((broken / "annotations.json").read_bytes())
    doc["annotations"][1]["category_id"] = 77
    (broken / "annotations.json").write_bytes(orjson.dumps(doc))
    result = CliRunner().invoke(main, ["validate", str(broken), "--json"])
    assert result.exit_code == 1
    findings = [orjson.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    unknown = [f for f in findings if "77" in f["message"]]
    assert unknown and unknown[0]["file"] == "annotations.json"
    assert unknown[0]["record"] == f"annotation {doc['annotations'][1]['id']}"
    failed = CliRunner().invoke(
        main, ["convert", str(broken), str(tmp_path / "out"), "--to", "voc"]
    )
    assert failed.exit_code == 1 and "annotations.json" in failed.output
    assert not (tmp_path / "out").exists()


def _broken(tmp_path, tiny_sample):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sample, broken)
    doc = orjson.loads((broken / "annotations.json").read_bytes())
    doc["images"][1]["id"] = doc["images"][0]["id"]
    (broken / "annotations.json").write_bytes(orjson.dumps(doc))
    return broken


@pytest.mark.parametrize(
    "command",
    [
        ["validate", "{src}"],
        ["inspect", "{src}"],
        ["convert", "{src}", "{out}", "--to", "yolo"],
        ["evaluate", "{out}", "{src}"],
        ["sample-data", "{src}"],
    ],
)
def test_every_command_on_a_broken_dataset_exits_1_without_traceback(
    tmp_path, tiny_sample, command
):
    broken = _broken(tmp_path, tiny_sample)
    out = tmp_path / "out"
    if command[0] == "evaluate":
        out.mkdir()  # not a model folder: refused like the dataset, in one line
    args = [a.format(src=broken, out=out) for a in command]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.output.count("error") == 1 or command[0] == "validate"
    if command[0] in ("validate", "inspect", "convert"):
        assert "annotations.json" in result.output and "images[1]" in result.output


def test_debug_shows_the_error_itself(tmp_path, tiny_sample):
    broken = _broken(tmp_path, tiny_sample)
    plain = CliRunner().invoke(main, ["inspect", str(broken)])
    assert plain.stderr.startswith("error: ") and len(plain.stderr.strip().splitlines()) == 1
    debug = CliRunner().invoke(main, ["--debug", "inspect", str(broken)])
    assert isinstance(debug.exception, DatasetError) and debug.exception.record == "images[1]"


def test_validate_passes_warnings_unless_strict(tmp_path):
    src = BUILDERS["roboflow-yolo"](tmp_path / "rf")  # its data.yaml names a missing test split
    runner = CliRunner()
    lenient = runner.invoke(main, ["validate", str(src)])
    assert lenient.exit_code == 0 and "warning: data.yaml [test] split-missing" in lenient.stdout
    assert "0 error(s), 1 warning(s)" in lenient.stderr
    assert runner.invoke(main, ["validate", str(src), "--strict"]).exit_code == 1


def test_inspect_prints_format_and_layout_first(tmp_path):
    src = BUILDERS["roboflow-coco"](tmp_path / "rf")
    result = CliRunner().invoke(main, ["inspect", str(src)])
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout)
    assert list(summary)[:2] == ["format", "layout"]
    assert (summary["format"], summary["layout"]) == ("coco", "roboflow-coco")
    assert summary["class_histogram"] == {"cat": 2, "dog": 2, "bird": 1}
