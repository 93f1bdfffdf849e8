"""No doc, README or config names a file that does not exist.

Checked: every markdown link (and its #anchor, against the target's headings as GitHub slugs
them), and every file-like reference (`path/to/x.py`, `docs/x.md`, `nae/Base-NAE.yaml`, a bare
`NOTES.md` ...) in markdown (in backticks or not) or in the comments and values of the yaml files.
A reference is resolved against the file's own folder, the repository root, projects/GALW and
projects/GALW/configs; `{a,b}` and `*` expand. Outputs a run writes (output/..., OUTPUT_DIR/...,
$DETECTRON2_DATASETS/..., pretrained weights) are not repository files and are not checked.
"""
import fnmatch
import glob
import os
import re

import pytest

from conftest import CONFIG_DIR, ROOT

SKIP_DIRS = {".git", ".venv", "output", "datasets", "__pycache__", ".pytest_cache", ".ruff_cache"}
BASES = [ROOT, os.path.join(ROOT, "projects", "GALW"), CONFIG_DIR]
#: File kinds a reference must exist for (others, e.g. .json / .png / .pth, are mostly run outputs).
SOURCE_EXT = (".py", ".md", ".yaml", ".sh", ".toml", ".cfg")
#: Files a run or a tool writes, named in the docs without a folder.
GENERATED = {"demo_summary.md", "ablation_summary.md", "README.md"}
#: Docs whose file-like references name files of OTHER repositories (the reference implementations);
#: their markdown links are still checked.
CITES_OTHER_REPOS = {"projects/GALW/docs/fidelity.md"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\s]+)`")
YAML_REF = re.compile(r"[\w./{},*-]+\.(?:py|md|yaml|sh|toml|cfg)\b")


def repo_files(*exts):
    out = []
    for dirpath, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".venv")]  # every venv setup makes
        out += [os.path.join(dirpath, f) for f in files if f.endswith(exts)]
    return sorted(out)


DOCS = [os.path.relpath(p, ROOT) for p in repo_files(".md")] + ["datasets/README.md"]
CONFIGS = [os.path.relpath(p, ROOT) for p in repo_files(".yaml")]
BASENAMES = {os.path.basename(p) for p in repo_files(*SOURCE_EXT)}


def _expand(ref):
    """`a/{b,c}/x*.yaml` -> the glob patterns it stands for."""
    m = re.search(r"\{([^{}]*)\}", ref)
    if not m:
        return [ref]
    return [p for alt in m.group(1).split(",") for p in _expand(ref[: m.start()] + alt + ref[m.end():])]


def exists(ref, here):
    """Whether ``ref`` names a file or folder of the repository, seen from folder ``here``."""
    ref = ref.rstrip(".,;:")
    if "/" not in ref.rstrip("/"):  # a bare name: anywhere in the repository
        return any(fnmatch.fnmatch(name, pattern) for pattern in _expand(ref) for name in BASENAMES)
    for pattern in _expand(ref):
        if not any(glob.glob(os.path.join(base, pattern)) for base in [here] + BASES):
            return False
    return True


def is_repo_reference(ref):
    if ref.startswith(("output", "$", "~", "/", "http", "pretrained/", "<")) or "<" in ref:
        return False
    if re.match(r"[A-Z_]+/", ref):  # a placeholder folder: OUTPUT_DIR/..., OUT/...
        return False
    if "..." in ref or ref.startswith("-") or "=" in ref:
        return False
    name = ref.rstrip(".,;:")
    if not name.endswith(SOURCE_EXT) or os.path.basename(name) in GENERATED:
        return False
    return bool(re.fullmatch(r"[\w./{},*-]+", name))


def slug(heading):
    """GitHub's anchor of a markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(md_path):
    with open(md_path) as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


def broken_references(rel):
    path = os.path.join(ROOT, rel)
    here = os.path.dirname(path)
    with open(path) as f:
        text = f.read()
    broken = []
    if rel.endswith(".md"):
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(here, file_part)) if file_part else path
            if not os.path.exists(full):
                broken.append(f"link {target}")
            elif anchor and full.endswith(".md") and anchor not in anchors(full):
                broken.append(f"link {target} (no such heading)")
        if rel in CITES_OTHER_REPOS:
            return broken
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        refs = [r for r in CODE.findall(prose) if is_repo_reference(r)]
        prose = LINK.sub("", CODE.sub("", prose))
        refs += [r for r in YAML_REF.findall(prose) if is_repo_reference(r)]
    else:
        refs = [r for r in YAML_REF.findall(text) if is_repo_reference(r)]
    broken += [f"file {r}" for r in refs if not exists(r, here)]
    return broken


def test_the_files_are_found():
    assert "README.md" in DOCS and "projects/GALW/docs/galw.md" in DOCS
    assert "projects/GALW/configs/nae/Base-NAE.yaml" in CONFIGS and "tools/ablation_spec.yaml" in CONFIGS


def test_the_checker_finds_a_broken_reference(tmp_path, monkeypatch):
    """A missing file, a missing heading and a missing `path` are each reported."""
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n[ok](#title) [bad](missing.md) [anchor](#nowhere)\n"
                   "`tools/ablation.py` `tools/nothing_here.py` `nae/nae_R50_{cuhk,prw}.yaml` `NOTES.md`\n")
    monkeypatch.setattr(os.path, "relpath", lambda p, start=None: p)
    got = broken_references(str(doc))
    assert got == ["link missing.md", "link #nowhere (no such heading)",
                   "file tools/nothing_here.py", "file NOTES.md"]


@pytest.mark.parametrize("rel", sorted(set(DOCS)) + CONFIGS)
def test_no_reference_to_a_missing_file(rel):
    assert not broken_references(rel), f"{rel} names what does not exist: {broken_references(rel)}"
