"""The model catalogue data (Resources/Models), the name table terms.json and the Slicer terminology file."""
import importlib.util
import json
from pathlib import Path

import pytest

from UXNetSegmentLib.catalogue import get_model, list_models, load_spec, resources_dir, spec_from_dict
from UXNetSegmentLib.errors import UXNetError

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "Testing" / "Data"
MODELS = resources_dir() / "Models"
OFFICIAL = ["flare2021", "amos2022", "feta2021"]

LABELS = {
    "flare2021": ["liver", "kidney", "spleen", "pancreas"],
    "amos2022": ["spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
                 "inferior vena cava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum",
                 "bladder", "prostate/uterus"],
    "feta2021": ["external cerebrospinal fluid", "grey matter", "white matter", "ventricles", "cerebellum",
                 "deep grey matter", "brainstem"],
}
RECIPE = {  # name: (modality, spacing, intensity window)
    "flare2021": ("CT", (1.0, 1.0, 1.2), (-125.0, 275.0)),
    "amos2022": ("CT", (1.5, 1.5, 2.0), (-125.0, 275.0)),
    "feta2021": ("MR", None, (0.0, 1000.0)),
}
DRIVE_IDS = {"flare2021": "1APxKmq3MuueY4KtuKAZG3vs3vPLetLaK", "amos2022": "1G8uhjKh8392UFtGsMeolO__Lmz3GLAiG",
             "feta2021": "1AqJMIM2w8OGGiN1FonmZqNoRHd2x5fTL"}
RIGHT, LEFT = ("SCT", "24028007", "Right"), ("SCT", "7771000", "Left")


def _is_sct(code) -> bool:
    return code is not None and len(code) == 3 and code[0] == "SCT" and code[1].isdigit() and bool(code[2])


