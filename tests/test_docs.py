"""The documentation: every Python block of every page runs and prints what it says, every
relative link resolves, and each Chinese page has its English page's code.

The runner and its conventions are in tests/docs_runner.py (for authors: docs/README.md). The
runner's own checks below compare against hand-written expectations.
"""

from __future__ import annotations

import functools
import io
import re
import tokenize
from pathlib import Path

import pytest
from docs_runner import (ROOT, PageResult, assert_result, check_translation, claim_holds, parse_blocks, print_claims,
                         run_page)

PAGES = sorted([*(ROOT / "docs").rglob("*.md"), *ROOT.glob("README*.md")])
# pages whose blocks another test file runs (with its own requirements)
OWN_TESTS = {"docs/keras.md": "tests/test_keras_docs.py"}
# pages, owned by others, whose sketches use names the page never defines (model, teacher,
# calibration_batches) or whose print comments describe rather than state the output; their
# owners mark such blocks `# not run` or make them runnable, then drop them from this list
NOT_YET_RUNNABLE: dict = {}


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _page_params():
    params = []
    for page in PAGES:
        rel = _rel(page)
        if rel in OWN_TESTS or not parse_blocks(page.read_text(encoding="utf-8")):
            continue
        marks = [pytest.mark.xfail(reason=NOT_YET_RUNNABLE[rel], strict=False)] if rel in NOT_YET_RUNNABLE else []
        params.append(pytest.param(page, id=rel, marks=marks))
    return params


@functools.lru_cache(maxsize=None)
def _run(page: Path) -> PageResult:
    return run_page(page, timeout=240)


def _original(page: Path) -> Path | None:
    """The English page a Chinese page under docs/zh/ translates, when their code is the same."""
    zh_root = ROOT / "docs" / "zh"
    if zh_root not in page.parents:
        return None
    original = ROOT / "docs" / page.relative_to(zh_root)
    if not original.exists() or not _same_code(page, original):
        return None
    return original


@pytest.mark.parametrize("page", _page_params())
def test_page_blocks_run_and_print_what_they_say(page):
    original = _original(page)
    if original is None:
        assert_result(_run(page))
    else:
        # same code as the English page: its run is reused, the translated comments are checked
        check_translation(page, original, _run(original))


# ------------------------------------------------------------------ links

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # not inside code
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{_rel(page)} links to missing files: {broken}"


# ------------------------------------------------------------------ Chinese pages mirror the English ones


