"""Feature and relationship reuse: the resampling operator and the logits handed between exits."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from dvt.models import cpu_paths, create_model, native, reuse
from dvt.models.reuse import (
    FeatureReuse,
    RelationReuse,
    axis_matrix,
    reference_reuse,
    resample_grid,
    resample_relations,
    resample_tokens,
    reuse_matrix,
    upsample_size,
)


def recipe(x: torch.Tensor, up: int, size: int) -> torch.Tensor:
    """The official code's explicit steps (spec §2): nearest to up x up, adaptive average to size."""
    return F.adaptive_avg_pool2d(F.interpolate(x, size=(up, up), mode="nearest"), (size, size))


def test_upsample_rule_gives_the_paper_sizes():
    assert upsample_size(7, 10) == 14 and upsample_size(10, 14) == 20
    assert upsample_size(7, 14) == 14 and upsample_size(4, 7) == 8


@pytest.mark.parametrize("src,dst,up", [(7, 10, 14), (10, 14, 20)])
def test_resample_grid_is_the_paper_recipe(src, dst, up):
    x = torch.randn(3, 5, src, src, dtype=torch.float64)
    torch.testing.assert_close(resample_grid(x, dst), recipe(x, up, dst), rtol=0, atol=0)


def test_integer_ratio_is_plain_nearest_upsampling():
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(resample_grid(x, 14), x.repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_resample_tokens_zero_cls():
    t = torch.randn(2, 1 + 49, 6, dtype=torch.float64)
    out = resample_tokens(t, src=7, dst=10)
    assert out.shape == (2, 101, 6) and (out[:, 0] == 0).all()
    grid = t[:, 1:].transpose(1, 2).reshape(2, 6, 7, 7)
    torch.testing.assert_close(out[:, 1:], recipe(grid, 14, 10).flatten(2).transpose(1, 2), rtol=0, atol=0)


def slow_relations(rel: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    """One 2-D map at a time: the cls-cls entry copied, the cls row resampled along keys only, the cls
    column along queries only, patch-patch along keys, then along queries."""
    def R(v: torch.Tensor) -> torch.Tensor:  # (src*src,) -> (dst*dst,)
        return resample_grid(v.reshape(1, 1, src, src), dst).reshape(-1)

    B, C, n_u, _ = rel.shape
    out = torch.zeros(B, C, dst * dst + 1, dst * dst + 1, dtype=rel.dtype)
    for b in range(B):
        for c in range(C):
            m = rel[b, c]
            out[b, c, 0, 0] = m[0, 0]
            out[b, c, 0, 1:] = R(m[0, 1:])
            out[b, c, 1:, 0] = R(m[1:, 0])
            along_keys = torch.stack([R(m[i, 1:]) for i in range(1, n_u)])  # (src^2, dst^2)
            for j in range(dst * dst):
                out[b, c, 1:, 1 + j] = R(along_keys[:, j])
    return out


@pytest.mark.parametrize("src,dst", [(7, 10), (10, 14), (3, 5)])
def test_resample_relations_against_slow_loop(src, dst):
    rel = torch.randn(2, 3, src * src + 1, src * src + 1, dtype=torch.float64)
    torch.testing.assert_close(resample_relations(rel, src=src, dst=dst), slow_relations(rel, src, dst))


# The paper's pairs, an integer ratio, the default Fashion-MNIST cascade's pairs, the identity and one
# random pair (seeded).
_rng = random.Random(0)
_src = _rng.randint(2, 9)
PAIRS = [(7, 10), (10, 14), (7, 14), (3, 5), (5, 7), (6, 6), (_src, _rng.randint(_src + 1, 16))]


@pytest.mark.parametrize("src,dst", PAIRS)
def test_matrix_is_the_reference_on_tokens(src, dst):
    tokens = torch.randn(3, src * src + 1, 5, dtype=torch.float64)
    A = reuse_matrix(src=src, dst=dst, keep_cls=False, dtype=torch.float64)
    assert A.shape == (dst * dst + 1, src * src + 1)
    torch.testing.assert_close(A @ tokens, resample_tokens(tokens, src=src, dst=dst), rtol=0, atol=1e-12)


@pytest.mark.parametrize("src,dst", PAIRS)
def test_matrix_is_the_reference_on_relations(src, dst):
    rel = torch.randn(2, 3, src * src + 1, src * src + 1, dtype=torch.float64)
    A = reuse_matrix(src=src, dst=dst, keep_cls=True, dtype=torch.float64)
    torch.testing.assert_close(A @ rel @ A.T, resample_relations(rel, src=src, dst=dst), rtol=0, atol=1e-12)


def test_identity_pair_is_the_identity_matrix():
    torch.testing.assert_close(reuse_matrix(src=6, dst=6, keep_cls=True), torch.eye(37), rtol=0, atol=0)


def test_matrix_is_cached_per_dtype_and_device():
    A = reuse_matrix(src=5, dst=7, keep_cls=True)
    assert A.dtype == torch.float32 and A.device.type == "cpu"
    assert reuse_matrix(src=5, dst=7, keep_cls=True) is A
    assert reuse_matrix(src=5, dst=7, keep_cls=True, dtype=torch.float64).dtype == torch.float64


def _reuse_modules():
    torch.manual_seed(0)
    rel_mod = RelationReuse(depth=4, num_heads=4, src_grid=5, dst_grid=7).double()
    feat_mod = FeatureReuse(dim=8, hidden=6, out=4, src_grid=5, dst_grid=7, norm_eps=1e-6).double()
    rel = torch.randn(5, 16, 26, 26, dtype=torch.float64, requires_grad=True)
    feats = torch.randn(5, 26, 8, dtype=torch.float64, requires_grad=True)
    return rel_mod, feat_mod, rel, feats


@pytest.mark.parametrize("chunk", [None, 3 * 16 * 26 * 26 * 2])  # one chunk / chunks of 2 rows, last one short
def test_reuse_modules_match_the_official_ops(monkeypatch, chunk):
    if chunk is not None:
        monkeypatch.setattr(cpu_paths, "RELATION_CHUNK_ELEMENTS", chunk)
    rel_mod, feat_mod, rel, feats = _reuse_modules()
    with torch.no_grad():  # inference: relation reuse runs in chunks on the CPU
        fast = [*rel_mod(rel), feat_mod(feats)]
        with reference_reuse():
            ref = [*rel_mod(rel), feat_mod(feats)]
    assert [o.shape for o in fast] == [(5, 4, 50, 50)] * 4 + [(5, 50, 4)]
    for f, r in zip(fast, ref):
        torch.testing.assert_close(f, r, rtol=0, atol=1e-12)


def test_reuse_modules_back_propagate_as_the_official_ops():
    rel_mod, feat_mod, rel, feats = _reuse_modules()
    inputs = [rel, feats, *rel_mod.parameters(), *feat_mod.parameters()]

    def grads():
        outs = [*rel_mod(rel), feat_mod(feats)]
        return torch.autograd.grad(sum(o.square().sum() for o in outs), inputs)

    fast = grads()
    with reference_reuse():
        ref = grads()
    for f, r in zip(fast, ref):
        torch.testing.assert_close(f, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grids", [(3, 5, 7), (4, 7, 14)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32: the native kernel, if built
def test_cascade_matches_the_official_ops(monkeypatch, grids, dtype):
    monkeypatch.setattr(cpu_paths, "RELATION_CHUNK_ELEMENTS", 1)  # one image per chunk in inference
    torch.manual_seed(0)
    model = create_model("vit_micro", grids=grids, img_size=28, in_chans=1, num_classes=10).to(dtype).eval()
    x = torch.randn(4, 1, 28, 28, dtype=dtype)
    with torch.inference_mode():
        fast = model(x)
    with reference_reuse():
        ref = model(x)
    for f, r in zip(fast, ref):
        torch.testing.assert_close(f, r, rtol=0, atol=1e-10 if dtype == torch.float64 else 1e-5)


def test_matrix_first_built_in_inference_mode_still_trains():
    reuse.reuse_matrix.cache_clear()
    reuse._grid_matrix.cache_clear()
    model = create_model("vit_micro", grids=(3, 5), img_size=28, in_chans=1, num_classes=10)
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        model(x)
    sum(o.sum() for o in model(x)).backward()  # would fail if the cached matrix were an inference tensor
    assert model.exits[1].relation_reuse[0].weight.grad is not None


def test_passed_on_logits_include_the_reuse_bias():
    """Exit 1 receives a bias from exit 0 and hands exit 2 its logits: they must be q k^T / sqrt(d) + bias."""
    torch.manual_seed(0)
    model = create_model("vit_micro", grids=(4, 7, 14), img_size=28, in_chans=1, num_classes=10).double().eval()
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    _, state0 = model.forward_exit(0, x)
    logits1, state1 = model.forward_exit(1, x, state0)

    stage = model.exits[1]
    H, d = 4, 16
    biases = stage.relation_reuse(state0.relations)
    h = stage.embed(x)
    expected, B, N = [], h.shape[0], h.shape[1]
    for block, bias in zip(stage.blocks, biases):
        q, k, v = block.attn.qkv(block.norm1(h)).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
        logits = torch.einsum("bhnd,bhmd->bhnm", q, k) / d**0.5 + bias
        expected.append(logits)
        attended = torch.einsum("bhnm,bhmd->bhnd", logits.softmax(-1), v).transpose(1, 2).reshape(B, N, H * d)
        h = h + block.attn.proj(attended)
        reused = block.feature_reuse(state0.features)
        h = h + block.mlp(block.norm2(torch.cat([h, reused], dim=-1)))
    torch.testing.assert_close(state1.relations, torch.cat(expected, dim=1))
    torch.testing.assert_close(logits1, stage.head(stage.norm(h[:, 0])))
    assert all(b.abs().max() > 1e-3 for b in biases)  # the bias is really there


def test_reuse_module_shapes_follow_the_paper():
    model = create_model("t2t_vit_12", grids=(7, 10, 14), img_size=224, in_chans=3, num_classes=1000)
    sd = model.state_dict()
    assert "exits.0.relation_reuse.0.weight" not in sd and "exits.0.blocks.0.feature_reuse.0.weight" not in sd
    assert sd["exits.2.relation_reuse.0.weight"].shape == (144, 48, 1, 1)
    assert sd["exits.2.relation_reuse.2.weight"].shape == (48, 144, 1, 1)
    assert sd["exits.1.blocks.3.feature_reuse.1.fc1.weight"].shape == (128, 256)
    assert sd["exits.1.blocks.3.feature_reuse.1.fc2.weight"].shape == (48, 128)
    assert sd["exits.1.blocks.3.norm2.weight"].shape == (304,)
    assert sd["exits.1.blocks.3.mlp.fc1.weight"].shape == (512, 304)
    assert sd["exits.2.tokens_to_token.attention1.kqv.weight"].shape == (192, 147)
    assert sd["exits.0.tokens_to_token.attention1.kqv.weight"].shape == (192, 588)


# --- The native query-side kernel (dvt/models/resample.c) and the layer-major inference layout ---

needs_compiler = pytest.mark.skipif(not native.available(), reason="no C compiler: the matmul path is used")


@pytest.mark.parametrize("src,dst", PAIRS)
def test_axis_matrix_factors_the_grid_matrix(src, dst):
    R1 = torch.tensor(axis_matrix(src, dst), dtype=torch.float64)
    assert R1.shape == (dst, src)
    torch.testing.assert_close(torch.kron(R1, R1), reuse._grid_matrix(src, dst), rtol=0, atol=1e-15)


@needs_compiler
@pytest.mark.parametrize("src,dst", [p for p in PAIRS if p[1] > p[0]])
def test_native_query_resampling_equals_the_dense_matrix(src, dst):
    """Maps already resampled along keys, put through R along queries by the kernel, into rows 1..3 of
    a layer-major (L, B, H, N_d, N_d) buffer: A @ maps, channel l*H + h at [l, b, h]; other rows untouched."""
    kernel = native.resample_queries(axis_matrix(src, dst))
    assert kernel is not None
    n_u, n_d, L, H = src * src + 1, dst * dst + 1, 2, 3
    keys = torch.randn(3, L * H, n_u, n_d)
    out = torch.full((L, 5, H, n_d, n_d), 7.0)
    kernel(keys, out[:, 1:4])
    A = reuse_matrix(src=src, dst=dst, keep_cls=True, dtype=torch.float64)
    expected = (A @ keys.double()).unflatten(1, (L, H)).transpose(0, 1).float()
    torch.testing.assert_close(out[:, 1:4], expected, rtol=1e-6, atol=1e-6)
    assert (out[:, [0, 4]] == 7).all()
    with pytest.raises(ValueError, match="do not fit"):
        kernel(keys[:, :, 1:], out[:, 1:4])  # not an src x src grid of queries


def test_native_kernel_does_not_apply_to_more_than_two_weights_per_row():
    assert native.resample_queries(((0.5, 0.25, 0.25),)) is None


@pytest.mark.parametrize("kernel", [True, False])
def test_relation_reuse_inference_layout_equals_the_training_path(monkeypatch, kernel):
    """CPU inference: each layer's bias is its own contiguous block (the attention adds its logits
    into it in place), with the native kernel or with the matmul fallback; values as with autograd."""
    if kernel and not native.available():
        pytest.skip("no C compiler")
    if not kernel:
        monkeypatch.setattr(native, "resample_queries", lambda axis: None)
    monkeypatch.setattr(cpu_paths, "RELATION_CHUNK_ELEMENTS", 3 * 16 * 26 * 26 * 2)  # chunks of 2 images, last one short
    torch.manual_seed(0)
    module = RelationReuse(depth=4, num_heads=4, src_grid=5, dst_grid=7)
    rel = torch.randn(5, 16, 26, 26)
    trained = module(rel)
    with torch.inference_mode():
        inferred = module(rel)
    assert all(b.is_contiguous() and b.shape == (5, 4, 50, 50) for b in inferred)
    assert inferred[0].untyped_storage().data_ptr() == inferred[3].untyped_storage().data_ptr()  # one buffer
    for f, r in zip(inferred, trained):
        torch.testing.assert_close(f, r.detach(), rtol=1e-5, atol=1e-5)


def _fresh_library(monkeypatch, tmp_path, **env):
    monkeypatch.setenv("DVT_CACHE_DIR", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    native._library.cache_clear()
    native.resample_queries.cache_clear()


@pytest.fixture
def restore_native():
    yield
    native._library.cache_clear()
    native.resample_queries.cache_clear()


@needs_compiler
def test_native_library_is_built_once_per_source_and_cpu(monkeypatch, tmp_path, restore_native):
    _fresh_library(monkeypatch, tmp_path)
    assert native.available()
    (built,) = (tmp_path / "native").iterdir()
    assert built.suffix == ".so"
    stamp = built.stat().st_mtime_ns
    native._library.cache_clear()
    assert native.available() and built.stat().st_mtime_ns == stamp  # loaded again, not rebuilt
    assert list((tmp_path / "native").iterdir()) == [built]  # no temporary files left behind


def test_without_a_compiler_the_matmul_path_is_used(monkeypatch, tmp_path, restore_native):
    _fresh_library(monkeypatch, tmp_path, CC=str(tmp_path / "no-such-cc"))
    with pytest.warns(UserWarning, match="could not build resample.c"):
        assert native.resample_queries(axis_matrix(5, 7)) is None
    _fresh_library(monkeypatch, tmp_path, DVT_NATIVE="0")
    assert native.resample_queries(axis_matrix(5, 7)) is None  # switched off: no warning, no build
    assert not (tmp_path / "native").exists() or not any((tmp_path / "native").glob("*.so"))
    torch.manual_seed(0)
    module = RelationReuse(depth=2, num_heads=2, src_grid=3, dst_grid=5)
    rel = torch.randn(3, 4, 10, 10)
    with torch.inference_mode():
        fallback = module(rel)
        with reference_reuse():
            ref = module(rel)
    assert [b.shape for b in fallback] == [(3, 2, 26, 26)] * 2
    for f, r in zip(fallback, ref):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)


def test_feature_reuse_of_all_blocks_at_once_equals_each_module():
    torch.manual_seed(0)
    modules = [FeatureReuse(dim=8, hidden=6, out=4, src_grid=5, dst_grid=7, norm_eps=1e-6).double() for _ in range(3)]
    for m in modules:  # non-trivial LayerNorm affines, which the joint path folds into fc1
        torch.nn.init.normal_(m[0].weight)
        torch.nn.init.normal_(m[0].bias)
    feats = torch.randn(5, 26, 8, dtype=torch.float64)
    assert not reuse.can_run_together(modules)  # autograd on: each module keeps its own graph
    with torch.no_grad():
        assert reuse.can_run_together(modules)
        together = reuse.feature_reuse_together(modules, feats)
        with reference_reuse():
            assert not reuse.can_run_together(modules)
            ref = [m(feats) for m in modules]
        assert not reuse.can_run_together([*modules[:2], None])
        dropping = [FeatureReuse(dim=8, hidden=6, out=4, src_grid=5, dst_grid=7, norm_eps=1e-6, drop=0.1)
                    for _ in range(2)]
        assert not reuse.can_run_together(dropping)  # train mode: the dropout must act, per module
        assert reuse.can_run_together([m.eval() for m in dropping])
        modules[1][1].act = torch.nn.GELU(approximate="tanh")
        assert not reuse.can_run_together(modules)
    assert len(together) == 3
    for t, r in zip(together, ref):
        torch.testing.assert_close(t, r, rtol=0, atol=1e-12)


def test_one_switch_turns_every_cpu_fast_path_off(monkeypatch):
    """set_cpu_fast_paths(False): the CPU runs the ops a GPU runs (fused attention, whole-batch reuse, no C
    kernel), with the same logits up to float rounding."""
    torch.manual_seed(0)
    model = create_model("vit_micro", grids=[2, 4, 8], img_size=16, in_chans=1, num_classes=10).eval()
    x = torch.randn(9, 1, 16, 16)
    with torch.inference_mode():
        fast = model(x)
    calls = []
    monkeypatch.setattr(native, "resample_queries", lambda *a, **k: calls.append(1))
    fused = attention_module_sdpa_spy(monkeypatch)
    cpu_paths.set_cpu_fast_paths(False)
    try:
        with torch.inference_mode():
            plain = model(x)
    finally:
        cpu_paths.set_cpu_fast_paths(True)
    assert not calls  # the C kernel is neither built nor called
    assert fused  # attention took the fused kernel where no logits are handed on
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def attention_module_sdpa_spy(monkeypatch) -> list[int]:
    from dvt.models import attention

    seen: list[int] = []
    real = attention.F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counted)
    return seen


def test_the_switch_reads_the_environment():
    import subprocess
    import sys

    code = "from dvt.models import cpu_paths; print(cpu_paths.cpu_fast_paths())"
    for value, expect in (("0", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, "DVT_CPU_FAST_PATHS": value})
        assert out.stdout.strip() == expect
