"""Generated HLS C++ vs the Python integer reference, compiled with g++ against hls4ml's ap_types.

Three projects, each one compile, hold 16 layer configurations; the testbench checks every
layer on its golden input and the whole chain (top function), value by value, borders included:

* the seed's own ``DW_CONV_3x3`` and ``conv1x1`` (16 channels, 32x64, ``[16][34][66]`` buffers),
  then a 5x5 depthwise with stride 2 and depth multiplier 2, a pointwise with negative biases,
  3x1 and 1x3, and a grouped dilated conv with asymmetric padding (narrowing toward zero,
  saturating store, constant weights, per-tensor factor for the seed's layers);
* floor narrowing with wrapping stores (ap_uint<8> and a signed ap_int<8> output without ReLU),
  factors at the limits (``1 - 2**-31`` and ``2**-24``, 8 significant bits), weights as
  arguments, HLS pragmas;
* round narrowing through the CLI: ``leanconv quantize`` of a float separable block with a
  stride-2 'same' depthwise (asymmetric pads), then ``leanconv export-hls --check``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from leanconv.export.hls import check_hls, export_hls, find_ap_types
from leanconv.quant import ApFixed, IntConv2d, QuantizedModel, hazard_report, quantize

needs_cpp = pytest.mark.skipif(
    shutil.which("g++") is None or shutil.which("make") is None or find_ap_types() is None,
    reason="needs g++, make and the ap_types headers of the hls4ml package (pip install hls4ml)",
)


def _layer(gen, c, o, kernel, settings, name, groups=1, bias=(-200, 200), factor=(2e-3, 8e-3), **kw):
    weight = torch.randint(-127, 128, (o, c // groups, *kernel), generator=gen)
    biases = torch.randint(bias[0], bias[1], (o,), generator=gen)
    lo, hi = factor
    factors = kw.pop("factors", None) or [lo + (hi - lo) * float(v) for v in torch.rand(o, generator=gen)]
    return IntConv2d.apfixed(weight, biases, factors, settings, groups=groups, name=name, **kw)


def seed_chain() -> QuantizedModel:
    gen = torch.Generator().manual_seed(4)
    s = ApFixed(narrowing="trunc", store="saturate")
    layers = [
        _layer(gen, 16, 16, (3, 3), s, "dw3", groups=16, padding=1, factor=(0.004, 0.004)),
        _layer(gen, 16, 16, (1, 1), s, "pw1", factor=(0.002, 0.002)),
    ]
    # the seed's layers take one factor (ap_fixed<32,1> factor): rebuild them per tensor
    layers = [IntConv2d.apfixed(l.weight, l.requant.bias, 0.004 if i == 0 else 0.0015, s, groups=l.groups,
                                padding=l.padding, name=l.name) for i, l in enumerate(layers)]
    layers += [
        _layer(gen, 16, 32, (5, 5), s, "dw5", groups=16, stride=2, padding=2, factor=(0.003, 0.006)),
        _layer(gen, 32, 24, (1, 1), s, "pw2", bias=(-3000, -500), factor=(5e-4, 2e-3)),
        _layer(gen, 24, 12, (3, 1), s, "k3x1", padding=(1, 0), factor=(5e-4, 2e-3)),
        _layer(gen, 12, 12, (1, 3), s, "k1x3", padding=(0, 1), factor=(1e-3, 3e-3)),
        _layer(gen, 12, 8, (3, 3), s, "grouped", groups=4, dilation=2, padding=(1, 3, 2, 0), factor=(2e-3, 6e-3)),
    ]
    return QuantizedModel(layers, s, input_shape=(16, 32, 64))


def limits_chain() -> QuantizedModel:
    gen = torch.Generator().manual_seed(5)
    s = ApFixed(narrowing="floor", store="wrap")
    layers = [
        _layer(gen, 3, 8, (3, 3), s, "dense_s2", stride=2, padding=(0, 1, 2, 0), in_signed=True,
               factors=[1 - 2.0**-31, 0.5, 0.25, 0.01, 0.003, 0.002, 0.999, 0.001]),
        _layer(gen, 8, 6, (1, 1), s, "pw_signed", relu=False, out_signed=True, bias=(-100, 20),
               factors=[2.0**-24, 2.0**-20, 0.001, 0.004, 0.0004, 0.01]),
        _layer(gen, 6, 6, (3, 3), s, "dw_dil", groups=6, dilation=2, padding=2, in_signed=True, factor=(0.003, 0.03)),
    ]
    return QuantizedModel(layers, s, input_shape=(3, 13, 17))


@needs_cpp
def test_seed_kernels_and_kinds_are_bit_exact(tmp_path):
    q = seed_chain()
    names = ["DW_CONV_3x3", "conv1x1", "DW_CONV_5x5_s2", "conv1x1_neg_bias", "conv3x1", "conv1x3", "grouped_dilated"]
    project = export_hls(q, tmp_path / "seed", names=names, margin=1, vectors=2)
    kernels = (project.directory / "kernels.cpp").read_text()
    # the seed's signatures: padded [16][34][66] buffers, ap_int<8> weights, ap_int<16> bias, one factor
    assert "void DW_CONV_3x3(const ap_uint<8> bottom[16][34][66], ap_uint<8> top[16][34][66])" in kernels
    # conv1x1 writes into the 5x5 layer's input buffer: a 2-pixel zero border
    assert "void conv1x1(const ap_uint<8> bottom[16][34][66], ap_uint<8> top[16][36][68])" in kernels
    weights = (project.directory / "weights.h").read_text()
    assert "static const ap_int<8> DW_CONV_3x3_weight[16][3][3]" in weights
    assert "static const ap_int<8> conv1x1_weight[16][16]" in weights
    raw = 8589934  # floor(0.004 * 2**31): the exact value the C++ will hold
    assert f"static const ap_fixed<32, 1> DW_CONV_3x3_factor = {raw / 2**31!r};  // raw {raw}" in weights
    assert "static const ap_int<16> conv1x1_neg_bias_bias[24]" in weights
    assert bool((q.layers[3].requant.bias < 0).all())
    result = check_hls(project.directory, cxxflags="-O1 -std=c++14")
    assert result.passed, result.output[-3000:]
    # every value of every output buffer (border = the next layer's padding, at least 1), plus the chain's
    sizes, hw = [], (32, 64)
    for index, layer in enumerate(q.layers):
        hw = layer.output_hw(*hw)
        nxt = q.layers[index + 1].padding if index + 1 < len(q.layers) else (0, 0, 0, 0)
        top, bottom, left, right = (max(p, 1) for p in nxt)
        sizes.append(layer.out_channels * (hw[0] + top + bottom) * (hw[1] + left + right))
    assert result.compared == 2 * (sum(sizes) + sizes[-1])
    # the testbench catches a single wrong value, names it and exits non-zero
    golden = project.directory / "golden" / "conv1x3.txt"
    lines = golden.read_text().splitlines()
    first = lines[1].split()
    first[0] = str(int(first[0]) + 1)
    lines[1] = " ".join(first)
    golden.write_text("\n".join(lines) + "\n")
    run = subprocess.run(["./tb", "golden"], cwd=project.directory, capture_output=True, text=True)
    assert run.returncode == 1
    assert "MISMATCH conv1x3 vector 0 out[0][0][0]" in run.stdout
    assert "FAIL: " in run.stdout


@needs_cpp
def test_floor_wrap_and_factor_limits_are_bit_exact(tmp_path):
    q = limits_chain()
    assert int(q.layers[0].requant.factor[0]) == (1 << 31) - 1
    assert int(q.layers[1].requant.factor[0]).bit_length() == 8
    project = export_hls(q, tmp_path / "limits", weights="args", pragmas=True, vectors=3)
    hazards = hazard_report(q, torch.randint(-128, 128, (3, 3, 13, 17), generator=torch.Generator().manual_seed(0)))
    assert hazards.rows[0].saturated > 0 and hazards.rows[1].saturated > 0  # the stores really wrap
    assert "WRAPPED" in project.hazards
    kernels = (project.directory / "kernels.cpp").read_text()
    assert "#pragma HLS PIPELINE II=1" in kernels
    assert "const ap_fixed<32, 1> factor[8]" in kernels and "ap_int<8> top[6]" in kernels
    result = check_hls(project.directory, cxxflags="-O1 -std=c++14")
    assert result.passed, result.output[-3000:]


@needs_cpp
def test_cli_quantize_and_export_hls_check(tmp_path):
    model_file = tmp_path / "block.py"
    model_file.write_text(
        "import torch\nimport leanconv\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(\n"
        "        leanconv.DepthwiseSeparableConv2d(8, 12, 3, stride=2, padding='same', act_layer=torch.nn.ReLU),\n"
        "        torch.nn.ReLU(), leanconv.PointwiseConv2d(12, 6)).eval()\n"
    )
    leanconv = [sys.executable, "-m", "leanconv.cli"]
    quant = subprocess.run(leanconv + ["quantize", f"{model_file}:build", "--calib", "random:32", "--input", "1,8,14,14",
                                       "--out", str(tmp_path / "q")], capture_output=True, text=True, timeout=300)
    assert quant.returncode == 0, quant.stderr[-2000:]
    assert {p.name for p in (tmp_path / "q").iterdir()} == {".leanconv-output", "qmodel.pt", "scales.json", "report.md"}
    loaded = QuantizedModel.load(tmp_path / "q" / "qmodel.pt")
    assert loaded.layers[0].padding == (0, 1, 0, 1)  # TF 'same', stride 2 on 14: the extra pixel after
    assert loaded.dialect == ApFixed()
    again = subprocess.run(leanconv + ["quantize", f"{model_file}:build", "--calib", "random:8", "--input", "1,8,14,14",
                                       "--out", str(tmp_path / "q")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    run = subprocess.run(leanconv + ["export-hls", str(tmp_path / "q"), "--out", str(tmp_path / "hls"), "--check"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "check: PASS (bit-exact)" in run.stdout


# ------------------------------------------------------------------------------ bad input


def test_export_rejects_bad_input_before_writing(tmp_path):
    out = tmp_path / "never"
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    calib = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"dialect='tflite': HLS export needs the 'apfixed' dialect"):
        export_hls(quantize(block, calib, "tflite"), out)
    head = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"unsupported layer: 4 \(pool\+linear\)"):
        export_hls(quantize(head, calib), out)
    q = quantize(block, calib)
    with pytest.raises(ValueError, match=r"channel mismatch: inputs have 5 channels, 0 takes 3"):
        export_hls(q, out, inputs=torch.zeros(1, 5, 8, 8))
    with pytest.raises(ValueError, match=r"names has 2 entries, the model has 1 layers"):
        export_hls(q, out, names=["a", "b"])
    with pytest.raises(ValueError, match=r"function name '1st' must be a C identifier"):
        export_hls(q, out, names=["1st"])
    with pytest.raises(ValueError, match=r"weights='float' must be one of"):
        export_hls(q, out, weights="float")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    export_hls(q, out)
    with pytest.raises(FileExistsError, match="pass force=True"):
        export_hls(q, out)
    export_hls(q, out, force=True, vectors=1)
    assert (out / "golden" / "input.txt").read_text().startswith("1 3 8 8\n")


# ------------------------------------------------------------------------------ tampered files


def _payload(marker) -> str:
    """A layer name that, pasted into a C++ comment, would run ``touch marker`` when the testbench runs."""
    return f'x\nstatic int leanconv_pwn = system("touch {marker}");\n//'


def _small_qmodel() -> QuantizedModel:
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    return quantize(block, torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)))


def test_export_refuses_names_and_values_changed_after_loading(tmp_path):
    out = tmp_path / "never"
    for attribute, value, message in [
        ("name", _payload(tmp_path / "MARKER"), r"layers\[0\]: name='x\\nstatic int leanconv_pwn.* must be a name"),
        ("padding", (1, 1, 1, "1"), r"layers\[0\]: 0: padding\[3\]='1' must be an int >= 0"),
        ("groups", 1.0, r"layers\[0\]: 0: groups=1.0 must be an int >= 1"),
    ]:
        q = _small_qmodel()
        setattr(q.layers[0], attribute, value)
        with pytest.raises(ValueError, match=message):
            export_hls(q, out, vectors=1)
    q = _small_qmodel()
    q.input_shape = (3, "6", 6)
    with pytest.raises(ValueError, match=r"input_shape\[1\]='6' must be an int"):
        export_hls(q, out, vectors=1)
    with pytest.raises(ValueError, match=r"function name 'fill' .*not a keyword nor a name the generated code uses"):
        export_hls(_small_qmodel(), out, names=["fill"])
    with pytest.raises(ValueError, match=r"function name 'conv\\n' must be a C identifier"):
        export_hls(_small_qmodel(), out, names=["conv\n"])
    with pytest.raises(ValueError, match=r"top='while' must be a C identifier"):
        export_hls(_small_qmodel(), out, top="while")
    assert not out.exists()


def test_export_refuses_an_ap_types_path_that_would_inject_make_text(tmp_path):
    headers = tmp_path / "a$(shell touch MARKER)"
    headers.mkdir()
    (headers / "ap_fixed.h").write_text("")
    (headers / "ap_int.h").write_text("")
    with pytest.raises(ValueError, match=r"ap_types='.*a\$\(shell touch MARKER\)' must be a path of letters"):
        export_hls(_small_qmodel(), tmp_path / "never", ap_types=headers)
    assert not (tmp_path / "never").exists()


@needs_cpp
def test_cli_export_hls_check_refuses_a_tampered_qmodel_and_runs_nothing(tmp_path):
    # control: the payload, pasted into a comment of the generated C++, really runs when the testbench runs
    control = export_hls(_small_qmodel(), tmp_path / "control", vectors=1)
    kernels = control.directory / "kernels.cpp"
    ran = tmp_path / "RAN"
    kernels.write_text(kernels.read_text().replace("// 0: ", f"// {_payload(ran)}: ", 1))
    assert check_hls(control.directory, cxxflags="-O0 -std=c++14").passed and ran.exists()
    # the same name in a received qmodel.pt: load and export refuse it, nothing is compiled or run
    marker = tmp_path / "MARKER"
    folder = tmp_path / "received"
    folder.mkdir()
    data = _small_qmodel().to_dict()
    data["layers"][0]["name"] = _payload(marker)
    torch.save(data, folder / "qmodel.pt")
    run = subprocess.run([sys.executable, "-m", "leanconv.cli", "export-hls", str(folder), "--out",
                          str(tmp_path / "hls"), "--check"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "layers[0].name=" in run.stderr and "must be a name of" in run.stderr
    assert "Traceback" not in run.stderr and "PASS" not in run.stdout
    assert not marker.exists() and not (tmp_path / "hls").exists()


# ------------------------------------------------------------------------------ the compiler's processes

FAKE_MAKE = """#!/bin/sh
# records its pid and working folder, then sleeps as the same process, like a long compile
echo "$$ $(pwd)" > "$LEANCONV_TEST_RECORD.part" && mv "$LEANCONV_TEST_RECORD.part" "$LEANCONV_TEST_RECORD"
exec sleep 120
"""

EXPORT_WITH_CHECK = """
import signal, sys
import torch
from leanconv.export.hls import export_hls
from leanconv.quant import QuantizedModel

signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(143))  # as the leanconv command does
qmodel = QuantizedModel.load(sys.argv[1])
export_hls(qmodel, sys.argv[2], vectors=1, ap_types=sys.argv[3], check=True, check_timeout=float(sys.argv[4]))
print("installed")
"""


def _gone(pid: int) -> bool:
    """The process has exited (a zombie that no one reaped yet counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _fake_tools(tmp_path, monkeypatch):
    """A ``make`` that records itself and sleeps, a ``g++`` that does nothing, empty ap_types headers."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "make").write_text(FAKE_MAKE)
    (tools / "g++").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("make", "g++"):
        (tools / tool).chmod(0o755)
    headers = tmp_path / "headers"
    headers.mkdir()
    for name in ("ap_fixed.h", "ap_int.h"):
        (headers / name).write_text("")
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("LEANCONV_TEST_RECORD", str(tmp_path / "make.pid"))
    return headers


@pytest.mark.skipif(os.name != "posix", reason="process groups and POSIX signals")
@pytest.mark.parametrize("ending", ["SIGKILL", "SIGINT", "SIGTERM", "timeout"])
def test_check_compiles_in_staging_and_no_way_out_leaves_the_compiler_running(tmp_path, monkeypatch, ending):
    headers = _fake_tools(tmp_path, monkeypatch)
    _small_qmodel().save(tmp_path / "q.pt")
    (tmp_path / "export.py").write_text(EXPORT_WITH_CHECK)
    out = tmp_path / "hls"
    parent = subprocess.Popen([sys.executable, str(tmp_path / "export.py"), str(tmp_path / "q.pt"), str(out),
                               str(headers), "2" if ending == "timeout" else "600"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = tmp_path / "make.pid"
    assert _wait_for(lambda: record.exists() or parent.poll() is not None, 300), "make never started"
    assert record.exists(), parent.communicate()[1][-3000:]
    pid, folder = record.read_text().split(" ", 1)
    folder = Path(folder.strip())
    assert folder.parent == tmp_path and folder.name.startswith(".hls.leanconv-") and folder.name.endswith(".tmp")
    assert (folder / "Makefile").is_file() and not out.exists()  # compiling in staging, nothing installed
    if ending != "timeout":
        parent.send_signal(getattr(signal, ending))
    _, err = parent.communicate(timeout=120)
    assert parent.returncode != 0
    if ending == "timeout":
        assert "RuntimeError: make did not finish within 2 s" in err, err[-3000:]
    assert _wait_for(lambda: _gone(int(pid)), 60), f"make ({pid}) still runs after leanconv ended by {ending}"
    assert not out.exists()
    staging = [p.name for p in tmp_path.iterdir() if p.name.startswith(".hls.")]
    assert staging == ([folder.name] if ending == "SIGKILL" else [])  # a SIGKILL cannot clean up; the next write does
    export_hls(_small_qmodel(), tmp_path / "again", vectors=1)
    assert not folder.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@needs_cpp
def test_export_with_check_installs_the_checked_folder_with_its_testbench(tmp_path):
    project = export_hls(_small_qmodel(), tmp_path / "hls", vectors=2, check=True, cxxflags="-O0 -std=c++14")
    assert project.check is not None and project.check.passed and project.check.mismatches == 0, project.check
    assert project.check.compared > 0
    tb = project.directory / "tb"
    assert tb.is_file() and tb.stat().st_mode & 0o111 == 0o111  # the compiled testbench stays executable
    assert subprocess.run([str(tb), "golden"], cwd=project.directory, capture_output=True, text=True,
                          timeout=120).stdout.startswith("PASS:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hls"]


def test_export_check_options_and_missing_tools_are_refused_before_writing(tmp_path, monkeypatch):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"^check_timeout=0 must be a finite number of seconds > 0$"):
        export_hls(_small_qmodel(), out, check=True, check_timeout=0)
    with pytest.raises(TypeError, match=r"^cxxflags=3 must be a str or None$"):
        export_hls(_small_qmodel(), out, check=True, cxxflags=3)
    with pytest.raises(ValueError, match=r"^timeout=nan must be a finite number of seconds > 0$"):
        check_hls(tmp_path, timeout=float("nan"))
    (tmp_path / "file").write_text("keep")
    with pytest.raises(ValueError, match=r"^out_dir='.*file' exists and is not a folder: not replacing it, even "
                                         r"with force=True$"):
        export_hls(_small_qmodel(), tmp_path / "file", force=True)
    empty = tmp_path / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(RuntimeError, match=r"^make is not installed"):
        export_hls(_small_qmodel(), out, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "no-tools"]
