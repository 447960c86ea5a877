"""The torch API minillava's code uses, found by reading it, and what a torch release offers of it.

`uses()` reads every module of the package: each torch function, class or constant it names (through `torch.`,
`nn.`, `F.` or a `from torch... import`), with the keyword arguments of each call, and every attribute it uses on
other objects that torch.Tensor or torch.nn.Module has (`x.float()`, `model.to_empty(...)`, `w.itemsize`: which
object it is, a reading cannot tell, so their keywords are not checked). `offered()` asks the running torch
which of those exist and which keywords they take.

Run under the oldest torch the package supports, it writes what tests/test_torch_floor.py checks against:
    python -m tests.helpers.torch_api > tests/fixtures/torch_floor_api.json
"""
import ast
import importlib
import inspect
import json
import re
from collections import defaultdict
from pathlib import Path

import torch

PACKAGE = Path(__file__).parent.parent.parent / "minillava"


def uses(package=PACKAGE):
    """{'torch.x.y': set of the keyword names passed to it}, and the set of attribute names used on other objects
    that torch.Tensor or torch.nn.Module have, in the .py files under `package`."""
    names, attributes = defaultdict(set), set()
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}  # local name -> dotted torch path
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                                for a in node.names if a.name.split(".")[0] == "torch"})
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
                aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})

        def dotted(node):  # "torch.nn.functional.pad" for F.pad; None for what is not torch's
            if isinstance(node, ast.Name):
                return aliases.get(node.id)
            if isinstance(node, ast.Attribute):
                base = dotted(node.value)
                return base and f"{base}.{node.attr}"
            return None
        keywords = {id(n.func): {k.arg for k in n.keywords if k.arg} for n in ast.walk(tree) if isinstance(n, ast.Call)}
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and dotted(n)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Attribute, ast.Name)) and dotted(node):
                if id(node) not in inner and (isinstance(node, ast.Attribute) or id(node) in keywords):
                    names[dotted(node)] |= keywords.get(id(node), set())
            elif isinstance(node, ast.Attribute) and not node.attr.startswith("_"):
                attributes.add(node.attr)
    return dict(names), attributes & (set(dir(torch.Tensor)) | set(dir(torch.nn.Module)))


def resolve(path):
    """The object at a dotted torch path, or None where this release has none."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for part in parts[i:]:
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            return None
    return None


def accepted(obj):
    """The keyword names `obj` accepts: from its signature, else from the first line of its docstring (C functions:
    "mm(input, mat2, *, out=None) -> Tensor"), else from torch's overrides table; "any" when it takes **kwargs,
    None when none of them tells."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        params = None
    if params is not None:
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return "any"
        return sorted(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    line = re.match(rf"{getattr(obj, '__name__', '')}\((.*?)\)\s*->", (obj.__doc__ or "").strip())
    if line:
        return sorted({m for part in line.group(1).split(",") for m in re.findall(r"^\s*(\w+)", part)})
    override = torch.overrides.get_testing_overrides().get(obj)
    return sorted(inspect.signature(override).parameters) if override else None


def offered():
    """What this torch offers of what the package uses."""
    names, attributes = uses()
    record = {}
    for name in sorted(names):
        obj = resolve(name)
        record[name] = {"exists": obj is not None, "keywords": accepted(obj) if obj is not None else None}
    return {"torch": torch.__version__.split("+")[0], "names": record, "attributes": sorted(attributes)}


if __name__ == "__main__":  # one line a name, for readable diffs
    record = offered()
    names = ",\n".join(f"  {json.dumps(name)}: {json.dumps(found)}" for name, found in record["names"].items())
    print(f'{{"torch": {json.dumps(record["torch"])},\n "names": {{\n{names}\n }},\n'
          f' "attributes": {json.dumps(record["attributes"])}}}')
