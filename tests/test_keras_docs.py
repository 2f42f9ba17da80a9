"""docs/keras.md: every Python snippet runs, in order, and each print gives what its comment says.

Each ``print(...)  # text`` line in a snippet must print a line that ``text`` starts with; the
numbers in those comments are the closed forms the page explains (parameter counts, shapes).
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is first imported

import contextlib  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip(f"this test runs Keras on its torch backend, got {keras.backend.backend()!r}",
                allow_module_level=True)

DOC = Path(__file__).resolve().parent.parent / "docs" / "keras.md"
PRINT_COMMENT = re.compile(r"^\s*print\(.*\)\s+# (.+)$")


def test_keras_doc_snippets_run_and_print_what_they_say():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for i, code in enumerate(blocks):
        expected = [m.group(1).strip() for m in map(PRINT_COMMENT.match, code.splitlines()) if m]
        assert len(expected) == code.count("print("), f"block {i}: every print needs a '# expected' comment"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{DOC.name} block {i}", "exec"), namespace)
        printed = out.getvalue().splitlines()
        assert len(printed) == len(expected), (i, printed)
        for got, want in zip(printed, expected):
            assert want.startswith(got.strip()), f"block {i}: printed {got!r}, the doc says {want!r}"
