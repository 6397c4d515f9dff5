"""Sparse convolutions (vae.sparse) against dense conv3d / conv_transpose3d, and spconv against
the pure-torch twin (one thread on CPU; spconv's CPU kernels are wrong with more)."""

import pytest
import torch
import torch.nn.functional as F

from earthgen.errors import UserInputError
from vae.sparse import (
    SparseDownsample,
    SparseResBlock,
    SparseTensor,
    SparseUpsample,
    SubMConv3d,
    spconv_available,
)


def random_sparse(shape=(8, 6, 10), batch=2, channels=3, density=0.3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(batch, *shape, generator=g) < density
    coords = occ.nonzero().int()
    feats = torch.randn(len(coords), channels, generator=g, dtype=dtype)
    return SparseTensor.from_coords(coords, feats, shape, batch)


def dense_weight(layer):  # [C_out, k, k, k, C_in] -> conv3d's [C_out, C_in, k, k, k]
    return layer.weight.permute(0, 4, 1, 2, 3)


def at(dense, coords):  # [B, C, X, Y, Z] at coords [N, 4] -> [N, C]
    c = coords.long()
    return dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def test_subm_matches_dense_conv3d():
    x = random_sparse()
    conv = SubMConv3d(3, 5, 3, backend="torch")
    y = conv(x)
    ref = F.conv3d(x.dense(), dense_weight(conv), conv.bias, padding=1)
    assert torch.equal(y.coords, x.coords)
    torch.testing.assert_close(y.feats, at(ref, x.coords), rtol=1e-5, atol=1e-5)


def test_subm_kernel_5_matches_dense():
    x = random_sparse(shape=(7, 7, 7), batch=1, density=0.2, seed=3)
    conv = SubMConv3d(3, 2, 5, backend="torch")
    ref = F.conv3d(x.dense(), dense_weight(conv), conv.bias, padding=2)
    torch.testing.assert_close(conv(x).feats, at(ref, x.coords), rtol=1e-5, atol=1e-5)


def test_downsample_matches_strided_dense_conv():
    x = random_sparse()
    down = SparseDownsample(3, 4, backend="torch")
    y = down(x)
    assert y.spatial_shape == (4, 3, 5)
    ref = F.conv3d(x.dense(), dense_weight(down), down.bias, stride=2)
    active = F.max_pool3d((x.dense().abs().sum(1, keepdim=True) > 0).float(), 2)[:, 0] > 0
    assert len(y) == int(active.sum())  # a coarse voxel is active iff a child is
    torch.testing.assert_close(y.feats, at(ref, y.coords), rtol=1e-5, atol=1e-5)


def test_upsample_matches_dense_transpose_conv():
    x = random_sparse(shape=(4, 3, 5))
    up = SparseUpsample(3, 2, backend="torch")
    y = up(x)
    assert len(y) == 8 * len(x) and y.spatial_shape == (8, 6, 10)
    ref = F.conv_transpose3d(x.dense(), up.weight.permute(4, 0, 1, 2, 3), up.bias, stride=2)
    torch.testing.assert_close(y.feats, at(ref, y.coords), rtol=1e-5, atol=1e-5)
    parents = y.coords.clone()
    parents[:, 1:] //= 2
    assert torch.equal(parents, x.coords.repeat_interleave(8, 0))  # parent-major order


def test_torch_backend_gradients_by_finite_differences():
    x = random_sparse(shape=(4, 4, 4), batch=1, channels=2, density=0.4, dtype=torch.float64)
    for layer in (
        SubMConv3d(2, 2, 3, backend="torch"),
        SparseDownsample(2, 2, backend="torch"),
        SparseUpsample(2, 2, backend="torch"),
    ):
        layer = layer.double()
        w0 = layer.weight.detach().clone()

        def f(feats, weight, layer=layer):
            saved = layer._parameters.pop("weight")
            layer.weight = weight  # a plain tensor, so gradcheck sees the weight's effect
            try:
                return layer(x.replace(feats)).feats
            finally:
                del layer.weight
                layer.weight = saved

        feats = x.feats.clone().requires_grad_()
        assert torch.autograd.gradcheck(
            f, (feats, w0.clone().requires_grad_()), eps=1e-6, atol=1e-6
        )


def test_resblock_is_identity_at_init_and_batch_independent():
    x = random_sparse(channels=4)
    block = SparseResBlock(4, backend="torch")
    torch.testing.assert_close(block(x).feats, x.feats)  # zero-initialised second conv
    torch.nn.init.normal_(block.conv2.weight, std=0.1)
    y = block(x)
    one = x.select(x.coords[:, 0] == 1)
    torch.testing.assert_close(block(one).feats, y.feats[x.coords[:, 0] == 1], rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_user_errors():
    with pytest.raises(UserInputError):
        SparseTensor.from_coords(torch.tensor([[0, 9, 0, 0]]), None, (8, 8, 8))
    with pytest.raises(UserInputError):
        SparseTensor.from_coords(torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]]), None, (8, 8, 8))
    with pytest.raises(UserInputError):
        SubMConv3d(1, 1, 2)
    with pytest.raises(UserInputError):
        SubMConv3d(1, 1, 3, backend="cuda-magic")


