
import pytest

from maskdiffusion.core.classes import (
    EMPTY_NAME,
    ClassListError,
    ClassSpec,
    as_class_specs,
    parse_class_list,
    preset_classes,
    read_class_file,
    write_class_file,
)


def test_parse_names_prompts_and_default_colours():
    specs = parse_class_list("road, building=house|roof ,  tree")
    assert [s.name for s in specs] == ["road", "building", "tree"]
    assert specs[1].prompts == ("house", "roof")
    assert specs[0].prompts == ("road",)
    assert len({s.color for s in specs}) == 3


@pytest.mark.parametrize("bad, message", [
    ("", "no classes"),
    ([], "no classes"),
    ("road,Road", "duplicate class name"),
    (["tree", "  "], "empty"),
    ([{"name": "a", "prompts": ["x", ""]}], "empty prompt"),
])
def test_bad_class_lists_are_rejected_with_a_reason(bad, message):
    with pytest.raises(ClassListError, match=message):
        as_class_specs(bad)


def test_presets():
    p6 = preset_classes("potsdam6")
    assert [c.name for c in p6] == ["impervious surfaces", "building", "low vegetation", "tree", "car", "clutter"]
    assert p6[1].color == (0, 0, 255)
    assert len(preset_classes("Potsdam-3")) == 3
    assert len(preset_classes("cityscapes")) == 19
    coco = preset_classes("cocostuff27")
    assert len(coco) == 27 and len({c.name for c in coco}) == 27
    assert as_class_specs("preset:potsdam6") == p6
    with pytest.raises(ClassListError, match="unknown preset"):
        preset_classes("voc")


def test_class_files_round_trip(tmp_path):
    specs = as_class_specs([ClassSpec("impervious", ("road", "pavement"), (255, 255, 255)), "tree"])
    write_class_file(tmp_path / "c.json", specs)
    assert read_class_file(tmp_path / "c.json") == specs
    (tmp_path / "c.txt").write_text("# my classes\nimpervious = road | pavement ; #ffffff\ntree\n\n")
    assert read_class_file(tmp_path / "c.txt") == specs


def test_class_file_errors(tmp_path):
    with pytest.raises(ClassListError, match="cannot read"):
        read_class_file(tmp_path / "missing.txt")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ClassListError, match="not valid JSON"):
        read_class_file(tmp_path / "bad.json")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ClassListError, match="no classes"):
        read_class_file(tmp_path / "empty.txt")


@pytest.mark.parametrize("text", ["a,,b", ",,,", "a,b,", "a, =road, b", " , a"])
def test_an_empty_name_anywhere_is_rejected_not_dropped(text):
    with pytest.raises(ClassListError) as error:
        parse_class_list(text)
    assert str(error.value) == EMPTY_NAME


@pytest.mark.parametrize("name, content", [
    ("c.txt", "road\n= pavement | asphalt\ntree\n"),
    ("c.txt", "road\n ; #ff0000\n"),
    ("c.json", '{"classes": [{"name": "road"},\n {"name": " "}]}'),
    ("c.json", '[{"name": "road"},\n {"name": "", "prompts": ["x"]}]'),
])
def test_an_empty_name_in_a_class_file_is_rejected_alike(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ClassListError) as error:
        read_class_file(tmp_path / name)
    assert str(error.value) == f"class file {tmp_path / name}, line 2: {EMPTY_NAME}"


@pytest.mark.parametrize("name, content, message", [
    ("c.json", '[\n  {"name": "road"},\n  {"prompts": ["tree"]}\n]', 'line 3: a class has no "name"'),
    ("c.json", '{"classes": [\n  {"name": "road",\n   "color": "red"}]}',
     "line 2: class 'road': colour must be #rrggbb or three values 0-255, got 'red'"),
    ("c.json", '[{"name": "road", "color": [0, 0, 300]}]',
     "line 1: class 'road': colour must be #rrggbb or three values 0-255, got [0, 0, 300]"),
    ("c.json", '[{"name": "road"', "line 1: not valid JSON (Expecting ',' delimiter, column 17)"),
    ("c.txt", "road\ntree ; #zzzzzz\n", "line 2: class 'tree': colour must be #rrggbb or three values 0-255, "
                                         "got '#zzzzzz'"),
    ("c.txt", b"road\ncaf\xe9\n", "line 2: not UTF-8 text (byte 0xe9); save it as UTF-8"),
], ids=["json-no-name", "json-colour-word", "json-colour-range", "json-syntax", "text-colour", "latin-1"])
def test_a_bad_class_file_exits_2_naming_the_file_line_and_fault(tmp_path, capsys, name, content, message):
    """Issue 27 case 9: one line, exit 2, never a KeyError, ValueError or UnicodeDecodeError."""
    from maskdiffusion.cli import main

    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code = main(["segment", str(tmp_path / "none.tif"), "--classes-file", str(path), "--out", str(tmp_path / "s.tif")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"maskdiffusion segment: error: class file {path}, {message}", err


def test_class_colours_as_hex_or_values_and_a_utf8_bom(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b'\xef\xbb\xbf[{"name": "road", "color": "#ff8000"}, {"name": "tree", "color": [0, 128.0, 0]}]')
    assert [c.color for c in read_class_file(path)] == [(255, 128, 0), (0, 128, 0)]


@pytest.mark.parametrize("classes", ["a,,b", ",,,", "tree,"])
def test_cli_rejects_an_empty_class_name_with_one_line(tmp_path, capsys, classes):
    from maskdiffusion.cli import main

    code = main(["segment", str(tmp_path / "none.tif"), "--classes", classes, "--out", str(tmp_path / "s.tif")])
    assert code == 2 and capsys.readouterr().err.strip() == f"maskdiffusion segment: error: {EMPTY_NAME}"
