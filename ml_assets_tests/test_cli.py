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
