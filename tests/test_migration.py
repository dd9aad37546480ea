"""Coming from the originals (GFGP, WILDCAT, spatial-pooling.torch, SoftPool): each decision of
the migration guide (docs/migration.md), encoded. LOUPE's are in test_loupe_migration.py."""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import npool.torch as nt  # noqa: E402
from npool.torch import compat  # noqa: E402
from npool.testing import reference  # noqa: E402
from original_layouts import OriginalGFGP  # noqa: E402

ARANGE16 = torch.arange(16.0).reshape(1, 1, 4, 4)
KMAX = reference("global_kmax_pool")[0]


# ------------------------------------------------------------------ WELDON / WILDCAT counts
def test_kmin_defaults_to_kmax_as_both_originals_code():
    """Lua ``self.nMin = nMin or self.nMax`` and WILDCAT's ``kmin = kmax`` (Lua's README says
    1; the code, which trained the published models, says kmax)."""
    assert nt.WeldonPool(3)(ARANGE16).item() == 15.0  # (15+14+13)/3 + (0+1+2)/3
    assert compat.WeldonPooling(3)(ARANGE16).item() == 15.0
    assert nt.WeldonPool(3, kmin=1)(ARANGE16).item() == 14.0  # the README's kMin = 1
    assert compat.WildcatPool2d(3)(ARANGE16).item() == 7.5


def test_nonpositive_kmax():
    with pytest.raises(ValueError, match="kmax must be an int >= 1"):
        nt.WeldonPool(0)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        nt.GlobalKMaxPool(-1)
    assert nt.GlobalKMaxPool(1.0)(ARANGE16).item() == 7.5  # all cells: the fraction 1.0
    assert compat.GlobalkMaxPooling(0)(ARANGE16).item() == 7.5  # Lua: nMax <= 0 -> all
    assert compat.GlobalkMaxPooling(-2)(ARANGE16).item() == 7.5
    with pytest.raises(ValueError, match="selects no cell"):
        compat.WeldonPooling(0)(ARANGE16)  # Lua: nMax <= 0 -> 0 cells, 0/0
    with pytest.raises(ValueError, match="selects no cell"):
        compat.WildcatPool2d(0.01)(torch.randn(1, 1, 7, 7))  # round(0.49) = 0, 0/0


def test_fraction_rounding_floor_or_round():
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    floor = nt.GlobalKMaxPool(0.1)(x)
    rounded = nt.GlobalKMaxPool(0.1, rounding="round")(x)
    torch.testing.assert_close(floor, torch.tensor(KMAX(x.numpy(), 4)))
    torch.testing.assert_close(rounded, torch.tensor(KMAX(x.numpy(), 5)))
    torch.testing.assert_close(compat.WildcatPool2d(0.1, 0)(x), rounded)
    differ = 0
    for k, n in itertools.product([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75,
                                   0.9], [3, 5, 7, 9, 12, 14, 28]):
        maps = torch.randn(1, 1, 1, n, dtype=torch.float64)
        for rounding, count in (("floor", max(1, int(k * n + 1e-6))),
                                ("round", max(1, round(k * n)))):
            torch.testing.assert_close(
                nt.global_kmax_pool(maps, k, rounding=rounding),
                torch.tensor(KMAX(maps.numpy(), count)))
        differ += max(1, int(k * n + 1e-6)) != max(1, round(k * n))
    assert differ == 27  # the count docs/migration.md quotes
    assert round(2.5) == 2  # half to even, as WILDCAT's Python 3 round
    x10 = torch.randn(1, 1, 1, 10, dtype=torch.float64)
    torch.testing.assert_close(nt.global_kmax_pool(x10, 0.25, rounding="round"),
                               torch.tensor(KMAX(x10.numpy(), 2)))
    with pytest.raises(ValueError, match="rounding"):
        nt.GlobalKMaxPool(0.5, rounding="ceil")


def test_wildcat_halving_and_float_one():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(compat.WildcatPool2d(3, 2, 0.7)(x),
                               0.5 * nt.weldon_pool(x, 3, 2, 0.7))
    # kmin = 0 or the int alpha 0: the top mean, not halved (WILDCAT's `alpha is not 0` test)
    torch.testing.assert_close(compat.WildcatPool2d(3, 0)(x), nt.global_kmax_pool(x, 3))
    torch.testing.assert_close(compat.WildcatPool2d(3, 2, 0)(x), nt.global_kmax_pool(x, 3))
    torch.testing.assert_close(compat.WildcatPool2d(3, 2, 0.0)(x),
                               0.5 * nt.global_kmax_pool(x, 3))
    # npool: kmin = 0 drops the term, alpha = 0 gives 0 times it; nothing is halved
    torch.testing.assert_close(nt.weldon_pool(x, 3, 0), nt.global_kmax_pool(x, 3))
    # WILDCAT's float 1.0 is one cell; npool's is the fraction 1.0 (every cell)
    torch.testing.assert_close(compat.WildcatPool2d(1.0, 0)(x), nt.global_max_pool(x))
    torch.testing.assert_close(nt.global_kmax_pool(x, 1.0), nt.global_avg_pool(x))
    assert compat.WildcatPool2d(30)(x).shape == (2, 3)  # k > n: n, as WILDCAT


