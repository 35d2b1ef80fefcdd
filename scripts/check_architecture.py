#!/usr/bin/env python3
"""Checks the workspace's shape rules (docs/architecture.md, "Rules a change keeps").

Run from the repository root: `python3 scripts/check_architecture.py`. Exit 0 when every rule
holds but for the known exceptions of `scripts/architecture-exceptions.txt`, 1 otherwise,
printing each breach. An exception that no longer applies is a breach too: the list only
shrinks. CI runs it (`.ci/run`, step "architecture").

The rules:
  1. No import circle between the module files of a crate, counting `crate::` and `super::`
     paths (in `use` trees and in expressions) outside `#[cfg(test)]` modules.
  2. In the gateway, nothing imports upward: cli -> app -> http -> service -> domain (LAYERS).
  3. `ApiError` is named only under gateway/src/http/.
  4. No function over 120 lines and no source file over 900 lines outside tests.
  5. The id grammar (the character class of account and shard ids) is written once.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = ["gateway", "store", "backends", "policy", "testkit", "bench", "softhsm-tests", "client"]
MAX_FN_LINES = 120
MAX_FILE_LINES = 900

# Gateway layers, outermost first: a module may import its own layer or any later one.
LAYERS = ["cli", "app", "http", "service", "domain"]


def module_of(src: Path, f: Path) -> tuple[str, ...]:
    rel = f.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("lib", "main") and len(parts) == 1:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def strip_tests(text: str) -> str:
    """Drops `#[cfg(test)] mod x { ... }` blocks and `#[cfg(test)] mod x;` declarations."""
    out, i = [], 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*([{;])")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        if m.group(1) == ";":
            i = m.end()
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            j += 1
        i = j
    return out and "".join(out) or text


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def expand_use_tree(tree: str) -> list[str]:
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+", "", tree)

    def parse(s: str, i: int, prefix: str) -> tuple[list[str], int]:
        paths, cur = [], ""
        while i < len(s):
            c = s[i]
            if c == "{":
                sub, i = parse_group(s, i + 1, prefix + cur)
                paths.extend(sub)
                cur = None
                continue
            if c in ",}":
                break
            if cur is not None:
                cur += c
            i += 1
        if cur:
            paths.append(prefix + cur)
        return paths, i

    def parse_group(s: str, i: int, prefix: str) -> tuple[list[str], int]:
        paths = []
        while i < len(s) and s[i] != "}":
            sub, i = parse(s, i, prefix)
            paths.extend(sub)
            if i < len(s) and s[i] == ",":
                i += 1
        return paths, i + 1

    return parse(tree, 0, "")[0]


def references(text: str, me: tuple[str, ...], is_mod_file: bool) -> list[tuple[str, ...]]:
    """Every module path the text names through `crate::` or `super::`."""
    refs = []
    paths = []
    for m in re.finditer(r"\buse\s+((?:crate|super)\b[^;]*);", text):
        paths.extend(expand_use_tree(m.group(1)))
    body = re.sub(r"\buse\s+(?:crate|super)\b[^;]*;", "", text)
    paths.extend(m.group(0) for m in re.finditer(r"\b(?:crate|super)(?:::(?:super|[A-Za-z_][A-Za-z0-9_]*))+", body))
    # the module a `super` names: a mod.rs/lib.rs file is its module's directory
    here = me if is_mod_file else me
    for p in paths:
        parts = p.split("::")
        if parts[0] == "crate":
            base: tuple[str, ...] = ()
            rest = parts[1:]
        else:
            base = here
            rest = parts
            while rest and rest[0] == "super":
                base = base[:-1]
                rest = rest[1:]
        refs.append(base + tuple(x for x in rest if x not in ("self", "*")))
    return refs


def crate_graph(src: Path):
    files = sorted(src.rglob("*.rs"))
    mods = {module_of(src, f): f for f in files}
    edges: dict[tuple, set] = {m: set() for m in mods}
    for m, f in mods.items():
        text = strip_comments(strip_tests(f.read_text()))
        is_mod = f.name in ("mod.rs", "lib.rs", "main.rs")
        for ref in references(text, m, is_mod):
            # longest existing module prefix
            target = None
            for k in range(len(ref), -1, -1):
                if ref[:k] in mods:
                    target = ref[:k]
                    break
            if target is None or target == m:
                continue
            # a parent naming its own child module (declaration, re-export) is not an import back
            if target[: len(m)] == m and len(target) > len(m) and m == ():
                continue
            edges[m].add(target)
    return mods, edges


def sccs(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) or "<root>"


def fn_lengths(text: str):
    """(name, first line, line count) of every `fn` with a body."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)", line)
        if not m:
            continue
        # find the opening brace of the body and match it
        depth, started, j = 0, False, i
        while j < len(lines):
            code = re.sub(r"//.*", "", lines[j])
            code = re.sub(r'"(?:\\.|[^"\\])*"', '""', code)
            code = re.sub(r"'(?:\\.|[^'\\])'", "''", code)
            for c in code:
                if c == "{":
                    depth += 1
                    started = True
                elif c == "}":
                    depth -= 1
                elif c == ";" and not started and depth == 0:
                    j = len(lines)  # a declaration without body
                    break
            if started and depth == 0:
                yield m.group(1), i + 1, j - i + 1
                break
            j += 1


