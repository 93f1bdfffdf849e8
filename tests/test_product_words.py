"""Product words only: no tracked text file (code, configs, docs, tests, tools, benchmarks) tells how
the project was built. A choice is explained by its reason and a reference (file:line), so these
are flagged: work sessions, issues and their numbers, numbered stops, helpers in the sense of
agents, and a particular development machine. Product uses (an onnxruntime InferenceSession,
test helper modules, "issue a warning") are allowed."""
import os
import re
import subprocess

import pytest

from conftest import ROOT

#: (what, pattern), matched case-insensitively line by line.
FORBIDDEN = [
    ("a work session", re.compile(r"(?<![\w.])sessions?\b(?!\s*\()", re.I)),
    ("an issue", re.compile(r"\bissues?\b(?!\s+(?:a|an|the)\b)", re.I)),
    ("an issue number", re.compile(r"(?<![\w&/\"'])#\d+\b(?![0-9a-f]*[\"'])", re.I)),
    ("a numbered stop", re.compile(r"\bstops?\s+\d+", re.I)),
    ("a helper (agent)", re.compile(r"\bhelpers?\b(?=\s+(?:session|agent|engineer|brief|report|task)s?\b)|"
                                    r"\b(?:by|from|another|each|the|a)\s+helper(?:'s)?\s+(?:was|were|is|did|wrote|ran|found)\b",
                                    re.I)),
    ("a development machine", re.compile(r"\bdev(?:elopment)?\s+(?:machine|box|vm)\b|\bthe\s+dev\b", re.I)),
    ("an ordinal work round", re.compile(r"\b(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|"
                                         r"eleventh|twelfth)\s+(?:session|round of work|sitting)\b", re.I)),
]
#: Product uses of a flagged word, removed from a line before it is checked.
ALLOWED = re.compile(r"InferenceSession|SessionOptions|onnxruntime session|ort session|"
                     r"\bsessions?\s*=|\bsessions?\.\w|\bsessions?\[|"
                     r"scope\s*=\s*[\"']session[\"']", re.I)  # pytest's fixture scope of a whole test run
#: Files not read: binaries and this file (it spells the patterns).
BINARY_EXT = (".png", ".jpg", ".jpeg", ".gif", ".pkl", ".pth", ".pt", ".npz", ".npy", ".mat", ".gz", ".zip", ".onnx")
SELF = os.path.relpath(os.path.abspath(__file__), ROOT)


def tracked_text_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    return [p for p in out if p and p != SELF and not p.endswith(BINARY_EXT) and os.path.isfile(os.path.join(ROOT, p))]


def offending_lines(text):
    """[(line number, what, line)] of the flagged words in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        checked = ALLOWED.sub("", line)
        for what, pattern in FORBIDDEN:
            if pattern.search(checked):
                found.append((number, what, line.strip()[:160]))
    return found


@pytest.mark.parametrize("text, flagged", [
    ("Measured in the ninth session on 2 cores.", True),
    ("The target of issue 18 is not reached.", True),
    ("fixed in #42", True),
    ("the CI's second leg of stop 24", True),
    ("a helper session wrote this", True),
    ("as on the dev machine", True),
    ("on the 2-core development machine", True),
    ("onnxruntime.InferenceSession(path).run(None, feed)", False),
    ("feed = dict(zip([i.name for i in session.get_inputs()], inputs))", False),
    ('@pytest.fixture(scope="session")', False),
    ('"""Helpers of the AlignPS tests: a tiny batch."""', False),
    ("the hook will issue a warning per group", False),
    ('_MIXED_COLOR = "#555555"', False),
    ("stops the export at the first mismatch", False),
])
def test_patterns(text, flagged):
    assert bool(offending_lines(text)) == flagged, offending_lines(text)


def test_no_tracked_file_tells_the_history():
    files = tracked_text_files()
    assert len(files) > 50, "git ls-files found too few files"
    bad = []
    for path in files:
        try:
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            continue
        bad += [f"{path}:{n}: {what}: {line}" for n, what, line in offending_lines(text)]
    assert not bad, "history words in product files (say the reason instead):\n" + "\n".join(bad)
