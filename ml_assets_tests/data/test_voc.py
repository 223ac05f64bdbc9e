from __future__ import annotations

from formats_helpers import small_coco, tree_hash, write_image

from ml_assets.data.formats import read_dataset
from ml_assets.data.voc import read_voc, write_voc

XML = """<annotation>
  <filename>{name}</filename>{size}
  <object><name>dog</name><pose>Left</pose><truncated>1</truncated><difficult>1</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>1</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>
</annotation>"""


def voc_folder(root, *, size=True, xmin="1", xmax="40", ymax="30"):
    write_image(root / "JPEGImages" / "000001.png", 40, 30, 1)
    tag = "<size><width>40</width><height>30</height><depth>3</depth></size>" if size else ""
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "000001.xml").write_text(
        XML.format(name="000001.png", size=tag, xmin=xmin, xmax=xmax, ymax=ymax)
    )
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("000001\n")
    (root / "ImageSets" / "Main" / "dog_val.txt").write_text("000001  1\n")
    return root


def test_one_based_pixels_become_the_whole_image(tmp_path):
    ds = read_voc(voc_folder(tmp_path / "voc")).validated()
    row = ds.annotations.iloc[0]
    assert [row.x, row.y, row.w, row.h] == [0.0, 0.0, 40.0, 30.0]
    assert (row.difficult, row.truncated, row.occluded, row.pose) == (1, 1, 0, "Left")
    assert ds.images.iloc[0]["split"] == "val"
    assert ds.images.iloc[0]["file_name"] == "JPEGImages/000001.png"


def test_float_coordinates_and_missing_size(tmp_path):
    ds = read_voc(voc_folder(tmp_path / "voc", size=False, xmin="10.5", xmax="20.25", ymax="7.5"))
    assert ds.images.iloc[0][["width", "height"]].tolist() == [40, 30]
    row = ds.annotations.iloc[0]
    assert [row.x, row.y, row.w, row.h] == [9.5, 0.0, 10.75, 7.5]


def test_round_trip_is_exact_in_voc_space(tmp_path):
    src = voc_folder(tmp_path / "voc", xmin="3", xmax="17.5")
    before = tree_hash(src)
    out = write_voc(read_voc(src), tmp_path / "out")
    xml = (out / "Annotations" / "000001.xml").read_text()
    assert "<xmin>3</xmin>" in xml and "<xmax>17.5</xmax>" in xml and "<pose>Left</pose>" in xml
    assert (out / "ImageSets" / "Main" / "val.txt").read_text() == "000001\n"
    again = read_voc(out)
    assert again.annotations.drop(columns="segmentation").equals(
        read_voc(src).annotations.drop(columns="segmentation")
    )
    assert tree_hash(src) == before


def test_coco_to_voc_drops_crowds_and_keeps_boxes(tmp_path):
    ds = read_dataset(small_coco(tmp_path / "src"))
    out = write_voc(ds, tmp_path / "voc")
    back = read_voc(out)
    assert len(back.annotations) == int((ds.annotations["iscrowd"] == 0).sum())
    assert sorted(back.categories["name"]) == ["car", "toothbrush"]
    assert (out / "Annotations" / "sub" / "b.xml").is_file()
    assert (out / "JPEGImages" / "sub" / "b.png").is_file()