def is_test_path(p: Path) -> bool:
    parts = p.parts
    return "tests" in parts or p.name in ("tests.rs",) or p.name.endswith("_tests.rs") or "benches" in parts


def main() -> int:
    problems: list[tuple[str, str]] = []
    for crate in CRATES:
        src = ROOT / crate / "src"
        if not src.is_dir():
            continue
        mods, edges = crate_graph(src)
        for comp in sccs(edges):
            problems.append((f"circle {crate}: {' '.join(sorted(name(m) for m in comp))}", f"{crate}: import circle: {', '.join(sorted(name(m) for m in comp))}"))
        if crate == "gateway":
            for m, targets in edges.items():
                if not m or m[0] not in LAYERS:
                    continue
                for t in targets:
                    if t and t[0] in LAYERS and LAYERS.index(t[0]) < LAYERS.index(m[0]):
                        problems.append((f"upward {name(m)} {name(t)}", f"gateway: {name(m)} imports upward: {name(t)}"))
    for crate in CRATES:
        for f in sorted((ROOT / crate).rglob("*.rs")):
            if "target" in f.parts:
                continue
            rel = f.relative_to(ROOT)
            text = f.read_text()
            if crate == "gateway" and not is_test_path(rel) and rel.parts[:3] != ("gateway", "src", "http"):
                body = strip_comments(strip_tests(text))
                if re.search(r"\bApiError\b", body):
                    problems.append((f"apierror {rel}", f"{rel}: names ApiError outside gateway/src/http/"))
            if is_test_path(rel):
                continue
            code = strip_tests(text)
            n = code.count("\n")
            if n > MAX_FILE_LINES:
                problems.append((f"file {rel}", f"{rel}: {n} lines (at most {MAX_FILE_LINES} outside tests)"))
            for fname, line, length in fn_lengths(code):
                if length > MAX_FN_LINES:
                    problems.append((f"fn {rel} {fname}", f"{rel}:{line}: fn {fname} is {length} lines (at most {MAX_FN_LINES})"))
    grammar = []
    for f in ROOT.glob("*/src/**/*.rs"):
        if "target" in f.parts:
            continue
        for m in re.finditer(r"is_ascii_alphanumeric\(\)\s*\|\|[^\n]*'[-_.]'", f.read_text()):
            grammar.append(str(f.relative_to(ROOT)))
    if len(grammar) > 1:
        problems.append(("grammar", f"the id grammar is written {len(grammar)} times: {', '.join(sorted(grammar))}"))
    known = {}
    exceptions = ROOT / "scripts" / "architecture-exceptions.txt"
    if exceptions.exists():
        for line in exceptions.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                known[line] = False
    failures = 0
    for key, message in problems:
        if key in known:
            known[key] = True
            print(f"known exception: {message}")
        else:
            failures += 1
            print(f"error: {message}  [{key}]")
    for key, used in known.items():
        if not used:
            failures += 1
            print(f"error: stale exception (the rule holds now: remove it from {exceptions.relative_to(ROOT)}): {key}")
    print(f"check_architecture: {failures} error(s), {sum(known.values())} known exception(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
