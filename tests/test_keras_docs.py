"""docs/keras.md: every Python block runs, in order, and each print gives what its comment says.

Each ``print(...)  # text`` line must print what ``text`` begins with; the numbers in those
comments are the closed forms the page explains (parameter counts, shapes). The blocks run on
Keras' torch backend through the shared docs runner (tests/docs_runner.py); without Keras the
test is skipped.
"""

from __future__ import annotations

import ast

from docs_runner import ROOT, check_page, parse_blocks, print_claims

DOC = ROOT / "docs" / "keras.md"


def test_keras_doc_snippets_run_and_print_what_they_say():
    blocks = parse_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    for block in blocks:
        calls = [n for n in ast.walk(ast.parse(block.code))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert len(print_claims(block.code)) == len(calls), f"line {block.line}: every print needs a '# expected' comment"
    check_page(DOC, requires=("keras",))
