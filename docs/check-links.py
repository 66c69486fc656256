#!/usr/bin/env python3
"""Check the relative links of the book (docs/src/**/*.md) and of README.md.

For each markdown link or image whose target is relative (not http:, https:, mailto:), the
file it names must exist, and a #fragment must be the anchor of a heading of the target
markdown file, as mdBook makes it: the heading's text in lower case, whitespace as '-', and
every character but letters, digits, '-' and '_' dropped. Every .md file under docs/src must
also be listed in SUMMARY.md.

Prints each problem as FILE:LINE: LINK (or FILE: not listed in SUMMARY.md) and exits 1 if
there is any. Standard library only. Run from anywhere: paths are taken from this file.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "docs" / "src"

# [text](target) and ![alt](target); target up to whitespace or ')'; an optional "title".
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# Reference definitions: [label]: target
REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"""\bid\s*=\s*["']([^"']+)["']""")
SKIP = ("http:", "https:", "mailto:", "ftp:", "tel:")


def anchor(text):
    """mdBook's anchor of a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    out = []
    for ch in text.strip():
        if ch.isalnum() or ch in "-_":
            out.append(ch.lower())
        elif ch.isspace():
            out.append("-")
    return "".join(out)


def outside_fences(lines):
    """Yield (number, line) for the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(lines, 1):
        stripped = line.lstrip()
        if fence is None and (stripped.startswith("```") or stripped.startswith("~~~")):
            fence = stripped[:3]
            continue
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        yield number, line


def strip_code(lines):
    """Yield (number, line) outside fenced code blocks, with inline code spans blanked."""
    for number, line in outside_fences(lines):
        yield number, re.sub(r"(`+)(?:(?!\1).)+?\1", lambda m: " " * len(m.group(0)), line)


_anchors = {}


def anchors_of(path):
    """The anchors of a markdown file's headings (with mdBook's -1, -2 for repeats)."""
    if path not in _anchors:
        found, seen = set(), {}
        lines = path.read_text(encoding="utf-8").splitlines()
        for _, line in strip_code(lines):
            for ident in HTML_ID.findall(line):  # <a id="..."> and the like
                found.add(ident)
        for _, line in outside_fences(lines):
            m = HEADING.match(line)
            if m:
                base = anchor(m.group(2).replace("`", ""))  # code spans keep their text
                n = seen.get(base, 0)
                found.add(base if n == 0 else f"{base}-{n}")
                seen[base] = n + 1
        _anchors[path] = found
    return _anchors[path]


def check_file(md, problems):
    lines = md.read_text(encoding="utf-8").splitlines()
    for number, line in strip_code(lines):
        targets = [m.group(1) for m in LINK.finditer(line)]
        m = REFDEF.match(line)
        if m:
            targets.append(m.group(1))
        for target in targets:
            if target.lower().startswith(SKIP) or target.startswith("//"):
                continue
            path_part, _, fragment = target.partition("#")
            dest = md if path_part == "" else (md.parent / path_part).resolve()
            rel = md.relative_to(ROOT)
            if not dest.exists():
                problems.append(f"{rel}:{number}: {target}")
                continue
            if fragment:
                if dest.is_dir() or dest.suffix.lower() != ".md":
                    problems.append(f"{rel}:{number}: {target}")
                elif fragment not in anchors_of(dest):
                    problems.append(f"{rel}:{number}: {target}")


def summary_problems():
    summary = BOOK / "SUMMARY.md"
    if not summary.exists():
        return [f"{summary.relative_to(ROOT)}: missing"]
    listed = set()
    for _, line in strip_code(summary.read_text(encoding="utf-8").splitlines()):
        for m in LINK.finditer(line):
            target = m.group(1).partition("#")[0]
            if target:
                listed.add((BOOK / target).resolve())
    out = []
    for md in sorted(BOOK.rglob("*.md")):
        if md.name == "SUMMARY.md":
            continue
        if md.resolve() not in listed:
            out.append(f"{md.relative_to(ROOT)}: not listed in SUMMARY.md")
    return out


def main():
    problems = []
    files = sorted(BOOK.rglob("*.md"))
    readme = ROOT / "README.md"
    if readme.exists():
        files.append(readme)
    for md in files:
        check_file(md, problems)
    problems += summary_problems()
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
