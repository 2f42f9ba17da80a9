"""examples/keras_mean_spot_cbam.py (seed S7): the script runs, and the model is the seed's
MEAN_Spot with CBAM inserted after the concatenation, checked layer by layer and against a
closed-form parameter count."""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is first imported

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip(f"this test runs Keras on its torch backend, got {keras.backend.backend()!r}",
                allow_module_level=True)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import keras_mean_spot_cbam as example  # noqa: E402

from leanconv.keras import CBAM  # noqa: E402


def test_example_trains_saves_and_reloads_identically():
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run([sys.executable, "keras_mean_spot_cbam.py"], cwd=EXAMPLES, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "outputs identical = True" in out
    assert "(None, 14, 14, 14) -> (None, 14, 14, 14)" in out
    assert "203 of 3,824 params" in out
    assert "loss " in out and "->" in out


def test_model_is_mean_spot_with_cbam_after_the_concatenation():
    model = example.mean_spot_cbam(keras.optimizers.Adam(1e-3))
    assert [tuple(t.shape) for t in model.inputs] == [(None, 42, 42, 1)] * 3
    assert tuple(model.outputs[0].shape) == (None, 1)
    cbam = model.get_layer("cbam")
    assert isinstance(cbam, CBAM)
    concat = [layer for layer in model.layers if isinstance(layer, keras.layers.Concatenate)]
    assert len(concat) == 1 and cbam.input is concat[0].output
    kinds = [type(layer).__name__ for layer in model.layers]
    for name, count in [("InputLayer", 3), ("Conv2D", 4), ("BatchNormalization", 3), ("MaxPooling2D", 4),
                        ("Dropout", 4), ("Concatenate", 1), ("CBAM", 1), ("Flatten", 1), ("Dense", 1)]:
        assert kinds.count(name) == count, (name, kinds)
    # Closed form: three stream convs 5x5x1xf (+f) and BNs (4f), CBAM on 14 channels with
    # hidden 3 (14*3+3 + 3*14+14 + 7*7*2 + 4), fusing conv 5x5x14x8+8, Dense 7*7*8+1.
    streams = sum(25 * f + f + 4 * f for f in (3, 3, 8))
    cbam_params = (14 * 3 + 3) + (3 * 14 + 14) + 7 * 7 * 2 + 4
    assert cbam.count_params() == cbam_params == 203
    assert model.count_params() == streams + cbam_params + (25 * 14 * 8 + 8) + (7 * 7 * 8 + 1)
    assert model.loss == {"spot": "mse"}


def test_example_skips_with_a_clear_message_without_keras():
    code = ("import runpy, sys; sys.modules['keras'] = None; "
            "runpy.run_path('keras_mean_spot_cbam.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=EXAMPLES, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped: Keras 3 is not installed (pip install -c constraints.txt 'leanconv[keras]')" in result.stdout
