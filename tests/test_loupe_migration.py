"""Coming from LOUPE: the layers' BatchNorm defaults and ``is_training``, and LOUPE's trained
weights loaded from a TensorFlow 1 checkpoint (written here with TF's v1 API, as LOUPE's
``tf.get_variable``s and slim BatchNorms are) giving LOUPE's outputs, gradients and moving
statistics in both adapters."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")

import npool.tf as ntf  # noqa: E402
import npool.torch as nt  # noqa: E402
import loupe_tf1  # noqa: E402

B, M, D, K, OUT = 3, 5, 6, 4, 7
CASES = [("NetVLAD", True, True), ("NetRVLAD", True, True), ("NetFV", True, True),
         ("SoftDBoW", True, True), ("NetVLAD", False, False), ("NetFV", True, False)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-gating{c[1]}-bn{c[2]}")
def loupe(request, tmp_path_factory):
    kind, gating, bn = request.param
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, M, D)).astype(np.float32)
    grad = rng.standard_normal((B, OUT)).astype(np.float32)
    path = str(tmp_path_factory.mktemp(kind) / "model.ckpt")
    expected = loupe_tf1.run(path, kind, x, grad, OUT, K, gating, bn)
    return kind, gating, bn, path, x, grad, expected


def close(actual, expected, rtol=2e-5, atol=2e-6):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol)


def test_torch_layer_from_checkpoint_matches_loupe(loupe):
    kind, gating, bn, path, x, grad, expected = loupe
    layer = nt.load_loupe_checkpoint(path, max_samples=M)
    assert type(layer).__name__ == kind and (layer.gating, layer.add_batch_norm) == (gating, bn)
    xt = torch.tensor(x.reshape(B * M, D))  # LOUPE's (B * M, D) input
    with torch.no_grad():
        close(layer.eval()(xt), expected["inference"])
    xt.requires_grad_(True)
    out = layer.train()(xt)
    close(out.detach(), expected["training"])
    (out * torch.tensor(grad)).sum().backward()
    close(xt.grad.reshape(B, M, D), expected["grad_x"], atol=2e-5)
    if bn:
        for bn_name, module in (("cluster_bn", layer.cluster_bn),
                                ("gating_bn", getattr(layer, "context_gating", None))):
            if module is None:
                continue
            module = getattr(module, "gating_bn", module)
            close(module.running_mean, expected["moving"][f"{bn_name}/moving_mean"])
            close(module.running_var, expected["moving"][f"{bn_name}/moving_variance"])


def test_keras_layer_from_checkpoint_matches_loupe(loupe):
    kind, gating, bn, path, x, grad, expected = loupe
    layer = ntf.load_loupe_checkpoint(path, max_samples=M)
    assert type(layer).__name__ == kind
    xt = tf.constant(x.reshape(B * M, D))
    close(layer(xt, training=False), expected["inference"])
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = layer(xt, training=True)
        loss = tf.reduce_sum(out * grad)
    close(out, expected["training"])
    close(tf.reshape(tape.gradient(loss, xt), (B, M, D)), expected["grad_x"], atol=2e-5)
    if bn:
        close(layer.cluster_bn.moving_mean, expected["moving"]["cluster_bn/moving_mean"])
        close(layer.cluster_bn.moving_variance,
              expected["moving"]["cluster_bn/moving_variance"])
        if gating:
            close(layer.context_gating.gating_bn.moving_variance,
                  expected["moving"]["gating_bn/moving_variance"])


def test_loupe_call_runs_unchanged(loupe):
    """LOUPE's constructor (with is_training) and its ``forward(reshaped_input)``."""
    kind, gating, bn, path, x, grad, expected = loupe
    for adapter in (nt, ntf):
        block = getattr(adapter, kind)(feature_size=D, max_samples=M, cluster_size=K,
                                       output_dim=OUT, gating=gating, add_batch_norm=bn,
                                       is_training=False)
        adapter.load_loupe_checkpoint(path, block)
        out = block.forward(tf.constant(x.reshape(B * M, D)) if adapter is ntf
                            else torch.tensor(x.reshape(B * M, D)))
        close(out.detach() if adapter is nt else out, expected["inference"])


def test_default_batch_norm_is_loupes():
    layer = nt.NetVLAD(D, M, K, OUT)
    assert (layer.cluster_bn.eps, layer.cluster_bn.momentum) == (1e-3, 0.001)
    assert (layer.context_gating.gating_bn.eps, layer.context_gating.gating_bn.momentum) == \
        (1e-3, 0.001)
    custom = nt.NetFV(D, M, K, OUT, bn_epsilon=1e-5, bn_momentum=0.1)
    assert (custom.cluster_bn.eps, custom.context_gating.gating_bn.momentum) == (1e-5, 0.1)
    keras_layer = ntf.SoftDBoW(D, M, K, OUT)
    assert (keras_layer.cluster_bn.epsilon, keras_layer.cluster_bn.momentum) == (1e-3, 0.999)
    assert ntf.NetVLAD.from_config(ntf.NetVLAD(D, M, K, OUT, bn_momentum=0.9,
                                               is_training=True).get_config()).bn_momentum == 0.9
    for adapter in (nt, ntf):
        with pytest.raises(ValueError, match="bn_epsilon"):
            adapter.NetVLAD(D, M, K, OUT, bn_epsilon=0)
        with pytest.raises(ValueError, match="bn_momentum"):
            adapter.ContextGating(OUT, bn_momentum=1.5)
        with pytest.raises(TypeError, match="is_training"):
            adapter.NetRVLAD(D, M, K, OUT, is_training="yes")