def _term_tool():
    spec = importlib.util.spec_from_file_location("make_term_json", REPO / "tools" / "make_term_json.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_catalogue_file_parses():
    files = [p for p in MODELS.glob("*.json") if p.name != "terms.json"]
    models = list_models()
    assert len(models) == len(files) == len({m.name for m in models})
    assert set(OFFICIAL) <= {m.name for m in models}
    for path in MODELS.glob("*.json"):
        json.loads(path.read_text())


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_model_entry(name):
    raw = json.loads((MODELS / f"{name}.json").read_text())
    spec = get_model(name)
    assert [spec.labels[v].name for v in sorted(spec.labels)] == LABELS[name]
    assert sorted(spec.labels) == list(range(1, len(LABELS[name]) + 1))
    assert (spec.modality, spec.spacing, spec.intensity_window) == RECIPE[name]
    assert spec.roi_size == (96, 96, 96) and spec.overlap == 0.5 and spec.intensity_percentiles is None
    assert spec.title and spec.description
    assert "3D UX-Net" in spec.citation and "ICLR 2023" in spec.citation and "Lee" in spec.citation
    assert spec.weights_url == f"https://drive.google.com/uc?export=download&id={DRIVE_IDS[name]}"
    assert spec.weights_sha256 is None and spec.weights_file == f"{name}.pth" and not spec.bundled
    # every label is spelled out in the model file itself, not borrowed from terms.json
    assert all(set(entry) >= {"name", "color", "terminology"} for entry in raw["labels"].values())


def test_flare_uses_the_challenge_label_values():
    labels = get_model("flare2021").labels
    assert (labels[1].name, labels[2].name, labels[3].name, labels[4].name) == (
        "liver", "kidney", "spleen", "pancreas")
    assert labels[1].type == ("SCT", "10200004", "Liver")


@pytest.mark.parametrize("name", OFFICIAL)
def test_class_count_matches_the_official_checkpoint(name):
    layout = json.loads((DATA / f"official_state_dict_{name}.json").read_text())
    shapes = {key: shape for key, shape, _ in layout["state_dict"]}
    spec = get_model(name)
    assert layout["config"]["out_chans"] == spec.num_classes == len(spec.labels) + 1
    assert shapes["out.conv.conv.weight"][0] == spec.num_classes


def test_every_label_has_snomed_codes_and_a_colour():
    for model in list_models():
        for label in model.labels.values():
            where = f"{model.name}:{label.value} {label.name}"
            assert _is_sct(label.category) and _is_sct(label.type), where
            assert len(label.color) == 3 and all(0 <= c <= 255 for c in label.color), where
            if label.name.startswith("right "):
                assert label.modifier == RIGHT, where
            elif label.name.startswith("left "):
                assert label.modifier == LEFT, where
            else:
                assert label.modifier is None or _is_sct(label.modifier), where


def test_terms_table_agrees_with_the_catalogue():
    terms = json.loads((MODELS / "terms.json").read_text())
    assert all(name == name.lower() for name in terms)
    assert {"cerebrospinal fluid", "grey matter", "white matter"} <= set(terms)
    for entry in terms.values():
        term = entry["terminology"]
        assert _is_sct(term["category"]) and _is_sct(term["type"]) and len(entry["color"]) == 3
    for model in list_models():
        for label in model.labels.values():
            entry = terms[label.name.lower()]
            term = entry["terminology"]
            assert tuple(entry["color"]) == label.color, label.name
            assert (tuple(term["category"]), tuple(term["type"])) == (label.category, label.type), label.name
            assert (tuple(term["modifier"]) if "modifier" in term else None) == label.modifier, label.name


def test_minimal_custom_spec_gets_codes_from_terms(tmp_path):
    path = tmp_path / "mymodel.json"
    path.write_text(json.dumps({
        "name": "mymodel", "labels": {"1": "Liver", "2": "cerebrospinal fluid", "3": "Grey matter",
                                      "4": "white matter", "5": "Left kidney", "6": "tumour"},
        "spacing": [1.0, 1.0, 1.0], "intensity_window": [-100, 200], "roi_size": [96, 96, 96],
        "overlap": 0.25, "modality": "CT"}))
    spec = load_spec(path)
    assert spec.name == "mymodel" and spec.source == path and spec.num_classes == 7
    assert (spec.spacing, spec.intensity_window, spec.overlap) == ((1.0, 1.0, 1.0), (-100.0, 200.0), 0.25)
    assert spec.labels[1].name == "Liver"  # the user's spelling is kept
    assert spec.labels[1].type == ("SCT", "10200004", "Liver")
    assert spec.labels[2].type == ("SCT", "280371009", "Brain cerebrospinal fluid pathway")
    assert spec.labels[3].type == ("SCT", "40146001", "Cerebral Grey Matter")
    assert spec.labels[4].type == ("SCT", "68523003", "Cerebral White Matter")
    assert spec.labels[5].modifier == LEFT and spec.labels[5].color == (185, 102, 83)
    unknown = spec.labels[6]  # a name the table does not know keeps the generic defaults
    assert unknown.type is None and unknown.category == ("SCT", "123037004", "Anatomical Structure")
    assert spec.weights_url is None


@pytest.mark.parametrize("data, message", [
    ({"labels": {"1": "liver"}, "intensity_window": [0, 1]}, "no 'name'"),
    ({"name": "x", "intensity_window": [0, 1]}, "no 'labels'"),
    ({"name": "x", "labels": {"one": "liver"}, "intensity_window": [0, 1]}, "label keys must be integers"),
    ({"name": "x", "labels": {"1": {"color": [1, 2, 3]}}, "intensity_window": [0, 1]}, "label 1 has no name"),
    ({"name": "x", "labels": {"1": "liver"}, "spacing": [1, 1, 1]}, "needs 'intensity_window'"),
    ({"name": "x", "labels": ["liver"], "intensity_window": [0, 1]}, "'labels' must be an object"),
    ({"name": "x", "labels": {}, "intensity_window": [0, 1]}, "'labels' must be an object"),
    ({"name": "x", "labels": {"1": 7}, "intensity_window": [0, 1]}, "label 1 must be a name"),
    ({"name": "x", "labels": {"1": "liver"}, "intensity_window": [0, 1], "spacing": [1, 1]}, "'spacing' must be 3"),
    ({"name": "x", "labels": {"1": "liver"}, "intensity_window": [0, 1], "spacing": [1, 0, 1]}, "positive"),
    ({"name": "x", "labels": {"1": "liver"}, "intensity_window": [275, -125]}, "low before high"),
    ({"name": "x", "labels": {"1": "liver"}, "intensity_window": "wide"}, "'intensity_window' must be 2"),
    ({"name": "x", "labels": {"1": "liver"}, "intensity_window": [0, 1], "roi_size": [96, 96]}, "'roi_size'"),
    ({"name": "x", "labels": {"1": "liver"}, "intensity_window": [0, 1], "overlap": 1.0}, r"'overlap' .*\[0, 1\)"),
])
def test_bad_specs_are_refused(data, message):
    with pytest.raises(UXNetError, match=message) as err:
        spec_from_dict(data)
    assert "\n" not in str(err.value)


def test_bad_spec_files_are_refused(tmp_path):
    with pytest.raises(UXNetError, match="does not exist"):
        load_spec(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x", "labels": ')
    with pytest.raises(UXNetError, match="not valid JSON"):
        load_spec(broken)
    with pytest.raises(UXNetError, match="unknown model 'nope'.*flare2021"):
        get_model("nope")


def test_slicer_terminology_file_is_current_and_complete():
    tool = _term_tool()
    path = tool.output_path()
    assert path == REPO / "Resources" / "Terminology" / "UXNetSegment.term.json"
    assert path.read_text() == tool.render(), "stale: run python tools/make_term_json.py"
    context = json.loads(path.read_text())
    assert context["SegmentationCategoryTypeContextName"] == "UXNetSegment"
    index = {}
    for category in context["SegmentationCodes"]["Category"]:
        for typ in category["Type"]:
            key = (category["CodingSchemeDesignator"], category["CodeValue"], typ["CodingSchemeDesignator"],
                   typ["CodeValue"])
            index[key] = typ
    for model in list_models():
        for label in model.labels.values():
            typ = index[label.category[:2] + label.type[:2]]
            assert typ["CodeMeaning"] == label.type[2]
            if label.modifier is None:
                shown = typ
            else:
                shown = next(m for m in typ["Modifier"]
                             if (m["CodingSchemeDesignator"], m["CodeValue"]) == label.modifier[:2])
            if shown["3dSlicerLabel"] == label.name:  # another model may have named these codes first
                assert shown["recommendedDisplayRGBValue"] == list(label.color), label.name
