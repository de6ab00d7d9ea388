"""Runs every ```python block of README.md as written, in order, each in a fresh namespace (needs a GPU).

    python experiments/examples/run_readme_examples.py
"""
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def main() -> int:
    found = blocks(README.read_text())
    for i, code in enumerate(found, 1):
        print(f"--- README example {i} of {len(found)}", flush=True)
        exec(compile(code, f"README.md[python block {i}]", "exec"), {"__name__": "__readme__"})
    print(f"--- all {len(found)} README examples ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
