"""The check behind "zero code changes": every target compiles the very same Python function
object per kernel, and that object is the package module's own (not a copy or a fork)."""
from __future__ import annotations

import sys
from collections import defaultdict
from typing import Iterable


def check_same_functions(compiled: Iterable[tuple[str, object]]) -> None:
    """`compiled` holds (target, fn) for every kernel build; raises if a kernel name maps to two
    objects, or to an object its module does not define under that name."""
    objects = defaultdict(dict)
    for target, fn in compiled:
        name, module = fn.__name__, fn.module
        owner = sys.modules.get(module)
        if owner is None or getattr(owner, name, None) is not fn:
            raise RuntimeError(f"kernel {name} on {target}: expected the function {module}.{name}, got another object")
        objects[name].setdefault(id(fn), []).append(target)
    for name, by_id in objects.items():
        if len(by_id) != 1:
            targets = "; ".join(", ".join(sorted(set(t))) for t in by_id.values())
            raise RuntimeError(f"kernel {name}: expected one function object for every target, got {len(by_id)} ({targets})")
