"""Polygon (GeoPackage/GeoJSON) and COCO exports of label maps."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.crs import CRS

from maskdiffusion.core.classes import preset_classes
from maskdiffusion.geo.exports import rle_decode, rle_encode, write_coco, write_polygons
from maskdiffusion.geo.raster_io import GeoInfo
from maskdiffusion.geo.synthetic import make_potsdam_like_tile

UTM33 = GeoInfo("EPSG:32633", (0.05, 0.0, 366000.0, 0.0, -0.05, 5808000.0))
CLASSES = ["road", "house", "tree"]
#: Label values: 1 road, 2 house (with a hole holding a tree), 3 tree.
LABELS = np.array([
    [1, 1, 1, 1, 1],
    [1, 2, 2, 2, 1],
    [1, 2, 3, 2, 1],
    [1, 2, 2, 2, 1],
    [3, 3, 1, 1, 1],
], dtype=np.uint8)
#: The same with unlabelled pixels (0): the top row and the tree in the hole.
_ROW = np.arange(5)[:, None]
PARTLY = np.where((_ROW == 0) | (LABELS == 3) & (_ROW == 2), 0, LABELS).astype(np.uint8)


def read(path):
    meta, _, geometry, field_data = pyogrio.raw.read(path)
    return meta, shapely.from_wkb(geometry), dict(zip(meta["fields"], field_data))


def test_polygons_keep_crs_classes_and_area(tmp_path):
    out = write_polygons(tmp_path / "seg.gpkg", LABELS, CLASSES, UTM33)
    meta, geoms, fields = read(out)
    assert CRS.from_user_input(meta["crs"]).to_epsg() == 32633
    assert list(fields["class_name"]) == [CLASSES[k - 1] for k in fields["label"]]
    assert sorted(fields["label"]) == [1, 2, 3, 3]
    np.testing.assert_allclose(fields["area"], shapely.area(geoms))
    for k in (1, 2, 3):
        total = fields["area"][fields["label"] == k].sum()
        assert total == pytest.approx((LABELS == k).sum() * 0.05 ** 2)
    house = geoms[list(fields["label"]).index(2)]
    assert len(house.interiors) == 1
    road = geoms[list(fields["label"]).index(1)]
    assert road.bounds == pytest.approx((366000.0, 5808000.0 - 0.25, 366000.25, 5808000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.gpkg"]


def test_unlabelled_pixels_give_no_polygon(tmp_path):
    _, geoms, fields = read(write_polygons(tmp_path / "part.gpkg", PARTLY, CLASSES))
    assert sorted(fields["label"]) == [1, 1, 2, 3]  # the road falls in two pieces; no polygon of 0
    assert sum(fields["area"]) == pytest.approx(np.count_nonzero(PARTLY))
    covered = rasterio.features.rasterize(zip(geoms, fields["label"]), out_shape=PARTLY.shape, fill=0, dtype="uint8")
    np.testing.assert_array_equal(covered, PARTLY)


def test_polygons_rasterize_back_to_the_labels(tmp_path):
    labels = make_potsdam_like_tile(128, seed=2)[1].astype(np.uint8) + 1  # class index -> label value
    out = write_polygons(tmp_path / "tile.gpkg", labels, preset_classes("potsdam6"), UTM33)
    _, geoms, fields = read(out)
    burned = rasterio.features.rasterize(
        zip(geoms, fields["label"]), out_shape=labels.shape, transform=rasterio.Affine(*UTM33.transform),
        fill=255, dtype="uint8",
    )
    np.testing.assert_array_equal(burned, labels)


def test_dissolved_polygons_and_geojson(tmp_path):
    out = write_polygons(tmp_path / "seg.geojson", LABELS, CLASSES, dissolve=True)
    _, geoms, fields = read(out)
    assert list(fields["label"]) == [1, 2, 3]
    assert list(fields["class_name"]) == CLASSES
    assert list(fields["color"])[0].startswith("#") and len(fields["color"][0]) == 7
    assert [g.geom_type for g in geoms] == ["MultiPolygon"] * 3
    assert list(fields["area"]) == [float((LABELS == k).sum()) for k in (1, 2, 3)]
    with pytest.raises(ValueError, match=r"\.gpkg, \.geojson"):
        write_polygons(tmp_path / "seg.shp", LABELS, CLASSES)


@pytest.mark.parametrize("mask", [
    np.zeros((3, 4), bool),
    np.ones((3, 4), bool),
    np.array([[1, 0, 0], [1, 1, 0]], bool),
])
def test_rle_round_trip_column_major(mask):
    rle = rle_encode(mask)
    assert sum(rle["counts"]) == mask.size
    np.testing.assert_array_equal(rle_decode(rle), mask)


def test_rle_matches_coco_definition():
    # column-major: column 0 = (1, 1), column 1 = (0, 1), column 2 = (0, 0) -> 0 zeros, 2 ones, 1 zero, 1 one, 2 zeros
    mask = np.array([[1, 0, 0], [1, 1, 0]], bool)
    assert rle_encode(mask) == {"size": [2, 3], "counts": [0, 2, 1, 1, 2]}


def test_coco_rle_and_polygons(tmp_path):
    out = write_coco(tmp_path / "seg.json", LABELS, CLASSES, {"file_name": "tile.tif", "id": 7})
    coco = json.loads(out.read_text())
    assert coco["images"] == [{"file_name": "tile.tif", "id": 7, "height": 5, "width": 5}]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert [c["name"] for c in coco["categories"]] == CLASSES
    ann = {a["category_id"]: a for a in coco["annotations"]}
    assert sorted(ann) == [1, 2, 3]
    for k in (1, 2, 3):
        np.testing.assert_array_equal(rle_decode(ann[k]["segmentation"]), LABELS == k)
        assert ann[k]["area"] == (LABELS == k).sum() and ann[k]["image_id"] == 7
    assert ann[2]["bbox"] == [1, 1, 3, 3]
    assert ann[3]["bbox"] == [0, 2, 3, 3]

    part = json.loads(write_coco(tmp_path / "part.json", PARTLY, CLASSES, "tile.tif").read_text())
    masks = {a["category_id"]: rle_decode(a["segmentation"]) for a in part["annotations"]}
    assert sorted(masks) == [1, 2, 3], "unlabelled pixels belong to no annotation"
    assert not np.logical_or.reduce(list(masks.values()))[PARTLY == 0].any()

    poly = json.loads(write_coco(tmp_path / "poly.json", LABELS, CLASSES, "tile.tif", mode="polygons").read_text())
    house = next(a for a in poly["annotations"] if a["category_id"] == 2)
    assert house["segmentation"] == [[1.0, 1.0, 1.0, 4.0, 4.0, 4.0, 4.0, 1.0]]
    tree = next(a for a in poly["annotations"] if a["category_id"] == 3)
    assert len(tree["segmentation"]) == 2
    with pytest.raises(ValueError, match="'rle' or 'polygons'"):
        write_coco(tmp_path / "x.json", LABELS, CLASSES, "tile.tif", mode="bitmap")
