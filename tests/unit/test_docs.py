"""README.md and docs/ stay true to the tree: every relative link resolves,
and every setting the configuration reference names is a real one. (The
README's walk-throughs run verbatim in tests/pipeline/test_readme.py and
tests/vector_service/test_vector_api.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metadata_service.config import MetadataSettings
from vector_service.config import VectorSettings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text()
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{page.name}: no heading #{anchor}"


def test_the_readme_points_to_each_page_of_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


_KNOWN = {f.upper() for cls in (MetadataSettings, VectorSettings) for f in cls.model_fields}


def _documented_settings() -> set[str]:
    named: set[str] = set()
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if line.startswith("| `"):
            named |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    assert named, "docs/configuration.md lost its tables"
    return named


def test_every_setting_the_configuration_reference_names_exists() -> None:
    """A renamed or removed setting must leave docs/configuration.md too."""
    named = _documented_settings()
    assert named <= _KNOWN, f"not settings of either service: {sorted(named - _KNOWN)}"


def test_every_setting_is_documented() -> None:
    """A setting added to either service must get a row in docs/configuration.md."""
    missing = _KNOWN - _documented_settings()
    assert not missing, f"settings missing from docs/configuration.md: {sorted(missing)}"
