#!/usr/bin/env python3
"""Checks the relative links of the repository's markdown files.

Run from anywhere: `python3 scripts/check_links.py`. CI runs it (.ci/run, step "docs links").

Every markdown file git knows of (`git ls-files`, tracked or new and not ignored; fuzz corpora
and target/ excluded) is read, and every relative link in it, `[text](path)`, `![alt](path)` or
a reference definition `[name]: path`, must name an existing file or directory (relative to the
file, or to the repository root when it starts with `/`). A link with `#anchor` into a markdown
file (or `#anchor` alone, into the same file) must match one of that file's headings, slugged as
GitHub does: lower case, punctuation dropped except `-` and `_`, each space a `-`, and repeated
headings numbered `-1`, `-2`, ... (`<a name=...>` and `id=...` anchors count too). Links with a
scheme (`http:`, `https:`, `mailto:`, ...) are not checked. Links inside code blocks and code
spans are not links.

Prints `file:line: link` for each broken link and exits 1; otherwise prints one summary line and
exits 0. Standard library only.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent

# Generated or third-party trees whose markdown is not ours to keep linked.
EXCLUDED_PREFIXES = ("fuzz/corpus/", "fuzz/artifacts/", "fuzz/seeds/", "fuzz/target/")
EXCLUDED_PARTS = {"target", "node_modules", ".git"}

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
HTML_ANCHOR = re.compile(r"""<a\s[^>]*?(?:name|id)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HTML_ID = re.compile(r"""\sid\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
# [text](target) or ![alt](target), the target optionally in <...>, optionally with a title.
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]\\]|\\.|\[(?:[^\[\]\\]|\\.)*\])*\]"
    r"\(\s*(<[^>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
REF_DEF = re.compile(r"^ {0,3}\[[^\]\n]+\]:[ \t]*(<[^>\n]*>|\S+)", re.MULTILINE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def markdown_files() -> list[str]:
    """Markdown files git knows of: tracked, plus new ones not ignored (deleted ones skipped)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "*.md"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout.decode("utf-8", "surrogateescape")
        names = sorted({n for n in out.split("\0") if n})
    except (OSError, subprocess.CalledProcessError):
        # Not a git checkout (an exported tarball): walk the tree instead.
        names = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d not in EXCLUDED_PARTS]
            for f in filenames:
                if f.endswith(".md"):
                    names.append(str((Path(dirpath) / f).relative_to(ROOT)).replace(os.sep, "/"))
        names.sort()
    keep = []
    for n in names:
        if n.startswith(EXCLUDED_PREFIXES) or EXCLUDED_PARTS.intersection(n.split("/")[:-1]):
            continue
        if (ROOT / n).is_file():
            keep.append(n)
    return keep


def blank_code(text: str) -> str:
    """The text with fenced code blocks and code spans replaced by spaces (newlines kept, so
    offsets still give line numbers)."""
    lines = text.split("\n")
    fence: tuple[str, int] | None = None
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if fence is None:
            if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
                fence = (m.group(1)[0], len(m.group(1)))
                lines[i] = ""
        else:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= fence[1] and not m.group(2).strip():
                fence = None
            lines[i] = ""
    text = "\n".join(lines)

    # Code spans: a run of N backticks up to the next run of exactly N (may cross lines).
    out, i, n = [], 0, len(text)
    while i < n:
        if text[i] != "`":
            j = text.find("`", i)
            if j < 0:
                out.append(text[i:])
                break
            out.append(text[i:j])
            i = j
            continue
        j = i
        while j < n and text[j] == "`":
            j += 1
        ticks = j - i
        close = re.compile(r"(?<!`)`{%d}(?!`)" % ticks).search(text, j)
        if close is None:
            out.append(text[i:j])
            i = j
            continue
        out.append(re.sub(r"[^\n]", " ", text[i : close.end()]))
        i = close.end()
    return "".join(out)


def slug(heading: str) -> str:
    """GitHub's heading anchor: markup dropped, lower case, punctuation removed except `-` and
    `_`, each space a `-`."""
    h = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    h = re.sub(r"<[^>]+>", "", h)  # inline HTML tags
    h = h.strip().lower()
    kept = []
    for ch in h:
        if ch in "-_ ":
            kept.append(ch)
        elif unicodedata.category(ch)[0] in "LNM":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def anchors_of(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path in cache:
        return cache[path]
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    seen: dict[str, int] = {}
    anchors: set[str] = set()

    def add(title: str) -> None:
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        anchors.add(base if count == 0 else f"{base}-{count}")

    fence: tuple[str, int] | None = None
    prev = ""
    for line in lines:
        m = FENCE.match(line)
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= fence[1] and not m.group(2).strip():
                fence = None
            prev = ""
            continue
        if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            fence = (m.group(1)[0], len(m.group(1)))
            prev = ""
            continue
        h = ATX_HEADING.match(line)
        if h:
            title = re.sub(r"[ \t]+#+[ \t]*$", "", h.group(2) or "")
            if title.strip("#").strip() == "":
                title = ""
            add(title)
            prev = ""
            continue
        if SETEXT_UNDERLINE.match(line) and prev.strip() and not prev.startswith((" " * 4, "\t")):
            # `text` over `===` or `---` (a `---` under a list item or table is not a heading,
            # but a rule after a paragraph line is rare enough in this repository).
            if not re.match(r"^ {0,3}([-*+]|\d+[.)])\s", prev) and "|" not in prev:
                add(prev)
                prev = ""
                continue
        for a in HTML_ANCHOR.findall(line):
            anchors.add(a)
        for a in HTML_ID.findall(line):
            anchors.add(a)
        prev = line
    cache[path] = anchors
    return anchors


def check_file(rel: str, cache: dict[Path, set[str]]) -> tuple[int, list[str]]:
    src = ROOT / rel
    raw = src.read_text(encoding="utf-8", errors="replace")
    text = blank_code(raw)
    found: list[tuple[int, str]] = []
    for m in INLINE_LINK.finditer(text):
        found.append((m.start(1), m.group(1)))
    for m in REF_DEF.finditer(text):
        found.append((m.start(1), m.group(1)))
    found.sort()
    broken, checked = [], 0
    for offset, target in found:
        line = text.count("\n", 0, offset) + 1
        link = target[1:-1] if target.startswith("<") and target.endswith(">") else target
        if not link or SCHEME.match(link) or link.startswith("//"):
            continue  # http(s)://, mailto:, ... and protocol-relative URLs are not checked
        checked += 1
        path_part, _, anchor = link.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        anchor = unquote(anchor)
        if path_part:
            base = ROOT if path_part.startswith("/") else src.parent
            dest = (base / path_part.lstrip("/")).resolve()
        else:
            dest = src.resolve()
        if not dest.exists():
            broken.append(f"{rel}:{line}: {link}")
            continue
        if anchor and dest.is_file() and dest.suffix.lower() in (".md", ".markdown"):
            if anchor not in anchors_of(dest, cache):
                broken.append(f"{rel}:{line}: {link}")
    return checked, broken


def main() -> int:
    files = markdown_files()
    cache: dict[Path, set[str]] = {}
    total, broken = 0, []
    for rel in files:
        n, b = check_file(rel, cache)
        total += n
        broken.extend(b)
    for b in broken:
        print(b)
    if broken:
        print(f"check_links: {len(broken)} broken link(s) in {len(files)} markdown file(s)", file=sys.stderr)
        return 1
    print(f"check_links: ok, {total} relative link(s) in {len(files)} markdown file(s), none broken")
    return 0


if __name__ == "__main__":
    sys.exit(main())