def test_is_training_sets_the_mode():
    assert not nt.NetVLAD(D, M, K, OUT, is_training=False).training
    assert not nt.NetVLAD(D, M, K, OUT, is_training=False).context_gating.training
    assert nt.NetVLAD(D, M, K, OUT, is_training=True).training
    layer = ntf.NetRVLAD(D, M, K, OUT, is_training=True)
    x = np.random.default_rng(0).standard_normal((2, M, D)).astype(np.float32)
    layer.build()
    before = layer.cluster_bn.moving_mean.numpy().copy()
    layer(x)  # training unsaid: LOUPE's is_training=True
    assert not np.array_equal(before, layer.cluster_bn.moving_mean.numpy())
    before = layer.cluster_bn.moving_mean.numpy().copy()
    layer(x, training=False)  # an explicit training wins
    np.testing.assert_array_equal(before, layer.cluster_bn.moving_mean.numpy())


def test_checkpoint_errors(loupe, tmp_path):
    kind, gating, bn, path, x, grad, expected = loupe
    other = "NetRVLAD" if kind != "NetRVLAD" else "NetVLAD"
    for adapter in (nt, ntf):
        with pytest.raises(ValueError, match="max_samples"):
            adapter.load_loupe_checkpoint(path)
        with pytest.raises(ValueError, match=f"is a {kind}"):
            adapter.load_loupe_checkpoint(path, getattr(adapter, other)(D, M, K, OUT, gating,
                                                                        bn))
        with pytest.raises(ValueError, match="cluster_size=5"):
            adapter.load_loupe_checkpoint(path, getattr(adapter, kind)(D, M, 5, OUT, gating, bn))
        with pytest.raises(ValueError, match="scope 'tower'"):
            adapter.load_loupe_checkpoint(path, scope="tower", max_samples=M)
        with pytest.raises(ValueError, match="not a readable"):
            adapter.load_loupe_checkpoint(str(tmp_path / "missing"), max_samples=M)
        with pytest.raises(TypeError, match="layer"):
            adapter.load_loupe_checkpoint(path, object())
        assert adapter.load_loupe_checkpoint(path, scope="video_VLAD/", max_samples=M)


def test_context_gating_alone_and_several_blocks(tmp_path):
    """Two blocks in one checkpoint need scope=; a ContextGating fills from gating_*;
    optimizer slots are ignored."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, M, D)).astype(np.float32)
    path = str(tmp_path / "two.ckpt")
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        x_in = v1.placeholder(tf.float32, [None, D])
        outputs = {}
        for scope, kind in (("video_VLAD", "NetVLAD"), ("audio_FV", "NetFV")):
            with v1.variable_scope(scope):
                outputs[scope] = loupe_tf1.build(kind, x_in, D, M, K, OUT, True, True, False, [])
        loss = tf.add_n([tf.reduce_sum(y) for y in outputs.values()])
        step = v1.train.AdamOptimizer().minimize(loss)  # slots: .../cluster_weights/Adam ...
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            session.run(step, {x_in: x.reshape(B * M, D)})
            v1.train.Saver().save(session, path)
            results = session.run(outputs, {x_in: x.reshape(B * M, D)})
    for adapter in (nt, ntf):
        with pytest.raises(ValueError, match="2 LOUPE blocks.*audio_FV.*video_VLAD"):
            adapter.load_loupe_checkpoint(path, max_samples=M)
        layer = adapter.load_loupe_checkpoint(path, scope="audio_FV", max_samples=M)
        if adapter is nt:
            with torch.no_grad():
                close(layer.eval()(torch.tensor(x)), results["audio_FV"])
        else:
            close(layer(x, training=False), results["audio_FV"])
        gate = adapter.load_loupe_checkpoint(path, adapter.ContextGating(OUT),
                                             scope="video_VLAD")
        weights = gate.gating_weights.detach() if adapter is nt else gate.gating_weights
        np.testing.assert_array_equal(
            np.asarray(weights), tf.train.load_checkpoint(path).get_tensor(
                "video_VLAD/gating_weights"))
        with pytest.raises(ValueError, match="add_batch_norm=False"):
            adapter.load_loupe_checkpoint(path, adapter.ContextGating(OUT, False),
                                          scope="video_VLAD")


def test_keras_model_with_loupe_options_saves_and_loads(tmp_path):
    keras = pytest.importorskip("keras")
    layer = ntf.NetFV(D, M, K, OUT, is_training=False, bn_epsilon=1e-4, bn_momentum=0.9)
    model = keras.Sequential([keras.Input((M, D)), layer])
    x = np.random.default_rng(3).standard_normal((2, M, D)).astype(np.float32)
    expected = model(x)
    model.save(tmp_path / "netfv.keras")
    loaded = keras.saving.load_model(tmp_path / "netfv.keras")
    np.testing.assert_allclose(loaded(x), expected, rtol=1e-6)
    restored = loaded.layers[0]
    assert (restored.is_training, restored.bn_epsilon, restored.bn_momentum) == (False, 1e-4, 0.9)
    assert restored.cluster_bn.momentum == 0.9
