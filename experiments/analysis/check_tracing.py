"""Check that every number of the paper traces to raw rows.

For each generated `.tex` file: every `\\tv{id}{text}` must name an entry of its `.trace.json`
whose value, recomputed now from the recorded rows (or file key) by the recorded function, renders
to `text`; no digit may appear outside `\\tv` (figure file names are checked to exist instead).
For the hand-written `.tex` files: no digit in the body except in references, labels, file names
and the names that config/config.yaml allows. Writes a report and exits 1 on any problem.

    python -m experiments.analysis.check_tracing --generated paper/generated --paper paper --out report.txt
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import pandas as pd

from .atomic import write_text
from .derive import DERIVATIONS
from .settings import load_settings
from .sources import load_rows, lookup, read_document
from .trace import latex_escape, render, trace_path

_GRAPHICS = re.compile(r"\\includegraphics(\[[^\]]*\])?\{([^}]*)\}")
_COMMENT = re.compile(r"(?<!\\)%.*$", re.MULTILINE)
_DIGIT = re.compile(r"\d")
_REF_ARGS = re.compile(r"\\(cite[a-z]*|ref|eqref|autoref|cref|Cref|label|input|include|url|bibliography|"
                       r"bibliographystyle|graphicspath)\*?(\[[^\]]*\])*\{[^}]*\}")
_HREF = re.compile(r"\\href\{[^}]*\}")
_SUBSCRIPT = re.compile(r"_(\d|\{\d+\})")


def strip_comments(tex: str) -> str:
    return _COMMENT.sub("", tex)


def _braced(tex: str, start: int) -> tuple[str, int]:
    """The text of the brace group opening at tex[start] and the index after it (escapes honoured)."""
    if start >= len(tex) or tex[start] != "{":
        raise ValueError(f"expected '{{' at offset {start}")
    depth, i = 0, start
    while i < len(tex):
        c = tex[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return tex[start + 1:i], i + 1
        i += 1
    raise ValueError(f"unbalanced braces from offset {start}")


def traced_spans(tex: str) -> list[tuple[int, int, str, str]]:
    """(start, end, id, text) of every `\\tv{id}{text}` in `tex`."""
    spans, i = [], 0
    while (i := tex.find("\\tv{", i)) >= 0:
        tid, after_id = _braced(tex, i + 3)
        text, end = _braced(tex, after_id)
        spans.append((i, end, tid, text))
        i = end
    return spans


def _line_of(tex: str, offset: int) -> int:
    return tex.count("\n", 0, offset) + 1


class Recomputer:
    """Recomputes trace entries, reading each source file once."""

    def __init__(self, repo):
        self.repo = repo
        self.frames: dict[str, pd.DataFrame] = {}

    def rows(self, source: dict) -> pd.DataFrame:
        path = source["file"]
        if path not in self.frames:
            self.frames[path] = load_rows(path, self.repo)
        frame = self.frames[path]
        picked = frame[frame["source_row"].isin(source["rows"])]
        if len(picked) != len(source["rows"]):
            missing = sorted(set(source["rows"]) - set(picked["source_row"]))
            raise ValueError(f"{path}: rows {missing} no longer exist")
        return picked

    def value(self, entry: dict):
        if "fn" in entry:
            if entry["fn"] not in DERIVATIONS:
                raise ValueError(f"fn {entry['fn']!r} is not a derivation of derive.py")
            if not entry.get("sources"):
                raise ValueError("no source rows recorded")
            rows = pd.concat([self.rows(s) for s in entry["sources"]], ignore_index=True)
            value = DERIVATIONS[entry["fn"]](rows, **entry.get("params", {}))
        elif "document" in entry:
            value = lookup(read_document(entry["document"]), entry["keys"], entry["document"])
        else:
            raise ValueError("entry names neither a derivation (fn) nor a document")
        return value.item() if hasattr(value, "item") else value


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def check_generated(tex_path: Path, paper_dir: Path, recomputer: Recomputer) -> list[str]:
    """Problems of one generated `.tex` file (empty when every number traces)."""
    problems = []
    sidecar = trace_path(tex_path)
    if not sidecar.is_file():
        return [f"{tex_path}: no {sidecar.name} beside it; every generated .tex is written by trace.Tracer"]
    record = json.loads(sidecar.read_text())
    entries = {e["id"]: e for e in record.get("entries", [])}
    if not Path(record.get("script", "")).is_file():
        problems.append(f"{sidecar}: generating script {record.get('script')!r} not found")
    for tid, entry in entries.items():
        try:
            value = recomputer.value(entry)
            text = render(value, entry["fmt"])
        except Exception as e:  # any failure to recompute is a value that does not trace
            problems.append(f"{sidecar}: {tid}: cannot recompute ({type(e).__name__}: {e})")
            continue
        if text != entry["text"] or not _same(value, entry["value"]):
            problems.append(f"{sidecar}: {tid}: recorded {entry['text']!r} ({entry['value']!r}) but the "
                            f"sources give {text!r} ({value!r})")
    tex = strip_comments(tex_path.read_text())
    kept, last = [], 0
    for start, end, tid, text in traced_spans(tex):
        if tid not in entries:
            problems.append(f"{tex_path}:{_line_of(tex, start)}: \\tv{{{tid}}} has no entry in {sidecar.name}")
        elif entries[tid]["text"] != text:
            problems.append(f"{tex_path}:{_line_of(tex, start)}: \\tv{{{tid}}}{{{text}}} differs from the "
                            f"recorded {entries[tid]['text']!r}")
        kept.append(tex[last:start] + " " * (end - start - tex[start:end].count("\n")) + "\n" * tex[start:end].count("\n"))
        last = end
    kept.append(tex[last:])
    rest = "".join(kept)
    for m in _GRAPHICS.finditer(rest):
        target = paper_dir / m.group(2)
        if not (target.exists() or any(target.with_suffix(s).exists() for s in (".pdf", ".png"))):
            problems.append(f"{tex_path}:{_line_of(rest, m.start())}: figure {m.group(2)!r} not found in {paper_dir}")
    rest = _GRAPHICS.sub(lambda m: "\\includegraphics" + (m.group(1) or "") + "{}", rest)
    for m in _DIGIT.finditer(rest):
        line = _line_of(rest, m.start())
        problems.append(f"{tex_path}:{line}: number outside \\tv (typed, not traced to raw rows): "
                        f"{rest.splitlines()[line - 1].strip()!r}")
        break  # one per file is enough to find it
    return problems


def check_prose(tex_path: Path, allowed: list[str]) -> list[str]:
    """Problems of one hand-written `.tex` file: digits in its body outside allowed names."""
    tex = strip_comments(tex_path.read_text())
    begin = tex.find("\\begin{document}")
    offset = begin if begin >= 0 else 0
    body = tex[offset:]
    body = _REF_ARGS.sub(lambda m: " " * len(m.group(0)), body)
    body = _HREF.sub(lambda m: " " * len(m.group(0)), body)
    body = _SUBSCRIPT.sub(lambda m: " " * len(m.group(0)), body)  # W_2, x_{12}: notation, not numbers
    names = set(allowed) | {latex_escape(n) for n in allowed}
    for name in sorted(names, key=len, reverse=True):
        body = re.sub(re.escape(name), lambda m: " " * len(m.group(0)), body, flags=re.IGNORECASE)
    problems = []
    for m in _DIGIT.finditer(body):
        line = _line_of(tex, offset + m.start())
        problems.append(f"{tex_path}:{line}: number typed into hand-written TeX (use a generated macro): "
                        f"{tex.splitlines()[line - 1].strip()!r}")
    return problems


def allowed_names(settings: dict) -> list[str]:
    names = list(settings["prose_names"]) + list(settings["models"]) + list(settings["devices"])
    names += list(settings["targets"]) + list(settings["impls"])
    return [n for n in names if n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generated", type=Path, required=True, help="folder of generated .tex files")
    ap.add_argument("--paper", type=Path, required=True, help="folder of the paper's hand-written .tex files")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="report to write when every number traces")
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    recomputer = Recomputer("." if settings["check_git_sha"] else None)
    generated = sorted(args.generated.rglob("*.tex"))
    handwritten = sorted(p for p in args.paper.rglob("*.tex")
                         if args.generated not in p.parents and "build" not in p.relative_to(args.paper).parts)
    problems = []
    for tex in generated:
        problems += check_generated(tex, args.paper, recomputer)
    for tex in handwritten:
        problems += check_prose(tex, allowed_names(settings))
    if problems:
        print("check_tracing: numbers that do not trace to raw rows:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    entries = sum(len(json.loads(trace_path(t).read_text())["entries"]) for t in generated)
    write_text(args.out, f"{len(generated)} generated files, {entries} traced values recomputed from their "
                         f"rows; {len(handwritten)} hand-written files without typed numbers\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
