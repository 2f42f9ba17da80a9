"""S7 (seed 001): the seed's Keras model MEAN_Spot with a CBAM module added ("更改模型加入CBAM模块").

MEAN_Spot takes three 42x42x1 maps (u, v, os); each goes through Conv5x5 + BN + MaxPool3 +
Dropout, the three are concatenated, then Conv5x5, MaxPool2, Flatten, Dropout and a Dense(1)
regression head trained with MSE (MAE as metric). This script builds it with
``leanconv.keras.CBAM`` inserted, trains it a few steps on generated data, saves it to a
``.keras`` file, reloads it and checks that the reloaded model gives identical outputs.
Runs on Keras 3 with the torch backend (no TensorFlow needed).
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported
if __name__ == "__main__":
    # The model is tiny (16 x 42 x 42 batches): one thread per op is faster than splitting such
    # small tensors between threads, and on a busy 2-core machine about 15x faster per step.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import keras
except ImportError:
    print("keras_mean_spot_cbam.py skipped: Keras 3 is not installed "
          "(pip install -c constraints.txt 'leanconv[keras]')")
    sys.exit(0)

import numpy as np
from keras import layers
from keras.regularizers import l2

from leanconv.keras import CBAM

SIZE = 42
STREAMS = (("u", 3), ("v", 3), ("os", 8))  # input name, filters of its Conv5x5 (as in the seed)


def mean_spot_cbam(optimizer: keras.optimizers.Optimizer, reduction: int = 4) -> keras.Model:
    """The seed's MEAN_Spot with one CBAM after the concatenation of the three input streams."""
    inputs, streams = [], []
    for name, filters in STREAMS:
        x_in = layers.Input(shape=(SIZE, SIZE, 1), name=name)
        x = layers.Conv2D(filters, (5, 5), padding="same", activation="relu", kernel_regularizer=l2(0.001))(x_in)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(pool_size=(3, 3), padding="same", strides=(3, 3))(x)
        streams.append(layers.Dropout(0.3)(x))
        inputs.append(x_in)
    merged = layers.Concatenate()(streams)  # 14 x 14 x (3 + 3 + 8)
    # CBAM goes here, where the three streams meet and before the conv that fuses them:
    # - its channel gate sees all 14 channels of the u, v and os streams at once and learns how
    #   much each stream's features should count for this sample (the model has no other way to
    #   weigh one input against another before mixing them);
    # - its spatial gate works on the largest map left (14 x 14; after MaxPool2 only 7 x 7
    #   remain) and marks where the spot is before the fusing conv and the pooling;
    # - the CBAM paper puts the module on a conv block's output; the three Conv+BN+Pool
    #   branches end here, so this is that output, and one module serves all three branches.
    # reduction=4 keeps a hidden width of 14 // 4 = 3 (the default 16 would leave 1).
    attended = CBAM(reduction=reduction, kernel_size=7, name="cbam")(merged)
    merged_conv = layers.Conv2D(8, (5, 5), padding="same", activation="relu", kernel_regularizer=l2(0.1))(attended)
    merged_pool = layers.MaxPooling2D(pool_size=(2, 2), padding="same", strides=(2, 2))(merged_conv)
    flat_do = layers.Dropout(0.2)(layers.Flatten()(merged_pool))
    outputs = layers.Dense(1, activation="linear", name="spot")(flat_do)
    model = keras.Model(inputs=inputs, outputs=[outputs], name="MEAN_Spot_CBAM")
    model.compile(loss={"spot": "mse"}, optimizer=optimizer, metrics={"spot": [keras.metrics.MeanAbsoluteError()]})
    return model


def generated_data(n: int, seed: int = 0):
    """Inputs ``[u, v, os]`` (smooth random 42x42 fields) and the target ``u + v`` at a random
    spot, which a bright Gaussian blob in ``os`` marks: the model needs all three inputs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    target = np.empty((n, 1), "float32")
    maps = {name: np.empty((n, SIZE, SIZE, 1), "float32") for name, _ in STREAMS}
    for i in range(n):
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01)
        a, b = rng.normal(size=2)
        maps["u"][i, ..., 0] = a * np.sin(3 * xx + b)
        maps["v"][i, ..., 0] = b * np.cos(2 * yy - a)
        maps["os"][i, ..., 0] = blob + 0.1 * rng.normal(size=(SIZE, SIZE))
        iy, ix = int(cy * SIZE), int(cx * SIZE)
        target[i, 0] = maps["u"][i, iy, ix, 0] + maps["v"][i, iy, ix, 0]
    return [maps[name] for name, _ in STREAMS], target


def main() -> int:
    keras.utils.set_random_seed(0)
    model = mean_spot_cbam(keras.optimizers.Adam(1e-3))
    x, y = generated_data(96)
    before = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    after = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mean_spot_cbam.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
    predicted = keras.ops.convert_to_numpy(model(x, training=False))
    again = keras.ops.convert_to_numpy(reloaded(x, training=False))
    identical = bool(np.array_equal(predicted, again))

    cbam = model.get_layer("cbam")
    print(f"MEAN_Spot + CBAM (keras {keras.__version__}, backend {keras.backend.backend()})")
    print(f"  inputs {[tuple(t.shape) for t in model.inputs]} -> output {tuple(model.outputs[0].shape)}")
    print(f"  CBAM on the concatenation: {tuple(cbam.input.shape)} -> {tuple(cbam.output.shape)}, "
          f"hidden width {cbam.channel_gate.hidden}, {cbam.count_params():,} of {model.count_params():,} "
          "params in total")
    print(f"  trained 3 epochs x 6 steps on 96 generated samples: "
          f"loss {before['loss']:.4f} -> {after['loss']:.4f}, MAE {before['mean_absolute_error']:.4f} "
          f"-> {after['mean_absolute_error']:.4f}")
    print(f"  saved to .keras and reloaded: outputs identical = {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
