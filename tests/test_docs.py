"""The documentation: every Python block of every page runs and prints what it says, every
relative link resolves, and each Chinese page has its English page's code.

The runner and its conventions are in tests/docs_runner.py (for authors: docs/README.md). The
runner's own checks below compare against hand-written expectations.
"""

from __future__ import annotations

import functools
import io
import json
import re
import string
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


# ------------------------------------------------------------------ measured figures quoted from results files
#
# A figure measured by a benchmark is quoted in the docs only with its results file linked; each
# quote is listed here with the file and the rule that picks the number, so that a regenerated
# file and a stale page cannot disagree unnoticed. The English page must contain the quote as
# written (whitespace runs compare equal); its Chinese twin must contain each number.

RESULTS = ROOT / "benchmarks" / "results"


@functools.lru_cache(maxsize=None)
def _results(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def _layer_rows(kind: str, batch: int) -> list:
    rows = [r for r in _results("layers")["rows"] if r["kind"] == kind and r["batch"] == batch]
    assert rows, f"benchmarks/results/layers.json has no {kind} rows at batch {batch}"
    return rows


def _layer(kind: str, channels: int, batch: int) -> dict:
    (row,) = [r for r in _layer_rows(kind, batch) if r["channels"] == channels]
    return row


def _speedups(kind: str, batch: int, formats=("nchw", "channels_last")) -> list:
    return [r[f"speedup_{f}"] for r in _layer_rows(kind, batch) for f in formats]


def _convert_accuracy(target: str, budget: float, refit: bool) -> float:
    (row,) = [r for r in _results("convert") if r["model"] == "digits_cnn" and r["target"] == target
              and r["budget"] == budget and r["refit"] is refit]
    return row["value"]


def _quote(page: str, template: str, *values) -> tuple:
    """(page, the quote with ``values`` filled in, each filled-in number as written)."""
    numbers = [format(values[int(name)], spec) for _, name, spec, _ in string.Formatter().parse(template)
               if name is not None]
    return page, template.format(*values), numbers


def _distill_alpha_quotes() -> list:
    """docs/train.md's table of benchmarks/results/distill_alpha.json (one row per lr and alpha)."""
    rows = _results("distill_alpha")["rows"]
    seeds = sorted({r["seed"] for r in rows})
    quotes, better = [], []
    for lr in sorted({r["lr"] for r in rows}, reverse=True):
        by = {(r["alpha"], r["seed"]): r["distilled"] for r in rows if r["lr"] == lr}
        for alpha in sorted({a for a, _ in by}):
            values = [by[alpha, seed] for seed in seeds]
            quotes.append(_quote("docs/train.md", "| {0} | {1:.2%} | {2:.2%} | {3:.2%} | {4:.2%} |", alpha, *values,
                                 sum(values) / len(values)))
        better += [round((by[0.5, seed] - by[0.9, seed]) * 359) for seed in seeds]
    first = {r["seed"]: r for r in rows}
    quotes.append(_quote("docs/train.md", "(teachers {0:.2%}, {1:.2%}, {2:.2%}; refit students {3:.2%}, {4:.2%}, "
                         "{5:.2%})", *[first[s]["teacher"] for s in seeds], *[first[s]["refit"] for s in seeds]))
    gains = [b for b in better if b > 0]
    assert all(b >= 0 for b in better), "alpha 0.5 lost to 0.9 somewhere: docs/train.md says it never did"
    quotes.append(_quote("docs/train.md", "0.5 was at least as good as 0.9 in all {0} runs, better by {1} to {2} test "
                         "images in {3} of them", len(better), min(gains), max(gains), len(gains)))
    return quotes


def _demo_quotes() -> list:
    """The demo's figures (benchmarks/results/deploy.json, written by benchmarks/deploy.py): the
    README's table, and the accuracies the conversion pages quote."""
    demo, meta = _results("deploy")["demo"], _results("deploy")["meta"]
    assert demo is not None, "benchmarks/results/deploy.json is from a --quick run: it has no demo"
    search = demo["search"]
    quotes = [
        _quote("README.md", "| test accuracy ({0} images) | {1:.2%} | {2:.2%} after the refit (no training), {3:.2%} "
               "after {4} epochs of distillation |", demo["test_images"], demo["accuracy_original"],
               demo["accuracy_refit"], demo["accuracy_distilled"], demo["epochs"]),
        _quote("README.md", "| params | {0:,} | {1:,} |", demo["params_original"], demo["params_converted"]),
        _quote("README.md", "| MACs per image | {0:,} | {1:,} ({2:.2f}x fewer) |", demo["macs_original"],
               demo["macs_converted"], demo["macs_original"] / demo["macs_converted"]),
        # the mix as the demo prints it; the Chinese twin needs its kinds, target, precision and speedup
        ("README.md", f"| per-layer choice (batch {search['batch']}) | dense | {search['mix']} |",
         [str(search["batch"]), search["mix"].split(" on ")[0], search["target"], search["precision"],
          f"{search['speedup']:.2f}x"]),
        _quote("README.md", "One run of `leanconv demo` on this project's {2}-core CPU (torch {0}; training, refit "
               "and distillation on {1} threads, the search and the deployment targets timed on {3} thread",
               meta["torch"].split("+")[0], demo["threads"], meta["cpu_count"], search["threads"]),
        _quote("README.md", "With the optimal factorized weights alone (no refit) the per-layer mix scores {0:.2%}",
               demo["accuracy_no_refit"]),
    ]
    layers = ", ".join(f"`{path}`: {label}" for path, label in search["layers"].items())
    quotes += [
        ("README.md", f"On this machine the original was fastest at batch {search['batch']} on {search['target']} "
                      f"{search['baseline_precision']}, so the search timed every candidate on {search['target']} in "
                      f"each precision, and the 2x request was {'met' if search['met'] else 'not met'}",
         [str(search["batch"]), search["target"], search["baseline_precision"]]),
        ("README.md", f"the {'mix it chose' if search['met'] else 'fastest mix it found'} ({layers}) measured "
                      f"{search['speedup']:.2f}x the original at its best there",
         [*search["layers"].values(), f"{search['speedup']:.2f}x"]),
        _quote("README.md", "The uniform rank-1 depthwise separable conversion of the same original (stem dense), "
               "recorded in the same file for comparison, scores {0:.2%} after the same refit",
               demo["rank1"]["accuracy_refit"]),
    ]
    if meta["overloaded"]:  # timings taken on an overloaded machine are not quoted, and the README says why
        quotes.append(_quote("README.md", "The recorded run shared its {0} cores with other jobs (its load average, "
                             "in the file, was above the CPU count), so its timings are not quoted here",
                             meta["cpu_count"]))
        return quotes + _sentence_quotes(demo)
    for batch, report in sorted(demo["targets"].items(), key=lambda item: -int(item[0])):
        o, c, s = report["original"], report["converted"], report["speedup"]
        row = ("| batch {0}, fastest deployment | {1:.3f} ms ({2} {3}) | {4:.3f} ms ({5} {6}): ", batch, o["ms"],
               o["target"], o["precision"], c["ms"], c["target"], c["precision"])
        if report["within_noise"]:  # only the range of the speedup
            quotes.append(_quote("README.md", row[0] + "{7:.2f}-{8:.2f}x, within noise, vs the original at its best |",
                                 *row[1:], s["low"], s["high"]))
        else:
            quotes.append(_quote("README.md", row[0] + "{7:.2f}x ({8:.2f}-{9:.2f}) vs the original at its best |",
                                 *row[1:], s["median"], s["low"], s["high"]))
    efficiency = {batch: report["efficiency"] for batch, report in demo["targets"].items()}
    if all(e is not None for e in efficiency.values()) and not any(r["within_noise"] for r in demo["targets"].values()):
        quotes.append(_quote("README.md", "Realized efficiency (that speedup / the MAC reduction) was {0:.2f} at batch "
                             "16 and {1:.2f} at batch 1", efficiency["16"]["median"], efficiency["1"]["median"]))
    return quotes + _sentence_quotes(demo)


def _sentence_quotes(demo: dict) -> list:
    """The demo's accuracies as the conversion pages quote them: the rank-1 conversion of the
    demo's original, which benchmarks/deploy.py records beside the demo's own per-layer mix."""
    quotes = []
    sentence = ("on the demo's digits CNN ({0:.1%} test accuracy) the rank-1 conversion (stem dense) scored {1:.1%} "
                "with the optimal weights alone and {2:.1%} after a least-squares refit on 256 images, with no training")
    for page in ("docs/concepts/dsconv.md", "docs/howto/convert-trained-model.md"):
        quotes.append(_quote(page, sentence, demo["accuracy_original"], demo["rank1"]["accuracy_no_refit"],
                             demo["rank1"]["accuracy_refit"]))
    left = _results("deploy")["meta"]["batchnorms_left_after_fuse_converted"]
    quotes.append(_quote("docs/train.md", "after `leanconv.fuse` the demo's converted model has {0} BatchNorm left",
                         left))
    permuted = [path for path, layer in demo["plan"]["layers"].items()
                if layer["kind"] == "grouped" and layer["options"].get("permute")]
    assert len(permuted) == left, "docs/train.md explains the BatchNorms left by the permuted grouped convs of the mix"
    if permuted:  # leanconv.fuse skips the norm after a permuted grouped conv (PermutedGroupedConv2d's doc)
        where = ", ".join(f"`{path.rsplit('.', 1)[0]}`" for path in permuted)
        quotes.append(("docs/train.md", f"the one after {where}, which the recorded mix made a permuted grouped conv",
                       []))
    return quotes


def _quotes() -> list:
    """Every benchmark figure the docs quote: (page, quote, numbers)."""
    asym1 = [r["speedup_nchw"] for r in _layer_rows("asymmetric", 1)]
    grouped1, grouped16 = _speedups("grouped", 1, ("nchw",)), _speedups("grouped", 16, ("nchw",))
    dw64, dw512 = _layer("depthwise", 64, 1), _layer("depthwise", 512, 1)
    ds64_16 = _layer("dsconv", 64, 16)
    parallel1, parallel16 = _speedups("asym_parallel", 1), _speedups("asym_parallel", 16)
    acblock = _speedups("acblock", 1) + _speedups("acblock", 16)
    fused = _speedups("acblock_fused", 1) + _speedups("acblock_fused", 16)
    tucker1 = _layer_rows("tucker2", 1)
    ds_eff = [r["efficiency_best"] for r in _layer_rows("dsconv", 1)]
    acc = _convert_accuracy
    quotes = [
        _quote("docs/concepts/asymmetric.md", "ran at **{0:.2f}x to {1:.2f}x** its speed at batch 1 in NCHW "
               "({2:.2f}x, i.e. slower, at 64 channels and 112x112), and at best {3:.2f}x in channels_last",
               min(asym1), max(asym1), _layer("asymmetric", 64, 1)["speedup_nchw"],
               max(_speedups("asymmetric", 1, ("channels_last",)) + _speedups("asymmetric", 16, ("channels_last",)))),
        _quote("docs/concepts/asymmetric.md", "accuracy was {0:.1%} without and {1:.1%} with a least-squares refit",
               acc("asymmetric", 0.3, False), acc("asymmetric", 0.3, True)),
        _quote("docs/concepts/dense-grouped.md", "ran **{0:.2f}x to {1:.2f}x** faster than the dense 3x3 at batch 1 "
               "(NCHW) for every shape tried; at batch 16 the gain ranged from **{2:.2f}x** (64 channels at 112x112) "
               "to {3:.2f}x", min(grouped1), max(grouped1), _layer("grouped", 64, 16)["speedup_nchw"], max(grouped16)),
        _quote("docs/concepts/depthwise.md", "runs only **{0:.0f}x** faster (NCHW); at 512 channels and 14x14, 1/512 "
               "of the MACs and **{1:.0f}x** faster. channels_last memory format helps it most ({2:.0f}x and {3:.0f}x "
               "in the same runs)", dw64["speedup_nchw"], dw512["speedup_nchw"], dw64["speedup_channels_last"],
               dw512["speedup_channels_last"]),
        _quote("docs/concepts/dsconv.md", "only {0:.2f}x faster in NCHW and {1:.2f}x in channels_last",
               ds64_16["speedup_nchw"], ds64_16["speedup_channels_last"]),
        _quote("docs/concepts/parallel-asymmetric.md", "ran {0:.2f}x to {1:.2f}x faster than the dense 3x3 at batch 1, "
               "but at batch 16 it ranged from {2:.2f}x (slower, 64 channels at 112x112 in NCHW) to {3:.2f}x",
               min(parallel1), max(parallel1), _layer("asym_parallel", 64, 16)["speedup_nchw"], max(parallel16)),
        _quote("docs/concepts/parallel-asymmetric.md", "measured {0:.2f}x to {1:.2f}x the dense speed) and exactly a "
               "3x3 conv after fusion (measured {2:.2f}x to {3:.2f}x the dense speed", min(acblock), max(acblock),
               min(fused), max(fused)),
        _quote("docs/concepts/tucker2.md", "does {0:.3f} of a dense 3x3's MACs and ran **{1:.1f}x to {2:.1f}x** "
               "faster, a realized efficiency of {3:.2f} to {4:.2f}, where the depthwise separable conv reached "
               "{5:.2f} to {6:.2f}", tucker1[0]["mac_ratio"], min(r["speedup_nchw"] for r in tucker1),
               max(r["speedup_nchw"] for r in tucker1), min(r["efficiency_best"] for r in tucker1),
               max(r["efficiency_best"] for r in tucker1), min(ds_eff), max(ds_eff)),
        _quote("docs/concepts/tucker2.md", "at half the MACs Tucker-2 kept {0:.1%} accuracy against {1:.1%} for "
               "depthwise separable and {2:.1%} for 3x1 + 1x3; at 30% of the MACs {3:.1%} against {4:.1%} and {5:.1%}",
               acc("tucker2", 0.5, True), acc("dsconv", 0.5, True), acc("asymmetric", 0.5, True),
               acc("tucker2", 0.3, True), acc("dsconv", 0.3, True), acc("asymmetric", 0.3, True)),
        _quote("docs/howto/replace-3x3-with-1x3-3x1.md", "pair ran at {0:.2f}x the speed of the dense 3x3 in NCHW and "
               "{1:.2f}x in channels_last, for {2:.3f}x the MACs", _layer("asymmetric", 64, 1)["speedup_nchw"],
               _layer("asymmetric", 64, 1)["speedup_channels_last"], _layer("asymmetric", 64, 1)["mac_ratio"]),
        _quote("docs/howto/separable-aspp.md", "ran {0:.2f}x faster for {1:.1%} of the MACs",
               _layer("dsconv", 64, 1)["speedup_nchw"], _layer("dsconv", 64, 1)["mac_ratio"]),
        _quote("docs/howto/convert-trained-model.md", "({0:.1f}x faster at `g = 4` in the benchmark below)",
               _layer("grouped", 64, 1)["speedup_nchw"]),
    ]
    for row in _layer_rows("dsconv", 1):
        quotes.append(_quote("docs/concepts/dsconv.md", "| {0} @ {1}x{1} | {2:.3f} | {3:.2f}x |", row["channels"],
                             row["size"], row["mac_ratio"], row["speedup_nchw"]))
    return quotes + _demo_quotes() + _reach_quotes() + _distill_alpha_quotes()


def _reach_quotes() -> list:
    """The bound on the demo's batch-1 speedup (benchmarks/results/demo_reach.json, written by
    benchmarks/demo_reach.py) as the README quotes it."""
    batch1 = next(run for run in _results("demo_reach")["runs"] if run["batch"] == 1)
    return [_quote("README.md", "measures the fastest mix the search can find at {0:.2f}x, and the original without its "
                   "three searched stages at all (stem, pooling and classifier alone) at {1:.2f}x",
                   batch1["reached"]["fastest mix (onnxruntime)"]["median"], batch1["bound"]["median"])]




def _twin(page: str) -> Path | None:
    """The Chinese page of an English one, if there is one."""
    path = ROOT / page
    twin = ROOT / "README.zh-CN.md" if page == "README.md" else ROOT / "docs" / "zh" / path.relative_to(ROOT / "docs")
    return twin if twin.exists() and twin != path else None


QUOTING_PAGES = ["README.md", "docs/train.md", "docs/concepts/asymmetric.md", "docs/concepts/dense-grouped.md",
                 "docs/concepts/depthwise.md", "docs/concepts/dsconv.md", "docs/concepts/parallel-asymmetric.md",
                 "docs/concepts/tucker2.md", "docs/howto/replace-3x3-with-1x3-3x1.md", "docs/howto/separable-aspp.md",
                 "docs/howto/convert-trained-model.md"]


def test_every_quoting_page_is_listed():
    assert sorted({page for page, _, _ in _quotes()}) == sorted(QUOTING_PAGES)


@pytest.mark.parametrize("page", QUOTING_PAGES)
def test_quoted_benchmark_figures_match_their_results_file(page):
    text = " ".join((ROOT / page).read_text(encoding="utf-8").split())
    twin = _twin(page)
    translated = twin.read_text(encoding="utf-8") if twin is not None else None
    problems = []
    for _, quote, numbers in (q for q in _quotes() if q[0] == page):
        if " ".join(quote.split()) not in text:
            problems.append(f"{page} should say (from benchmarks/results/): {quote!r}")
        missing = [n for n in numbers if translated is not None and n not in translated]
        if missing:
            problems.append(f"{_rel(twin)} lacks {missing}, quoted in {page}: {quote!r}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ figures the README computes, recomputed


def _normal_page(page: str) -> str:
    return " ".join((ROOT / page).read_text(encoding="utf-8").split())


def test_readme_reference_counts_are_what_profile_counts():
    """README's MobileNetV1 and ResNet-50 figures, recomputed with leanconv.profile (meta device);
    the closed forms are in tests/test_models.py."""
    import torch

    import leanconv

    counts = []
    for name in ("mobilenet_v1", "resnet50"):
        with torch.device("meta"):
            model = leanconv.models.create(name)
        report = leanconv.profile(model, (1, 3, 224, 224))
        counts += [report.total_macs, report.total_params]
    quote = "MobileNetV1 gives exactly {:,} MACs and {:,} params; ResNet-50 v1.5 {:,} and {:,}".format(*counts)
    assert quote in _normal_page("README.md")
    zh = _normal_page("README.zh-CN.md")
    assert all(f"{n:,}" in zh for n in counts), counts


def test_readme_per_op_overhead_figures():
    """The depthwise conv of the demo's features.conv2 (rank-1 depthwise separable in the recorded
    mix) against the dense 3x3 it replaced, by the closed forms C*k*k*H*W and C*O*k*k*H*W at its
    outputs (32 -> 32 channels, 16x16 outputs at stride 2)."""
    depthwise, dense = 32 * 3 * 3 * 16 * 16, 32 * 32 * 3 * 3 * 16 * 16
    demo = _results("deploy")["demo"]
    layer = demo["plan"]["layers"].get("features.conv2.conv")
    assert layer is not None and layer["kind"] == "dsconv" and layer["options"]["depth_multiplier"] == 1, (
        "the recorded mix no longer makes features.conv2 depthwise separable at rank 1: update the README's sentence")
    quote = (f"this {demo['macs_converted'] / 1e6:.1f} M-MAC model is mostly per-op overhead: the 3x3 depthwise conv "
             f"of `features.conv2` does {depthwise:,} MACs (32 channels, 16x16 outputs at stride 2), the dense 3x3 it "
             f"replaced {dense:,} ({dense // depthwise} times the work)")
    assert " ".join(quote.split()) in _normal_page("README.md")
    zh = _normal_page("README.zh-CN.md")
    assert all(n in zh for n in (f"{depthwise:,}", f"{dense:,}", str(dense // depthwise))), quote


def test_readme_states_the_pinned_torch():
    pins = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1
    for page in ("README.md", "README.zh-CN.md"):
        assert f"`{pins[0]}`" in _normal_page(page), page


def _closed_form_quotes() -> list:
    """Ratios the concept pages derive in prose, from the closed forms (MACs = C*O*kh*kw*H*W)."""
    hw, c, out = 32 * 32, 2048, 256
    atrous = out * c * 9 * hw  # one dense atrous branch of the seed's ASPP
    one_by_one = out * c * hw  # the 1x1 branch; the projection (8 * 256 -> 256) costs the same
    pooling = out * c  # on the 1x1 pooled map
    dense_macs = 6 * atrous + one_by_one + pooling + 8 * out * out * hw
    separable_macs = 6 * (c * 9 + c * out) * hw + one_by_one + pooling + 8 * out * out * hw
    bottleneck, dense256 = 256 * 64 + 64 * 64 * 9 + 64 * 256, 256 * 256 * 9
    expand = 32 * 6 * 32  # InvertedResidual(32, 32): expand x6, depthwise 3x3, project
    sbb, dense_sbb = 64 * 64 + 64 * 64 * 3 + 64 * 64 * 3 + 64 * 256, 64 * 256 * 9  # per pixel, LPRNet block
    return [
        _quote("docs/concepts/aspp.md", "The six dense atrous branches are {0:.0%} of the seed module's MACs; made "
               "separable, the whole ASPP needs {1:.0%} of the params and {2:.0%} of the MACs. The 1x1 branch and the "
               "projection ({3:,} MACs each)", 6 * atrous / dense_macs, 4_836_096 / 29_891_328,
               separable_macs / dense_macs, one_by_one),
        _quote("docs/concepts/aspp.md", "| seed's ASPP (dense 3x3) | **29,891,328** | **{0:,}** | `out*C*9*H*W` = {1:,} |",
               dense_macs, atrous),
        _quote("docs/concepts/residual-blocks.md", "cost `256*64 + 64*64*9 + 64*256` = {0:,} MACs against {1:,} for a "
               "3x3 on 256 channels: {2:.1f}x less", bottleneck, dense256, dense256 / bottleneck),
        _quote("docs/concepts/residual-blocks.md", "(here 2 x {0:,} of {1:,} MACs per pixel)", expand,
               2 * expand + 32 * 6 * 9),
        _quote("docs/concepts/residual-blocks.md", "a stand-in for a 3x3 conv at {0:.0%} of its MACs here",
               sbb / dense_sbb),
        _quote("docs/concepts/pointwise.md", "{0:,} + {1:,} + {2:,} = {3:,} MACs per pixel instead of {4:,} for a 3x3 "
               "on 256 channels, {5:.1f}x less", 256 * 64, 64 * 64 * 9, 64 * 256, bottleneck, dense256,
               dense256 / bottleneck),
        _quote("docs/train.md", "the 3x3 depthwise conv of `features.conv2` does {0:,} MACs (32 channels, 16x16 "
               "outputs at stride 2)", 32 * 3 * 3 * 16 * 16),
    ]


@pytest.mark.parametrize("index", range(len(_closed_form_quotes())))
def test_ratios_derived_in_prose_follow_from_the_closed_forms(index):
    page, quote, numbers = _closed_form_quotes()[index]
    assert " ".join(quote.split()) in _normal_page(page), f"{page} should say: {quote!r}"
    twin = _twin(page)
    if twin is not None:
        missing = [n for n in numbers if n not in twin.read_text(encoding="utf-8")]
        assert not missing, f"{_rel(twin)} lacks {missing}: {quote!r}"


def test_readme_quotes_no_timing_from_an_overloaded_run():
    """Latency rows are quoted only from a run whose load average stayed within the CPU count."""
    if _results("deploy")["meta"]["overloaded"]:
        for page in ("README.md", "README.zh-CN.md"):
            assert "fastest deployment |" not in _normal_page(page) and "最快的部署 |" not in _normal_page(page), page
