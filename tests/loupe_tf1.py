"""A LOUPE block written with TensorFlow's v1 API, as LOUPE builds it: ``tf.get_variable``s
with LOUPE's names under a variable scope, slim's BatchNorm (the fused kernel, epsilon 1e-3,
decay 0.999, moving averages updated from the unbiased batch variance) and LOUPE's formulas
(Miech et al. 2017). The tests save it with ``tf.compat.v1.train.Saver`` and check npool's
layers, loaded from that checkpoint, against its outputs, gradients and moving statistics."""
import math

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1
EPSILON, DECAY = 1e-3, 0.999


def _normal(std, mean=0.0):
    return v1.random_normal_initializer(mean=mean, stddev=std)


def _batch_norm(t, name, training, updates):
    """slim.batch_norm(t, center=True, scale=True, is_training=training) on (N, C)."""
    c = t.shape[-1]
    with v1.variable_scope(name):
        beta = v1.get_variable("beta", [c], initializer=v1.zeros_initializer())
        gamma = v1.get_variable("gamma", [c], initializer=v1.ones_initializer())
        mean = v1.get_variable("moving_mean", [c], initializer=v1.zeros_initializer(),
                               trainable=False)
        var = v1.get_variable("moving_variance", [c], initializer=v1.ones_initializer(),
                              trainable=False)
    t4 = tf.reshape(t, [-1, 1, 1, c])
    if training:
        y, batch_mean, batch_var = v1.nn.fused_batch_norm(t4, gamma, beta, epsilon=EPSILON,
                                                          is_training=True)
        updates += [v1.assign_sub(mean, (mean - batch_mean) * (1 - DECAY)),
                    v1.assign_sub(var, (var - batch_var) * (1 - DECAY))]
    else:
        y, _, _ = v1.nn.fused_batch_norm(t4, gamma, beta, mean=mean, variance=var,
                                         epsilon=EPSILON, is_training=False)
    return tf.reshape(y, [-1, c])


def build(kind, x, d, m, k, out, gating, add_batch_norm, training, updates):
    """LOUPE's ``forward(reshaped_input)`` for ``x`` (B*M, D); appends the BatchNorm update
    ops to ``updates``. Call inside the block's variable scope."""
    w = v1.get_variable("cluster_weights", [d, k], initializer=_normal(1 / math.sqrt(d)))
    logits = tf.matmul(x, w)
    if add_batch_norm:
        logits = _batch_norm(logits, "cluster_bn", training, updates)
    else:
        logits += v1.get_variable("cluster_biases", [k], initializer=_normal(1 / math.sqrt(d)))
    a = tf.reshape(tf.nn.softmax(logits), [-1, m, k])
    a_sum = tf.reduce_sum(a, 1, keepdims=True)                       # (B, 1, K)
    xs = tf.reshape(x, [-1, m, d])
    first = tf.einsum("bmk,bmd->bdk", a, xs)                         # (B, D, K)

    def flat_l2n(v):
        return tf.nn.l2_normalize(tf.reshape(v, [-1, d * k]), 1)

    if kind == "SoftDBoW":
        pooled = tf.nn.l2_normalize(tf.reduce_sum(a, 1), 1)
    elif kind in ("NetVLAD", "NetRVLAD"):
        if kind == "NetVLAD":
            c = v1.get_variable("cluster_weights2", [1, d, k],
                                initializer=_normal(1 / math.sqrt(d)))
            first = first - a_sum * c
        pooled = flat_l2n(tf.nn.l2_normalize(first, 1))
    else:  # NetFV
        covar = v1.get_variable("covar_weights", [d, k],
                                initializer=_normal(1 / math.sqrt(d), 1.0))
        sigma = tf.square(covar) + 1e-6
        mu = v1.get_variable("cluster_weights2", [1, d, k], initializer=_normal(1 / math.sqrt(d)))
        second = tf.einsum("bmk,bmd->bdk", a, tf.square(xs))
        f2 = (second - 2 * mu * first + a_sum * tf.square(mu)) / tf.square(sigma) - a_sum
        f1 = tf.nn.l2_normalize((first - a_sum * mu) / sigma, 1)
        pooled = tf.concat([flat_l2n(f1), flat_l2n(f2)], 1)
    hidden = v1.get_variable("hidden1_weights", [pooled.shape[1], out],
                             initializer=_normal(1 / math.sqrt(k)))
    y = tf.matmul(pooled, hidden)
    if gating:
        gw = v1.get_variable("gating_weights", [out, out], initializer=_normal(1 / math.sqrt(out)))
        gates = tf.matmul(y, gw)
        if add_batch_norm:
            gates = _batch_norm(gates, "gating_bn", training, updates)
        else:
            gates += v1.get_variable("gating_biases", [out],
                                     initializer=_normal(1 / math.sqrt(out)))
        y = y * tf.sigmoid(gates)
    return y


def run(path, kind, x, grad, out, k, gating=True, add_batch_norm=True, scope="video_VLAD",
        seed=0):
    """Builds the block on ``x`` (B, M, D), gives its BatchNorms random statistics, saves the
    checkpoint at ``path`` and returns {inference, training, grad_x, moving}: the outputs in
    both modes, d(sum(training * grad))/dx and the moving statistics after one training step."""
    b, m, d = x.shape
    rng = np.random.default_rng(seed)
    with tf.Graph().as_default():
        v1.set_random_seed(seed)
        x_in = v1.placeholder(tf.float32, [None, d])
        updates = []
        with v1.variable_scope(scope, reuse=v1.AUTO_REUSE):
            train_y = build(kind, x_in, d, m, k, out, gating, add_batch_norm, True, updates)
            infer_y = build(kind, x_in, d, m, k, out, gating, add_batch_norm, False, [])
        grad_x = tf.gradients(tf.reduce_sum(train_y * grad), x_in)[0]
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            for variable in v1.global_variables():
                name = variable.op.name
                if name.endswith(("gamma", "moving_variance")):
                    value = rng.uniform(0.5, 1.5, variable.shape)
                elif name.endswith(("beta", "moving_mean")):
                    value = rng.normal(0, 0.5, variable.shape)
                else:
                    continue
                session.run(v1.assign(variable, value.astype(np.float32)))
            v1.train.Saver().save(session, path)
            feed = {x_in: x.reshape(b * m, d)}
            inference = session.run(infer_y, feed)
            training, gx = session.run([train_y, grad_x], feed)
            session.run(updates, feed)
            moving = {v.op.name[len(scope) + 1:]: session.run(v) for v in v1.global_variables()
                      if "moving_" in v.op.name}
    return {"inference": inference, "training": training, "grad_x": gx.reshape(x.shape),
            "moving": moving}
