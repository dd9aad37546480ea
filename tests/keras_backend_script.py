"""Run by tests/test_keras3.py in a process of its own (Keras picks its backend at import):
``python keras_backend_script.py WORKDIR [LOAD_FROM ...]`` with KERAS_BACKEND set. Loads the
``.keras`` files the other backends saved and checks their predictions; trains two small
models on this backend, one with every pooling layer of npool.keras and one with its LOUPE
layers (masked sets); saves them and their predictions for the next ones."""
import json
import pathlib
import sys

import numpy as np

import keras
import npool.keras as nk
from npool._op_table import keras_name, ops_of

backend = keras.backend.backend()
workdir = pathlib.Path(sys.argv[1])
report = {"backend": backend, "loaded": {}}
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 8, 8, 3)).astype("float32")

# sets for the LOUPE layers: (B, M, D), the padded samples all zero (Keras' Masking)
sets = rng.standard_normal((32, 6, 5)).astype("float32")
sets[np.arange(6)[None, :] >= rng.integers(2, 7, 32)[:, None]] = 0.0

# the files the other backends saved: same outputs here
for other in sys.argv[2:]:
    for kind, data in (("pools", x), ("sets", sets)):
        model = keras.saving.load_model(workdir / f"{other}-{kind}.keras")
        expected = np.load(workdir / f"{other}-{kind}.npy")
        got = np.asarray(keras.ops.convert_to_numpy(model(data, training=False)))
        report["loaded"][f"{other}-{kind}"] = float(np.max(np.abs(got - expected)))

inputs = keras.Input((8, 8, 3))
h = keras.layers.Conv2D(6, 3, padding="same")(inputs)
h = nk.SoftPooling2D(2)(h)                                  # (4, 4, 6)
h = nk.MaxEntPooling2D(2, lam="channel")(h)                 # (2, 2, 6)
g = nk.MaxEntPooling2D(2, lam="gfgp")(keras.layers.Conv2D(6, 1)(inputs))
# the other window geometries: adaptive sizes, then Keras' "same" (asymmetric here: 3 over 3)
a = nk.AdaptiveSoftPooling2D((3, None))(keras.layers.Conv2D(6, 1)(inputs))  # (3, 8, 6)
a = nk.SoftPooling2D(3, 2, padding="same")(a)               # (2, 4, 6)
# every global pool of the op table, as its Keras layer with its defaults, and in its 2D form
pools = [op.layer for op in ops_of("global")]
features = keras.layers.Concatenate()(
    [getattr(nk, name)()(h) for name in pools] +
    [getattr(nk, f"{keras_name(name)}2D")()(g) for name in pools] + [nk.GlobalAvgPool()(a)])
outputs = keras.layers.Dense(1)(features)
model = keras.Model(inputs, outputs)
teacher = rng.standard_normal((3,)).astype("float32")
targets = (x.mean((1, 2)) @ teacher)[:, None].astype("float32")
model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
history = model.fit(x, targets, epochs=30, batch_size=16, verbose=0, shuffle=False)
report["loss"] = {"pools": [float(v) for v in history.history["loss"]]}
models = {"pools": (model, x)}

# LOUPE's set layers (BatchNorm with masked statistics, gating) on the same backend
set_inputs = keras.Input((6, 5))
masked = keras.layers.Masking(0.0)(set_inputs)
options = dict(feature_size=5, max_samples=6, cluster_size=3, output_dim=4)
pooled = keras.layers.Concatenate()([
    nk.NetVLAD(**options)(masked), nk.NetRVLAD(**options, gating=False)(masked),
    nk.NetFV(**options, add_batch_norm=False)(masked), nk.SoftDBoW(**options)(masked)])
set_model = keras.Model(set_inputs, keras.layers.Dense(1)(pooled))
set_targets = sets.sum((1, 2))[:, None] / 6
set_model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
history = set_model.fit(sets, set_targets, epochs=30, batch_size=16, verbose=0, shuffle=False)
report["loss"]["sets"] = [float(v) for v in history.history["loss"]]
models["sets"] = (set_model, sets)

for kind, (trained, data) in models.items():
    trained.save(workdir / f"{backend}-{kind}.keras")
    np.save(workdir / f"{backend}-{kind}.npy",
            np.asarray(keras.ops.convert_to_numpy(trained(data, training=False))))
print(json.dumps(report))