def test_overlapping_sets_sum_their_gradients():
    """kmax + kmin > n: a cell in both sets gets both terms (the Lua backward overwrote)."""
    x = torch.tensor([[[[3.0, 1.0], [2.0, 0.0]]]], dtype=torch.float64, requires_grad=True)
    compat.WeldonPooling(3, 3)(x).sum().backward()
    expected = np.array([1 / 3, 2 / 3, 2 / 3, 1 / 3]).reshape(1, 1, 2, 2)  # 1 and 2 in both
    np.testing.assert_allclose(x.grad.numpy(), expected)
    assert torch.autograd.gradcheck(lambda t: compat.WildcatPool2d(0.75, 0.75, 0.6)(t),
                                    torch.randn(2, 2, 3, 3, dtype=torch.float64,
                                                requires_grad=True))


def test_lua_modules_shapes_and_values():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    cases = [(compat.GlobalMaxPooling(), x.amax((2, 3))), (compat.GlobalAveragePooling(),
                                                           x.mean((2, 3))),
             (compat.LogSumExpPooling(2.5), torch.log(torch.exp(2.5 * x).mean((2, 3))) / 2.5),
             (compat.GlobalkMaxPooling(3), x.flatten(2).topk(3).values.mean(-1)),
             (compat.WeldonPooling(2, 1), x.flatten(2).topk(2).values.mean(-1) + x.amin((2, 3)))]
    for module, expected in cases:
        torch.testing.assert_close(module(x), expected[..., None, None])
        torch.testing.assert_close(module(x[0]), expected[0][..., None, None])  # (C, 1, 1)
        with pytest.raises(ValueError, match="takes"):
            module(x[0, 0])
    g = torch.zeros(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        g += torch.linspace(-30, 0, 9, dtype=torch.float64).reshape(1, 1, 3, 3)
    compat.LogSumExpPooling(1)(g).sum().backward()
    assert (g.grad > 0).all() and g.grad.min() < 1e-10  # no thresholding


# ------------------------------------------------------------------ explicit spatial rank
RANKED = [(nt.GlobalMaxPool2d, torch.nn.AdaptiveMaxPool2d(1)),
          (nt.GlobalAvgPool2d, torch.nn.AdaptiveAvgPool2d(1)),
          (nt.GlobalMaxPool1d, torch.nn.AdaptiveMaxPool1d(1)),
          (nt.GlobalAvgPool3d, torch.nn.AdaptiveAvgPool3d(1))]


@pytest.mark.parametrize("cls, torch_pool", RANKED, ids=lambda c: getattr(c, "__name__", ""))
def test_ranked_modules_take_batched_and_unbatched_like_adaptive_pools(cls, torch_pool):
    nd = cls.spatial_dims
    for shape in ((2, 3) + (4,) * nd, (3,) + (4,) * nd):  # batched and unbatched
        x = torch.randn(shape, dtype=torch.float64)
        expected = torch_pool(x)
        torch.testing.assert_close(cls(keepdims=True)(x), expected)
        torch.testing.assert_close(cls()(x), expected.reshape(shape[:-nd]))
    with pytest.raises(ValueError, match=f"spatial_dims={nd}"):
        cls()(torch.randn((2, 3) + (4,) * (nd + 1)))


def test_rank_free_pools_keep_reading_n_c_spatial():
    x = torch.randn(3, 8, 8)
    assert nt.GlobalMaxPool()(x).shape == (3, 8)  # (N, C, L), as documented
    assert nt.GlobalMaxPool(spatial_dims=2)(x).shape == (3,)
    assert nt.global_max_pool(x, spatial_dims=2).shape == (3,)
    y, index = nt.global_max_pool(x, return_indices=True, spatial_dims=2)
    assert y.shape == (3,) and index.shape == (3,)
    for name in ("GlobalMaxPool", "GlobalAvgPool", "GlobalLSEPool", "GlobalKMaxPool",
                 "WeldonPool"):
        for nd in (1, 2, 3):
            module = getattr(nt, f"{name}{nd}d")()
            assert module(torch.randn((3,) + (2,) * nd)).shape == (3,)
            assert module(torch.randn((2, 3) + (2,) * nd)).shape == (2, 3)
    torch.testing.assert_close(nt.GlobalKMaxPool2d(2)(x), nt.global_kmax_pool(x[None], 2)[0])
    with pytest.raises(ValueError, match="contradicts"):
        nt.WeldonPool2d(spatial_dims=3)
    with pytest.raises(ValueError, match="spatial_dims must be"):
        nt.global_avg_pool(x, spatial_dims=0)


def test_keras_ranked_layers_match_keras():
    tf = pytest.importorskip("tensorflow")
    import keras
    import npool.tf as ntf
    x = np.random.default_rng(0).standard_normal((2, 5, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(ntf.GlobalMaxPooling2D()(x), keras.layers.GlobalMaxPooling2D()(x))
    np.testing.assert_allclose(ntf.GlobalAveragePooling2D(keepdims=True)(x),
                               keras.layers.GlobalAveragePooling2D(keepdims=True)(x), rtol=1e-6)
    np.testing.assert_allclose(ntf.GlobalMaxPooling1D()(x[:, 0]),
                               keras.layers.GlobalMaxPooling1D()(x[:, 0]))
    with pytest.raises(ValueError, match="2 spatial axes"):
        ntf.GlobalMaxPooling2D()(x[:, 0])
    np.testing.assert_allclose(ntf.global_kmax_pool(x, 0.1, rounding="round", spatial_dims=2),
                               ntf.global_kmax_pool(x, 2))  # round(0.1 * 20) = 2
    np.testing.assert_allclose(ntf.WeldonPooling2D(0.1, rounding="round")(x),
                               ntf.weldon_pool(x, 2, 2))
    assert isinstance(tf.constant(0), tf.Tensor)


# ------------------------------------------------------------------ GFGP
def test_gfgp_call_and_checkpoint_load():
    torch.manual_seed(0)
    original = OriginalGFGP(8, 3, 2, 1, False, "softplus", 3)
    with torch.no_grad():  # trained-looking BatchNorm statistics
        for _ in range(3):
            original.ToParam(torch.randn(4, 8, 9, 9) * 2 + 1)
    original.eval()
    state = original.state_dict()
    assert "ToParam.2.running_mean" in state
    ported = compat.MaxEntPoolingCuda2d(8, 3, 2, 1, False, "softplus", 3).eval()  # positional
    assert ported.load_state_dict(state).missing_keys == []
    assert list(ported.state_dict()) == list(state)  # saves the original's keys back
    native = nt.MaxEntPool2d(8, 3, 2, 1, False, hidden=3, activation="softplus").eval()
    native.load_state_dict(state)  # npool's own class loads ToParam.* too
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    ported.double(), native.double(), original.double()
    with torch.no_grad():
        lam = original.activation(original.ToParam(x))
        expected = reference("maxent_pool2d")[0](x.numpy(), lam.numpy(), 3, 2, 1, False)
        torch.testing.assert_close(ported.temperature(x), lam)
        np.testing.assert_allclose(ported(x).numpy(), expected, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(native(x).numpy(), expected, rtol=1e-10, atol=1e-15)
    assert ported.load_state_dict(native.state_dict()).unexpected_keys == []
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), OriginalGFGP(8, 2))
    nested = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), nt.MaxEntPool2d(8, 2))
    nested.load_state_dict(model.state_dict())  # a whole model's keys: 1.ToParam.* -> 1.branch.*
    assert nt.MaxEntPool2d(8, 2, None, 0, False, "channel").mode == "channel"  # npool's 6th: lam


# ------------------------------------------------------------------ SoftPool
def test_softpool_original_calls():
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(compat.soft_pool2d(x), nt.soft_pool2d(x, 2))  # kernel 2 default
    torch.testing.assert_close(compat.soft_pool2d(x, kernel_size=2, stride=None,
                                                  force_inplace=True), nt.soft_pool2d(x, 2))
    assert compat.SoftPool2d(3, 2)(x).shape == (2, 3, 15, 15)  # (32 - 3) // 2 + 1
    assert compat.SoftPool1d()(x[:, :, 0]).shape == (2, 3, 16)
    assert compat.SoftPool3d(kernel_size=(1, 2, 2))(x[:, :, None]).shape == (2, 3, 1, 16, 16)
    with pytest.raises(TypeError, match="force_inplace"):
        compat.SoftPool2d(force_inplace="yes")
    negative = -torch.rand(1, 2, 4, 4, dtype=torch.float64) - 1
    out = compat.soft_pool2d(negative)
    assert (out < 0).all()  # no clamp at 0 (the original's CPU path clamped)
    np.testing.assert_allclose(out.numpy(), reference("soft_pool2d")[0](negative.numpy(), 2))
