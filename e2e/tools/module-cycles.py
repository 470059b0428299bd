#!/usr/bin/env python3
"""Import cycles between the top-level modules of a crate.

Reads every non-test source file under SRC and records, for each top-level module, the
other top-level modules it names through `crate::`. Comments and `#[cfg(test)]` sections
are skipped. Prints the
strongly connected groups of more than one module: each is an import cycle.

Usage: e2e/tools/module-cycles.py node-agent/src [operator/src ...]
Exit status: 0 when no crate has a cycle, 1 otherwise.
"""

import os
import re
import sys


def module_graph(root):
    graph = {}
    for directory, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs") or name.endswith("_tests.rs") or name in ("lib.rs", "main.rs"):
                continue
            path = os.path.join(directory, name)
            module = os.path.relpath(path, root)[:-3].replace("/mod", "").split("/")
            source = open(path, encoding="utf-8").read().split("#[cfg(test)]")[0]
            code = "\n".join(l for l in source.splitlines() if not l.strip().startswith("//"))
            names = set(re.findall(r"crate::([a-z_0-9]+)", code))
            graph.setdefault(module[0], set()).update(n for n in names if n != module[0])
    return graph


def cycles(graph):
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in graph:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main():
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    status = 0
    for root in sys.argv[1:]:
        found = cycles(module_graph(root))
        print(f"{root}: {'; '.join(' <-> '.join(g) for g in found) if found else 'no import cycle'}")
        status |= bool(found)
    return status


if __name__ == "__main__":
    sys.exit(main())
