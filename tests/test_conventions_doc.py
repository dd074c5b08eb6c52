"""The glossary is one table in two places (README, docs/conventions.md), and every name in
it is a name the public API uses: a parameter of a public function, a field of Guidance, or an
attribute of Schedule."""

import inspect
import re
from pathlib import Path

import refdiff as rd

ROOT = Path(__file__).resolve().parent.parent


def _glossary(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text[text.index("<!-- glossary"):text.index("<!-- /glossary -->")]


def _api_names() -> set[str]:
    names = set(rd.Guidance.__dataclass_fields__) | {"num_train_timesteps"}
    for obj in (getattr(rd, n) for n in rd.__all__):
        if callable(obj) and not isinstance(obj, type):
            names |= set(inspect.signature(obj).parameters)
    return names


def test_readme_and_docs_hold_the_same_glossary():
    assert _glossary(ROOT / "README.md") == _glossary(ROOT / "docs" / "conventions.md")


def test_every_glossary_name_is_used_by_the_public_api():
    rows = [ln for ln in _glossary(ROOT / "README.md").splitlines() if ln.startswith("| `")]
    names = {n for row in rows for n in re.findall(r"`([a-z_0-9A-Z]+)`", row.split("|")[1])}
    assert len(names) >= 20
    assert sorted(names - _api_names()) == []


def test_no_module_cites_a_missing_conventions_file():
    for path in (ROOT / "refdiff").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "CONVENTIONS.md" not in text, path
        if "docs/conventions.md" in text:
            assert (ROOT / "docs" / "conventions.md").exists()