def _code_tokens(code: str) -> list[str]:
    """The block's tokens without comments and blank lines: the code a translation must keep."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
    return [t.string for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type not in skip]


TRANSLATED = sorted(p for folder in ("howto", "concepts") for p in (ROOT / "docs" / folder).glob("*.md"))


def _code_differences(translated: Path, original: Path) -> list[str]:
    en_blocks = parse_blocks(original.read_text(encoding="utf-8"))
    zh_blocks = parse_blocks(translated.read_text(encoding="utf-8"))
    if len(zh_blocks) != len(en_blocks):
        return [f"{_rel(translated)} has {len(zh_blocks)} python blocks, {_rel(original)} {len(en_blocks)}"]
    return [f"{_rel(translated)} line {tr.line}: the code differs from {_rel(original)} line {en.line}"
            for en, tr in zip(en_blocks, zh_blocks)
            if (tr.status, tr.requires) != (en.status, en.requires) or _code_tokens(tr.code) != _code_tokens(en.code)
            or (tr.output is None) != (en.output is None)]


def _same_code(translated: Path, original: Path) -> bool:
    return not _code_differences(translated, original)


@pytest.mark.parametrize("page", TRANSLATED, ids=_rel)
def test_chinese_page_exists_with_the_same_code(page):
    zh = ROOT / "docs" / "zh" / page.relative_to(ROOT / "docs")
    assert zh.exists(), f"{_rel(page)} has no Chinese page {_rel(zh)}"
    problems = _code_differences(zh, page)
    assert not problems, "\n".join(problems) + " (comments may differ, the code may not)"


# ------------------------------------------------------------------ the runner itself


@pytest.mark.parametrize("printed, comment, holds", [
    ("4 394", "4 394: 32*4+4 + 4*32+32", True),
    ("(2, 24, 94, 64)", "(2, 24, 94, 64) both", True),
    ("2400 1964576", "2,400 params, 1,964,576 MACs", True),
    ("True", "True", True),
    ("0.5 True", "0.5, True: exact", True),
    ("4", "42", False),                        # a prefix of a longer number is not a match
    ("1", "1.5 ms", False),
    ("True", "False", False),
    ("2400 1964577", "2,400 params, 1,964,576 MACs", False),
    ("torch.Size([1, 64])", "(1, 64)", False),  # printed words must appear in the comment
    ("", "anything", False),
    ("0.1234", "0.123", False),
])
def test_claim_rule(printed, comment, holds):
    assert claim_holds(printed, comment) is holds


def test_parse_blocks_statuses_lines_and_output():
    text = ("# t\n\n```python\nx = 1\n```\n\n```output\n1\n```\n"
            "```python\n# not run\nmodel\n```\n"
            "  ```python\n  # requires: keras, g++\n  import keras\n  ```\n"
            "```bash\necho no\n```\n")
    blocks = parse_blocks(text)
    assert [(b.line, b.status, b.requires, b.output) for b in blocks] == [
        (4, "run", (), "1"), (11, "not run", (), None), (15, "requires", ("keras", "g++"), None)]
    assert blocks[2].code == "# requires: keras, g++\nimport keras\n"


def test_print_claims_multiline_and_uncommented():
    src = "print(1)  # 1\nprint(2)\nprint(3,\n      4)   # 3 4\nx = 5  # not a print\n"
    assert print_claims(src) == [(1, 1, "1"), (3, 4, "3 4")]


def _page(tmp_path: Path, body: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(body, encoding="utf-8")
    return page


def test_runner_passes_a_true_page_in_one_namespace_and_skips_what_is_missing(tmp_path):
    page = _page(tmp_path, "```python\nimport os\nn = 6 * 7\nprint(n)  # 42\n```\n"
                 "```python\n# not run\nraise SystemExit(1)\n```\n"
                 "```python\nfor i in range(2):\n    print(i, n)\nopen('f.txt', 'w').write('x')\n```\n"
                 "```output\n0 42\n1 42\n```\n"
                 "```python\n# requires: leanconv_no_such_module\nraise SystemExit(1)\n```\n")
    result = run_page(page, timeout=60)
    assert result.failure is None, result.failure
    assert [b["outcome"] for b in result.blocks] == ["passed", "not run", "passed", "skipped"]
    assert result.skipped == ["page.md block 4 (line 20) needs leanconv_no_such_module"]
    assert not (tmp_path / "f.txt").exists()  # the blocks ran in a temporary folder


@pytest.mark.parametrize("body, message", [
    ("```python\nprint(6 * 7)  # 41\n```\n", "line 2: printed '42', the comment says '41'"),
    ("\n```python\nx = 1\nx.nope\n```\n", 'page.md", line 4'),
    ("```python\nprint(1)\n```\n```output\n2\n```\n", "the output block differs"),
    ("```python\nif False:\n    print(1)  # 1\n```\n", "printed '', the comment says '1'"),
])
def test_runner_reports_a_false_claim_or_an_error_at_its_page_line(tmp_path, body, message):
    result = run_page(_page(tmp_path, body), timeout=60)
    assert result.failure is not None and message in result.failure, result.failure


def test_a_translation_is_checked_against_the_original_run(tmp_path):
    original = _page(tmp_path, "```python\nprint(6 * 7)  # 42: the answer\n```\n")
    result = run_page(original, timeout=60)
    good = tmp_path / "good.md"
    good.write_text("```python\nprint(6 * 7)  # 42:答案\n```\n", encoding="utf-8")
    check_translation(good, original, result)
    bad = tmp_path / "bad.md"
    bad.write_text("```python\nprint(6 * 7)  # 24:答案\n```\n", encoding="utf-8")
    with pytest.raises(pytest.fail.Exception, match="page.md printed '42', the comment says '24"):
        check_translation(bad, original, result)


def test_runner_stops_a_page_at_its_time_limit_and_survives_a_crash(tmp_path):
    slow = run_page(_page(tmp_path, "```python\nimport time\ntime.sleep(30)\n```\n"), timeout=1)
    assert slow.failure == "page.md: did not finish in 1 s"
    crash = run_page(_page(tmp_path, "```python\nimport os\nos._exit(3)\n```\n"), timeout=60)
    assert crash.failure == "page.md: the page's process ended (crashed) with no report"
    fine = run_page(_page(tmp_path, "```python\nprint(2 + 2)  # 4\n```\n"), timeout=60)
    assert fine.failure is None and fine.ran == 1
