"""Run by tests/test_keras3.py in a process of its own (Keras picks its backend at import):
``python keras_backend_script.py WORKDIR [LOAD_FROM ...]`` with KERAS_BACKEND set. Loads the
``.keras`` files the other backends saved and checks their predictions; trains a small model
with npool.keras' layers on this backend; saves it and its predictions for the next ones."""
import json
import pathlib
import sys

import numpy as np

import keras
import npool.keras as nk

backend = keras.backend.backend()
workdir = pathlib.Path(sys.argv[1])
report = {"backend": backend, "loaded": {}}
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 8, 8, 3)).astype("float32")

# the files the other backends saved: same outputs here
for other in sys.argv[2:]:
    model = keras.saving.load_model(workdir / f"{other}.keras")
    expected = np.load(workdir / f"{other}.npy")
    got = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    report["loaded"][other] = float(np.max(np.abs(got - expected)))

inputs = keras.Input((8, 8, 3))
h = keras.layers.Conv2D(6, 3, padding="same")(inputs)
h = nk.SoftPooling2D(2)(h)                                  # (4, 4, 6)
h = nk.MaxEntPooling2D(2, lam="channel")(h)                 # (2, 2, 6)
g = nk.MaxEntPooling2D(2, lam="gfgp")(keras.layers.Conv2D(6, 1)(inputs))
features = keras.layers.Concatenate()([
    nk.GlobalKMaxPool(k=2)(h), nk.GlobalLSEPool(beta=2.0)(h), nk.WeldonPooling2D(kmax=1)(h),
    nk.GlobalAvgPool()(g), nk.GlobalMaxPooling2D()(g)])
outputs = keras.layers.Dense(1)(features)
model = keras.Model(inputs, outputs)
teacher = rng.standard_normal((3,)).astype("float32")
targets = (x.mean((1, 2)) @ teacher)[:, None].astype("float32")
model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
history = model.fit(x, targets, epochs=30, batch_size=16, verbose=0, shuffle=False)
report["loss"] = [float(v) for v in history.history["loss"]]
model.save(workdir / f"{backend}.keras")
np.save(workdir / f"{backend}.npy",
        np.asarray(keras.ops.convert_to_numpy(model(x, training=False))))
print(json.dumps(report))
