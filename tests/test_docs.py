"""The documentation stays inside the repository: every link and path reference resolves here.

A user who clones the repository sees only what is in it, so every Markdown file's links and the
paths it names must exist in the checkout, and nothing may point outside it (an absolute path, a
relative link or path that climbs above the root, the retired design-document names).
Path references are the tokens whose first part is a top-level entry of the repository
(``hashing/metrics.py``, ``benchmarks/results/``) and bare ``*.md`` names; example paths
(``data/mnist5k``, ``runs/<run>/model``) start elsewhere and are not checked. Anchors of links to
Markdown files are checked against the target's headings (GitHub's slug rule).
"""

from __future__ import annotations

import functools
import glob
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Where a checkout keeps things that are not the project's (used when git is not available).
_NOT_PROJECT = {".git", ".venv", "venv", "build", "dist", "node_modules", ".pytest_cache"}
_DESIGN_NAMES = re.compile(r"\b(?:ARCHITECTURE|EVALUATION|METHODS|RAY_NOTES|STYLE)\.md\b")
# A relative path that starts by climbing: in code, it must still land inside the repository.
_CLIMBING_PATH = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-]+)")

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_HTML_LINK = re.compile(r"\b(?:href|src)=[\"']([^\"']+)[\"']")
_URI = re.compile(r"\b[A-Za-z][\w+.-]*:/+[^\s)>\]`'\"]*")
# A path-looking token: optional ./ or ../ steps, then name(/name)*, starting at a word boundary.
_PATH_TOKEN = re.compile(r"(?<![\w/.~<{-])((?:\.\.?/)*[\w.-]+(?:/[\w.*<>{}-]*)*)")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _git_files(*patterns: str) -> list[str] | None:
    """Tracked and untracked-but-not-ignored files matching ``patterns``; None without git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *patterns],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [line for line in listed.stdout.splitlines() if (REPO / line).is_file()]


def _project_files(*suffixes: str) -> list[Path]:
    """The project's files with one of ``suffixes``, as git sees them (else a filtered walk)."""
    listed = _git_files(*(f"*{suffix}" for suffix in suffixes))
    if listed is not None:
        return sorted(REPO / name for name in listed)
    return sorted(
        path
        for path in REPO.rglob("*")
        if path.suffix in suffixes
        and path.is_file()
        and not any(p in _NOT_PROJECT or p.endswith(".egg-info") for p in path.parts)
    )


@functools.cache
def _top_level_names() -> frozenset[str]:
    """First path parts of the project's files: what a repository path reference starts with."""
    listed = _git_files()
    if listed is None:
        listed = [p.relative_to(REPO).as_posix() for p in _project_files(".py", ".md", ".yaml")]
    return frozenset(name.split("/", 1)[0] for name in listed)


MARKDOWN = _project_files(".md")


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _inside_repo(path: Path) -> bool:
    return path.resolve().is_relative_to(REPO)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[`*_~]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def _anchors(path: Path) -> frozenset[str]:
    """Anchors a Markdown file offers: one per heading, repeats numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return frozenset(anchors)


def _links(text: str) -> list[str]:
    """Link targets of a Markdown text (inline, reference-style and HTML), code blocks excluded."""
    prose = _FENCE.sub("", text)
    prose = re.sub(r"`[^`\n]*`", "code", prose)  # code spans are not links; [`x`](y) stays one
    found = _INLINE_LINK.findall(prose) + _REFERENCE_LINK.findall(prose)
    return found + _HTML_LINK.findall(prose)


def _path_references(text: str) -> list[str]:
    """Path-looking tokens that name something in the repository (see the module docstring)."""
    tops = _top_level_names()
    references = []
    for token in _PATH_TOKEN.findall(_URI.sub(" ", text)):
        token = token.rstrip(".,;:")
        steps = [part for part in token.split("/") if part not in ("", ".")]
        if not steps:
            continue
        in_repo = steps[0] == ".." or (steps[0] in tops and "/" in token)
        if in_repo or ("/" not in token and token.endswith(".md")):
            references.append(token)
    return references


def _exists(base: Path, reference: str) -> bool:
    """Whether ``reference`` (maybe with a glob or a <placeholder>) names something under
    ``base``."""
    placeholder = re.search(r"[<{]", reference)
    if placeholder:  # e.g. benchmarks/results/<name>.json: the folder before it must exist
        reference = reference[: placeholder.start()].rsplit("/", 1)[0]
    if re.search(r"[*?\[]", reference):
        return any(base.glob(reference))
    # An output prefix (``--out benchmarks/results/search`` writes search.json, search.md, ...)
    return (base / reference).exists() or any(base.glob(glob.escape(reference) + ".*"))


@pytest.mark.parametrize("path", MARKDOWN, ids=_rel)
def test_nothing_points_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert str(REPO) not in text, f"{_rel(path)} names this checkout's absolute path"
    retired = sorted(set(_DESIGN_NAMES.findall(text)))
    assert not retired, f"{_rel(path)} cites design documents outside the repository: {retired}"


@pytest.mark.parametrize("path", MARKDOWN, ids=_rel)
def test_links_resolve_inside_the_repository(path: Path) -> None:
    broken = []
    for target in _links(path.read_text(encoding="utf-8")):
        if _URI.match(target) or target.startswith(("mailto:", "tel:")):
            continue  # external; not checked here
        location, _, anchor = target.partition("#")
        if location.startswith("/") or re.match(r"[A-Za-z]:[\\/]", location):
            broken.append(f"{target} (absolute path)")
            continue
        resolved = (path.parent / location) if location else path
        if not _inside_repo(resolved):
            broken.append(f"{target} (leaves the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (missing)")
        elif anchor and resolved.suffix == ".md" and anchor.lower() not in _anchors(resolved):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    assert not broken, f"{_rel(path)}: " + "; ".join(broken)


@pytest.mark.parametrize("path", MARKDOWN, ids=_rel)
def test_path_references_exist(path: Path) -> None:
    broken = []
    for reference in _path_references(path.read_text(encoding="utf-8")):
        bases = [path.parent] if reference.startswith("..") else [REPO, path.parent]
        if reference.startswith("..") and not _inside_repo(path.parent / reference):
            broken.append(f"{reference} (leaves the repository)")
        elif not any(_exists(base, reference) for base in bases):
            broken.append(f"{reference} (missing)")
    assert not broken, f"{_rel(path)}: " + "; ".join(sorted(set(broken)))


def test_the_checks_see_the_docs() -> None:
    names = {_rel(path) for path in MARKDOWN}
    assert {"README.md", "docs/architecture.md", "docs/evaluation.md"} <= names
    assert _path_references("see hashing/metrics.py, data/mnist5k and EVALUATION.md.") == [
        "hashing/metrics.py",
        "EVALUATION.md",
    ]
    assert _links("[a](docs/x.md#y) `[b](c)` ![i](../p.png)") == ["docs/x.md#y", "../p.png"]


def test_code_does_not_cite_documents_outside_the_repository() -> None:
    this_file = Path(__file__).resolve()
    offenders = []
    for path in _project_files(".py", ".toml", ".yaml", ".yml"):
        if path.resolve() == this_file:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        climbing = {
            token for token in _CLIMBING_PATH.findall(text) if not _inside_repo(path.parent / token)
        }
        found = sorted(set(_DESIGN_NAMES.findall(text)) | climbing)
        if found:
            offenders.append(f"{_rel(path)}: {', '.join(found)}")
    assert not offenders, "cite docs/*.md instead:\n" + "\n".join(offenders)
