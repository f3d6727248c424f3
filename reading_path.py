"""
The reading path of `python train.py --head=wide`: train.py and the project files it imports when it starts,
transitively (module-level imports that always run). A file imported only inside a function or a branch (the
fused loss, the CUDA kernel, text data, Hugging Face sources) is off the path: the default run never loads it.
Lines are raw lines, comments, docstrings and blank lines included.

    python reading_path.py              # one line per file, the total against the budget
    python reading_path.py measure.py   # the same for another entry point
    python reading_path.py --graph      # every file's project imports (* = lazy), checked to be one-way
"""
import ast
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGET = 1200  # lines: nanoGPT's model.py, train.py and configurator.py come to 713


def always_imported(path):
    """The project modules a file imports at module level, outside any branch, function or try."""
    names = []
    for node in ast.parse(open(path, encoding='utf-8').read()).body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return [n for n in names if os.path.isfile(os.path.join(HERE, n + '.py'))]


def reading_path(entry):
    """The files on the path from `entry`, in the order they are first imported."""
    seen, todo = [], [entry]
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.append(name)
        todo += [m + '.py' for m in always_imported(os.path.join(HERE, name))]
    return seen


def all_imports(path):
    """(module-level, lazy): the project modules a file imports always, and those it imports only inside a
    function or a branch (a script's `if __name__ == '__main__':` block included: a script that another file
    imports must not import it back, even to run)."""
    tree = ast.parse(open(path, encoding='utf-8').read())
    always = set(always_imported(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    names = {n for n in names if os.path.isfile(os.path.join(HERE, n + '.py'))}
    return sorted(always), sorted(names - always)


def import_graph():
    """One line per non-test file: its imports; raises if the graph has a cycle."""
    files = sorted(f for f in os.listdir(HERE) if f.endswith('.py') and not f.startswith(('test_', 'conft')))
    edges = {f[:-3]: all_imports(os.path.join(HERE, f)) for f in files}
    order, state = [], {}

    def visit(name, trail):
        if state.get(name) == 'open':
            raise SystemExit(f"import cycle: {' -> '.join(trail + [name])}")
        if state.get(name) != 'done':
            state[name] = 'open'
            for dep in sum(edges.get(name, ([], [])), []):
                visit(dep, trail + [name])
            state[name] = 'done'
            order.append(name)
    for name in edges:
        visit(name, [])
    lines = []
    width = max(len(name) for name in order) + 4
    for name in order:
        deps = edges[name][0] + [m + '*' for m in edges[name][1]]
        lines.append(f"{name + '.py':{width}s} imports {', '.join(deps) or '-'}")
    return lines


def line_count(name):
    with open(os.path.join(HERE, name), encoding='utf-8') as f:
        return sum(1 for _ in f)


if __name__ == '__main__':
    args = sys.argv[1:]
    if args in (['-h'], ['--help']):
        print(__doc__.strip())
        sys.exit(0)
    if args == ['--graph']:
        print('\n'.join(import_graph()))
        sys.exit(0)
    one_file = len(args) == 1 and args[0].endswith('.py') and os.path.isfile(os.path.join(HERE, args[0]))
    if args and not one_file:
        sys.exit(f"error: {' '.join(args)}: give one file of this folder (measure.py), --graph or --help")
    entry = args[0] if args else 'train.py'
    files = reading_path(entry)
    for name in files:
        print(f"{line_count(name):6d}  {name}")
    total = sum(line_count(name) for name in files)
    print(f"{total:6d}  the reading path of {entry} (budget {BUDGET:,})")
    sys.exit(1 if entry == 'train.py' and total > BUDGET else 0)
