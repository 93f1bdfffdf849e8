"""Command lines in the docs put flags before the KEY VALUE overrides: detectron2's argument parser
(default_argument_parser, opts=argparse.REMAINDER) reads everything after the first override as an
override, so ``train_net.py ... SOLVER.MAX_ITER 10 --resume`` would not resume."""
import glob
import os
import re

from conftest import ROOT

OVERRIDE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def doc_files():
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "projects", "GALW", "**", "*.md"),
                                                                recursive=True))


def command_lines(text):
    """Shell lines of the text's code (fenced blocks and inline code), continuations joined."""
    code = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text)
    for block in code:
        yield from block.replace("\\\n", " ").splitlines()


def flag_after_override(line):
    """The first ``--flag`` that follows a KEY VALUE override on a train_net.py or tools/ line (their
    parsers end in the overrides as well), else None."""
    if "train_net.py" not in line and "tools/" not in line:
        return None
    seen_override = False
    for word in line.split():
        if OVERRIDE.match(word):
            seen_override = True
        elif seen_override and word.startswith("--"):
            return word
    return None


def test_docs_put_flags_before_overrides():
    bad = []
    for path in doc_files():
        with open(path) as f:
            for line in command_lines(f.read()):
                flag = flag_after_override(line.split("#")[0])
                if flag:
                    bad.append(f"{os.path.relpath(path, ROOT)}: {flag} after an override in: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_late_flag():
    assert flag_after_override("python train_net.py --config-file c.yaml SOLVER.MAX_ITER 10 --resume") == "--resume"
    assert flag_after_override("python train_net.py --config-file c.yaml --resume SOLVER.MAX_ITER 10") is None
    assert list(command_lines("text `python train_net.py --resume X.Y 1`\n```bash\npython a \\\n  b\n```\n")) == [
        "python a    b", "python train_net.py --resume X.Y 1"]
