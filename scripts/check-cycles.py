#!/usr/bin/env python3
"""Fails when files of one module import each other, directly or round a longer circle.

Part of `scripts/check-layers.sh` (make lint). Within each directory of src/, the files are the
nodes and a file's uses of its siblings are the edges:
  - `super::NAME` and `crate::PATH::NAME` from a child: the sibling file NAME, or, when NAME is
    an item of the module's root (mod.rs), that root; an item the root re-exports
    (`pub use NAME::{Item}`) counts as a use of the file it comes from;
  - a root using a child (`NAME::...`, `use NAME::...`); its `mod` and `pub use` lines are the
    module's face, not a use.
Prints each circle found and exits 1; exits 0 when there is none.
"""

import os
import re
import sys

SRC = "src"


def strip(text):
    """The code without comments and literals: doc examples and messages are not uses."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            i = text.find("*/", i + 2)
            i = n if i < 0 else i + 2
        elif c == "r" and re.match(r'r#*"', text[i:i + 8]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            close = text.find('"' + hashes, i + len(hashes) + 2)
            i = n if close < 0 else close + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|[^'\\])'", text[i:i + 12]):
            i += len(re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|[^'\\])'", text[i:i + 12]).group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_path(directory):
    rel = os.path.relpath(directory, SRC)
    return "" if rel == "." else rel.replace(os.sep, "::")


def reexports(root_text):
    """Items the root re-exports: item name -> the child it comes from."""
    found = {}
    for m in re.finditer(r"pub(?:\([^)]*\))?\s+use\s+(?:self::)?(\w+)::([^;]+);", root_text):
        child, rest = m.group(1), m.group(2)
        for item in re.findall(r"\b([A-Za-z_]\w*)\b", rest):
            found.setdefault(item, child)
    return found


def edges_of(directory, files):
    stems = {f[:-3] for f in files if f != "mod.rs"}
    root = "mod.rs" if "mod.rs" in files else None
    root_text = strip(open(os.path.join(directory, root)).read()) if root else ""
    exported = reexports(root_text)
    path = module_path(directory)
    edges = set()
    for f in files:
        text = strip(open(os.path.join(directory, f)).read())
        # The tests of a file are its own: a test may use anything.
        text = text.split("#[cfg(test)]")[0]
        me = f[:-3]
        if f == "mod.rs":
            for line in text.splitlines():
                if re.match(r"\s*((pub(\([^)]*\))?\s+)?mod|pub(\([^)]*\))?\s+use)\b", line):
                    continue
                for stem in stems:
                    if re.search(r"(?<![\w:])" + stem + r"::", line):
                        edges.add((f, stem + ".rs"))
            continue
        names = re.findall(r"\bsuper::(\w+)", text)
        if path:
            names += re.findall(r"\bcrate::" + re.escape(path) + r"::(\w+)", text)
        # `use super::{a, b::C}`
        for group in re.findall(r"\bsuper::\{([^}]*)\}", text):
            names += re.findall(r"(?:^|,)\s*(\w+)", group)
        for name in names:
            if name == me or name == "super":
                continue
            if name in stems:
                edges.add((f, name + ".rs"))
            elif name in exported and exported[name] in stems and exported[name] != me:
                edges.add((f, exported[name] + ".rs"))
            elif root and name not in exported:
                edges.add((f, "mod.rs"))
    return edges


def circles(edges):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def main():
    failed = False
    for directory, _, files in sorted(os.walk(SRC)):
        rs = sorted(f for f in files if f.endswith(".rs"))
        if len(rs) < 2:
            continue
        for circle in circles(edges_of(directory, rs)):
            failed = True
            print(f"check-layers: files of {directory} import each other: {' -> '.join(circle)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
