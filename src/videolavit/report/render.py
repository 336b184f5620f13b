"""Markdown and LaTeX (booktabs) rendering of report tables; a missing cell is "—" (Markdown) or "---" (LaTeX)."""

from __future__ import annotations

from typing import Sequence

from videolavit.report.tables import Block, Cell, Table

MISSING_MD = "—"
MISSING_TEX = "---"
_TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "✓": r"$\checkmark$", "×": r"$\times$", "—": "---",
    "≥": r"$\geq$", "↔": r"$\leftrightarrow$", "−": "-", "`": "",
}


def _md_cell(cell: Cell) -> str:
    return MISSING_MD if cell is None or cell == "" else str(cell).replace("|", "\\|")


def _md_block(block: Block) -> list[str]:
    lines = [f"*{block.caption}*", "", "| " + " | ".join(block.headers) + " |", "|" + "---|" * len(block.headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
    return [*lines, ""]


def to_markdown(tables: Sequence[Table], header: Sequence[str] = (), footer: Sequence[str] = ()) -> str:
    lines = [*header]
    for table in tables:
        lines += [f"## {table.title}", "", f"Paper reference: {table.reference}.", ""]
        for block in table.blocks:
            lines += _md_block(block)
        lines += [f"> {note}" for note in table.notes if note] + ([""] if any(table.notes) else [])
    return "\n".join([*lines, *footer]).rstrip() + "\n"


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _tex_cell(cell: Cell) -> str:
    return MISSING_TEX if cell is None or cell == "" else tex_escape(cell)


def _tex_block(block: Block) -> list[str]:
    width = len(block.headers)
    return [
        r"\begin{tabular}{l" + "c" * (width - 1) + "}",
        r"\toprule",
        rf"\multicolumn{{{width}}}{{l}}{{\textit{{{tex_escape(block.caption)}}}}} \\",
        " & ".join(tex_escape(h) for h in block.headers) + r" \\",
        r"\midrule",
        *[" & ".join(_tex_cell(c) for c in row) + r" \\" for row in block.rows],
        r"\bottomrule",
        r"\end{tabular}",
    ]


def to_latex(tables: Sequence[Table], header: Sequence[str] = ()) -> str:
    """Table environments to ``\\input`` into a document with ``\\usepackage{booktabs,amssymb,graphicx}``."""
    lines = [f"% {line}" for line in header]
    for table in tables:
        caption = f"{table.title}. Paper reference: {table.reference}."
        if any(table.notes):
            caption += " " + " ".join(n for n in table.notes if n)
        lines += [r"\begin{table}[t]", r"\centering", r"\resizebox{\linewidth}{!}{%", r"\begin{tabular}{c}"]
        for i, block in enumerate(table.blocks):
            lines += _tex_block(block) + ([r"\\[6pt]"] if i < len(table.blocks) - 1 else [])
        lines += [r"\end{tabular}}", rf"\caption{{{tex_escape(caption)}}}", rf"\label{{tab:{table.key}}}", r"\end{table}", ""]
    return "\n".join(lines).rstrip() + "\n"
