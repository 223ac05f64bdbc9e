from __future__ import annotations

import orjson
import pytest
import yaml
from click.testing import CliRunner
from formats_helpers import small_coco, tree_hash, write_image

from ml_assets.cli import main
from ml_assets.data.formats import convert, read_dataset
from ml_assets.data.tables import DatasetError
from ml_assets.data.yolo import read_yolo, write_yolo


def yolo_folder(root, names, labels):
    """Images a..c (20x10) in images/train; ``labels`` maps stem -> label text (None: no file)."""
    for i, (stem, text) in enumerate(labels.items()):
        write_image(root / "images" / "train" / f"{stem}.png", 20, 10, i)
        if text is not None:
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    config = {"train": "images/train", "val": "images/train", "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.mark.parametrize("names", [["cat", "dog"], {0: "cat", 1: "dog"}, {"0": "cat", "1": "dog"}])
def test_reads_boxes_polygons_empty_and_missing_labels(tmp_path, names):
    labels = {"a": "1 0.5 0.5 0.5 0.2\n0 0.1 0.1 0.3 0.1 0.3 0.5\n", "b": "", "c": None}
    ds = read_yolo(yolo_folder(tmp_path / "y", names, labels)).validated()
    assert ds.category_names == {0: "cat", 1: "dog"}
    assert len(ds.images) == 3  # val == train is read once
    assert set(ds.images["split"]) == {"train"}
    box, polygon = ds.annotations.to_dict("records")
    assert (box["category_id"], box["x"], box["y"], box["w"], box["h"]) == (1, 5.0, 4.0, 10.0, 2.0)
    assert polygon["category_id"] == 0
    assert [polygon["x"], polygon["y"], polygon["w"], polygon["h"]] == pytest.approx([2, 1, 4, 4])
    assert polygon["segmentation"] == [pytest.approx([2, 1, 6, 1, 6, 5])]


def test_class_ids_survive_coco_yolo_coco(tmp_path):
    src = small_coco(tmp_path / "src")
    before = tree_hash(src)
    convert(src, tmp_path / "yolo", to="yolo")
    config = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert config["names"] == {0: "car", 1: "toothbrush"}
    assert config["category_ids"] == [1, 90]
    assert (tmp_path / "yolo" / "labels" / "train" / "sub" / "b.txt").read_text() == ""
    # one polygon line (annotation 1), one box line (2), the crowd left out
    lines = (tmp_path / "yolo" / "labels" / "train" / "a.txt").read_text().splitlines()
    assert sorted(len(line.split()) for line in lines) == [5, 9]
    back = convert(tmp_path / "yolo", tmp_path / "coco", to="coco")
    assert back.category_names == {1: "car", 90: "toothbrush"}
    assert tree_hash(src) == before


def test_malformed_line_and_unknown_class_name_the_line(tmp_path):
    root = yolo_folder(tmp_path / "y", ["cat"], {"a": "0 0.5 0.5 0.1 0.1\n0 0.5 x 0.1 0.1\n"})
    with pytest.raises(DatasetError, match=r"labels/train/a\.txt \[line 2\]"):
        read_yolo(root)
    (root / "labels" / "train" / "a.txt").write_text("3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"a\.txt \[line 1\]: class 3"):
        read_yolo(root)


def test_written_yaml_points_val_at_val_split(tmp_path):
    ds = read_dataset(small_coco(tmp_path / "src"))
    ds.images["split"] = ["train", "train", "val"]
    out = write_yolo(ds, tmp_path / "yolo")
    config = yaml.safe_load((out / "data.yaml").read_text())
    assert (config["train"], config["val"]) == ("images/train", "images/val")
    assert (out / "images" / "val" / "c.png").is_file()
    assert dict(
        zip(read_yolo(out).images["file_name"], read_yolo(out).images["split"], strict=True)
    ) == {
        "images/train/a.png": "train",
        "images/train/sub/b.png": "train",
        "images/val/c.png": "val",
    }


@pytest.mark.slow
def test_ultralytics_trains_on_our_output(tmp_path):
    from ml_assets.runtime import ultralytics_ready

    ultralytics_ready()
    from ultralytics import YOLO

    labels = {f"i{n}": f"{n % 2} 0.5 0.5 0.4 0.6\n" for n in range(6)}
    ds = read_yolo(yolo_folder(tmp_path / "src", ["cat", "dog"], labels))
    out = write_yolo(ds, tmp_path / "yolo")
    model = YOLO("yolov8n.yaml")
    model.train(
        data=str(out / "data.yaml"),
        epochs=1,
        imgsz=64,
        batch=2,
        workers=0,
        plots=False,
        amp=False,
        device="cpu",
        project=str(tmp_path / "runs"),
        name="t",
        exist_ok=True,
        verbose=False,
    )
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()
    assert model.trainer.data["names"] == {0: "cat", 1: "dog"}
    assert (out / "labels" / "train.cache").is_file()  # ultralytics found and parsed our labels


def named_yaml(root, name, **config):
    """Turn the ``data.yaml`` of ``yolo_folder`` into ``name`` with ``config`` added."""
    data = yaml.safe_load((root / "data.yaml").read_text()) | config
    (root / "data.yaml").unlink()
    (root / name).write_text(yaml.safe_dump(data))
    return root


@pytest.mark.parametrize("path", [None, "", ".", "ABSOLUTE", "../y"])
def test_any_yaml_name_and_path_as_ultralytics_reads_them(tmp_path, path):
    root = yolo_folder(tmp_path / "y", {0: "cat", 1: "dog"}, {"a": "1 0.5 0.5 0.5 0.2\n"})
    config = {"download": "bash scripts/get_coco.sh && rm -rf /"}  # never run
    if path is not None:
        config["path"] = str(root) if path == "ABSOLUTE" else path
    ds = read_dataset(named_yaml(root, "my-set.yml", **config))
    assert (ds.attrs["layout"], ds.attrs["yaml"], ds.attrs["task"]) == (
        "yolo",
        "my-set.yml",
        "detect",
    )
    assert (len(ds.images), len(ds.annotations)) == (1, 1)
    assert ds.attrs["warnings"] == []


def test_a_yaml_path_that_is_not_here_is_a_warning(tmp_path):
    root = yolo_folder(tmp_path / "y", ["cat"], {"a": "0 0.5 0.5 0.5 0.2\n"})
    named_yaml(root, "coco8.yaml", path="../datasets/coco8")  # ultralytics' older yamls
    ds = read_dataset(root)
    (warning,) = ds.attrs["warnings"]
    assert "coco8.yaml [path]: ../datasets/coco8 is not a folder here" in warning
    assert len(ds.annotations) == 1


def test_several_dataset_yamls_are_refused_naming_them(tmp_path):
    root = yolo_folder(tmp_path / "y", ["cat"], {"a": ""})
    (root / "other.yaml").write_text("names: [dog]\ntrain: images/train\nval: images/train\n")
    (root / "hyp.yaml").write_text("lr0: 0.01\n")  # no names: not a dataset YAML
    with pytest.raises(
        ValueError, match=r"several dataset YAML files with names: data\.yaml, other\.yaml\. "
    ):
        read_dataset(root)
    (root / "data.yaml").unlink()
    assert read_dataset(root).attrs["yaml"] == "other.yaml"


def test_pose_labels_are_read_as_boxes_with_their_keypoints(tmp_path):
    labels = {"a": "0 0.5 0.5 0.5 0.2 0.25 0.5 2 0.75 0.5 0\n", "b": ""}
    root = named_yaml(
        yolo_folder(tmp_path / "y", ["person"], labels), "pose.yaml", kpt_shape=[2, 3]
    )
    ds = read_dataset(root)
    assert (ds.attrs["task"], ds.attrs["kpt_shape"]) == ("pose", [2, 3])
    (row,) = ds.annotations.to_dict("records")
    assert (row["x"], row["y"], row["w"], row["h"], row["segmentation"]) == (5, 4, 10, 2, None)
    assert row["keypoints"] == [5, 5, 2, 15, 5, 0]
    assert not any(isinstance(s, list) for s in ds.annotations["segmentation"])
    convert(root, tmp_path / "coco", to="coco")  # COCO keeps them as the annotation's keypoints
    assert read_dataset(tmp_path / "coco").annotations["keypoints"].tolist() == [row["keypoints"]]
    summary = orjson.loads(CliRunner().invoke(main, ["inspect", str(root)]).stdout)
    assert (summary["task"], summary["yaml"], summary["kpt_shape"]) == ("pose", "pose.yaml", [2, 3])


def test_a_pose_line_of_the_wrong_length_names_file_and_line(tmp_path):
    labels = {"a": "0 0.5 0.5 0.5 0.2 0.25 0.5 2 0.75 0.5 0\n0 0.5 0.5 0.5 0.2 0.1 0.1\n"}
    root = named_yaml(yolo_folder(tmp_path / "y", ["person"], labels), "p.yaml", kpt_shape=[2, 3])
    with pytest.raises(
        DatasetError,
        match=r"labels/train/a\.txt \[line 2\]: expected a pose line, 'class cx cy w h' and 2 "
        r"keypoints of 3 values \(kpt_shape in p\.yaml\): 10 numbers after the class, found 6",
    ):
        read_dataset(root)


OBB = "0 0.1 0.2 0.6 0.1 0.7 0.6 0.2 0.7\n"


@pytest.mark.parametrize(("name", "config"), [("dota8.yaml", {}), ("x.yaml", {"task": "obb"})])
def test_obb_labels_are_polygons_with_their_extent_boxes(tmp_path, name, config):
    root = named_yaml(yolo_folder(tmp_path / "y", ["plane"], {"a": OBB}), name, **config)
    ds = read_dataset(root)
    assert ds.attrs["task"] == "obb"
    (row,) = ds.annotations.to_dict("records")
    assert [row["x"], row["y"], row["w"], row["h"]] == pytest.approx([2, 1, 12, 6])
    assert row["segmentation"] == [pytest.approx([2, 2, 12, 1, 14, 6, 4, 7])]
    convert(root, tmp_path / "out", to="yolo")
    assert yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())["task"] == "obb"
    assert read_dataset(tmp_path / "out").attrs["task"] == "obb"


def test_four_point_polygons_without_an_obb_yaml_are_segments(tmp_path):
    ds = read_dataset(named_yaml(yolo_folder(tmp_path / "y", ["x"], {"a": OBB}), "hobby.yaml"))
    assert ds.attrs["task"] == "segment"


def test_a_box_line_in_an_obb_set_names_file_and_line(tmp_path):
    root = yolo_folder(tmp_path / "y", ["plane"], {"a": OBB + "0 0.5 0.5 0.1 0.1\n"})
    named_yaml(root, "DOTAv1.yaml")
    with pytest.raises(
        DatasetError,
        match=r"a\.txt \[line 2\]: expected an oriented box, 'class x1 y1 x2 y2 x3 y3 x4 y4' "
        r"\(DOTAv1\.yaml names an OBB dataset\): 8 numbers after the class, found 4",
    ):
        read_dataset(root)


def test_a_kpt_shape_that_is_not_one_is_an_error(tmp_path):
    root = named_yaml(yolo_folder(tmp_path / "y", ["p"], {"a": ""}), "p.yaml", kpt_shape=[17, 4])
    with pytest.raises(DatasetError, match=r"p\.yaml \[kpt_shape\]: kpt_shape must be"):
        read_dataset(root)