needs_spconv = pytest.mark.skipif(
    not spconv_available(), reason="spconv not installed (pip install 'earthgen[sparse]')"
)


@needs_spconv
@pytest.mark.parametrize("layer", ["subm", "down", "up"])
def test_spconv_backend_matches_torch_twin(layer):
    # big enough that spconv's CPU kernels go wrong with two threads (measured): the layer's
    # one-thread guard must cover forward and backward
    x = random_sparse(shape=(32, 32, 24), channels=8, seed=7, density=0.2)
    make = {
        "subm": lambda: SubMConv3d(8, 8, 3),
        "down": lambda: SparseDownsample(8, 8),
        "up": lambda: SparseUpsample(8, 8),
    }[layer]
    torch.manual_seed(0)
    ref_layer = make()
    ref_layer.backend = "torch"
    sp_layer = make()
    sp_layer.load_state_dict(ref_layer.state_dict())
    sp_layer.backend = "spconv"
    fa = x.feats.clone().requires_grad_()
    fb = x.feats.clone().requires_grad_()
    threads = torch.get_num_threads()
    a = ref_layer(x.replace(fa)).sorted()
    b = sp_layer(SparseTensor(x.coords, fb, x.spatial_shape, x.batch_size)).sorted()
    assert torch.get_num_threads() == threads  # the one-thread guard restores the setting
    assert torch.equal(a.coords, b.coords)
    torch.testing.assert_close(b.feats, a.feats, rtol=1e-4, atol=1e-5)
    w = torch.randn(a.feats.shape, generator=torch.Generator().manual_seed(1))
    torch.set_num_threads(max(threads, 2))
    try:
        (a.feats * w).sum().backward()
        (b.feats * w).sum().backward()
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(fb.grad, fa.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sp_layer.weight.grad, ref_layer.weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("layer", ["subm", "down", "up"])
def test_cuda_spconv_matches_torch_twin(layer):
    """On a GPU: spconv's CUDA kernels (spconv-cuXXX or spconv-triton) against the torch twin."""
    if not spconv_available():
        pytest.skip("spconv not installed")
    x = random_sparse(shape=(32, 32, 24), channels=8, seed=7, density=0.2)
    x = SparseTensor(x.coords.cuda(), x.feats.cuda(), x.spatial_shape, x.batch_size)
    make = {
        "subm": lambda: SubMConv3d(8, 8, 3),
        "down": lambda: SparseDownsample(8, 8),
        "up": lambda: SparseUpsample(8, 8),
    }[layer]
    torch.manual_seed(0)
    ref_layer = make().cuda()
    ref_layer.backend = "torch"
    sp_layer = make().cuda()
    sp_layer.load_state_dict(ref_layer.state_dict())
    sp_layer.backend = "spconv"
    fa, fb = x.feats.clone().requires_grad_(), x.feats.clone().requires_grad_()
    a = ref_layer(x.replace(fa)).sorted()
    b = sp_layer(SparseTensor(x.coords, fb, x.spatial_shape, x.batch_size)).sorted()
    assert torch.equal(a.coords, b.coords)
    torch.testing.assert_close(b.feats, a.feats, rtol=1e-3, atol=1e-3)  # TF32 on the GPU
    w = torch.randn_like(a.feats)
    (a.feats * w).sum().backward()
    (b.feats * w).sum().backward()
    torch.testing.assert_close(fb.grad, fa.grad, rtol=1e-3, atol=1e-3)


@needs_spconv
def test_spconv_neighbour_pairs_are_built_once_per_voxel_set(monkeypatch):
    import spconv.pytorch.ops as ops

    calls = []
    for name in ("get_indice_pairs", "get_indice_pairs_implicit_gemm"):
        if hasattr(ops, name):
            f = getattr(ops, name)
            monkeypatch.setattr(ops, name, lambda *a, _f=f, **k: calls.append(1) or _f(*a, **k))
    x = random_sparse(shape=(8, 8, 8), channels=4, seed=2)
    blocks = torch.nn.Sequential(
        SparseResBlock(4, backend="spconv"), SparseResBlock(4, backend="spconv")
    )
    h = x
    for b in blocks:
        h = b(h)
    assert len(calls) == 1  # four submanifold convolutions, one pair search
