import shutil

import orjson
from click.testing import CliRunner

from ml_assets.cli import main


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in [
        "sample-data",
        "register",
        "demo",
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
    key = runner.invoke(main, ["register", str(tmp_path / "s")])
    assert key.exit_code == 0 and len(key.output.strip()) == 12
    assert (home / "store" / "versions" / key.output.strip() / "manifest.json").is_file()


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
    summary = orjson.loads(runner.invoke(main, ["inspect", str(tiny_sample)]).output)
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
