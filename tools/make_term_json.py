"""Write ``Resources/Terminology/UXNetSegment.term.json`` from the model catalogue, so they never drift.

The output is a Slicer terminology context (the ``SegmentationCategoryTypeModifier`` JSON schema that
Slicer's Terminologies module loads): Category -> Type -> Modifier, holding every label of every catalogue
model plus every name in ``Resources/Models/terms.json``, with its colour and Slicer label text.

    python tools/make_term_json.py           # rewrite the file
    python tools/make_term_json.py --check   # exit 1 if the file is stale
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "UXNetSegment"))

from UXNetSegmentLib.catalogue import Label, list_models, resources_dir, spec_from_dict  # noqa: E402

CONTEXT_NAME = "UXNetSegment"
SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#"


def output_path() -> Path:
    return resources_dir() / "Terminology" / "UXNetSegment.term.json"


def all_labels() -> List[Label]:
    """Catalogue labels first (their names win), then the names of ``terms.json``; only coded ones."""
    labels = [label for model in list_models() for label in model.labels.values()]
    terms_file = resources_dir() / "Models" / "terms.json"
    names = sorted(json.loads(terms_file.read_text())) if terms_file.is_file() else []
    table = spec_from_dict({"name": "terms", "labels": {str(i): n for i, n in enumerate(names, 1)},
                            "intensity_window": [0, 1]})
    labels += list(table.labels.values())
    return [label for label in labels if label.type is not None]


def _code(triplet) -> Dict[str, str]:
    scheme, value, meaning = triplet
    return {"CodingSchemeDesignator": scheme, "CodeValue": value, "CodeMeaning": meaning}


def _find(items: List[dict], triplet) -> Optional[dict]:
    for item in items:
        if (item["CodingSchemeDesignator"], item["CodeValue"]) == (triplet[0], triplet[1]):
            return item
    return None


def build_context(labels: Iterable[Label]) -> dict:
    """The terminology context as a dict; the first label seen for a code gives its colour and text."""
    categories: List[dict] = []
    for label in labels:
        category = _find(categories, label.category)
        if category is None:
            category = {**_code(label.category), "showAnatomy": False, "Type": []}
            categories.append(category)
        typ = _find(category["Type"], label.type)
        if typ is None:
            typ = _code(label.type)
            category["Type"].append(typ)
        shown = {"recommendedDisplayRGBValue": [int(c) for c in label.color], "3dSlicerLabel": label.name}
        if label.modifier is None:
            for key, value in shown.items():
                typ.setdefault(key, value)
            continue
        modifiers = typ.setdefault("Modifier", [])
        if _find(modifiers, label.modifier) is None:
            modifiers.append({**_code(label.modifier), **shown})
    return {"SegmentationCategoryTypeContextName": CONTEXT_NAME, "@schema": SCHEMA,
            "SegmentationCodes": {"Category": categories}}


def render() -> str:
    return json.dumps(build_context(all_labels()), indent=2) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the catalogue")
    args = parser.parse_args(argv)
    path, text = output_path(), render()
    if args.check:
        current = path.read_text() if path.is_file() else ""
        if current != text:
            print(f"{path} is stale; run: python tools/make_term_json.py", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
