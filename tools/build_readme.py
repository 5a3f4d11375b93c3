"""Assemble README.md from the section files in docs/ (each section is edited where it lives).

    python tools/build_readme.py
"""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ["README-head.md", "README-engine.md", "README-slicer.md", "README-compare.md", "README-tail.md"]


def main() -> None:
    parts = [(REPO / "docs" / name).read_text().strip() for name in SECTIONS]
    (REPO / "README.md").write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
