#!/usr/bin/env python
"""Rewrite the docs' results tables from the result files (``make results``).

    python tools/render_results.py [--check] [PAGE.md ...]

Every block between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in the pages (default:
README.md, projects/GALW/README.md, projects/GALW/docs/*.md) is rendered from
``results/NAME.json`` or ``results/NAME/*.json`` (galw/results_docs.py). ``--check`` changes
nothing and exits 1 when a page differs from its rendering.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "GALW"))

from galw.results_docs import doc_files, render_file  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="*", help="Markdown pages (default: every docs page)")
    parser.add_argument("--check", action="store_true", help="only report pages that differ; exit 1 if any")
    parser.add_argument("--results-dir", default=None, help="results folder (default: the repository's results/)")
    args = parser.parse_args(argv)
    pages = args.pages or doc_files(REPO)
    changed = [p for p in pages if render_file(p, args.results_dir, write=not args.check)]
    for page in changed:
        print(f"{'differs' if args.check else 'rewritten'}: {os.path.relpath(page, REPO)}")
    print(f"{len(pages)} pages, {len(changed)} {'differ' if args.check else 'rewritten'}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
