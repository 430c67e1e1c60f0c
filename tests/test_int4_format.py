"""reference tier: vLLM's INT4 per-token-head cache format as ``reference.int4`` reads and writes it.

The writer is checked bit for bit against vLLM's own (``reshape_and_cache_int4`` of the peer copy in
``../shared/peers/vllm``, run under the Triton interpreter; skipped with the reason where absent); the
reader against the format's definition: the rotation against its matrix, the round trip against
the quantization step, attention in the original space against vLLM's rotated-space formulation.
"""

import math

import pytest
import torch

import reference
from reference import int4
from attention_suite import vllm_int4_module, vllm_peer_absent

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_SIZES = (16, 40, 64, 80, 128)  # rotation groups of 16, 8, 64, 16 and 128 values


def hadamard_matrix(size: int) -> torch.Tensor:
    """Sylvester's H from its entries, (-1)^popcount(i & j): independent of the butterfly."""
    index = torch.arange(size)
    parity = torch.zeros(size, size, dtype=torch.int64)
    both = index[:, None] & index[None, :]
    for bit in range(size.bit_length()):
        parity ^= (both >> bit) & 1
    return (1 - 2 * parity).double()


def rotation_matrix(head_size: int) -> torch.Tensor:
    """R = H D, block diagonal over groups of b = largest power of two dividing head_size."""
    b = int4.rotation_block(head_size)
    group = hadamard_matrix(b) @ torch.diag(int4.rht_signs(b, dtype=torch.float64))
    return torch.block_diag(*[group] * (head_size // b))


def special_rows(head_size: int, dtype) -> torch.Tensor:
    """[4, head_size]: rows whose rotated form is all zero, constant negative, all positive, all negative.

    A row that is c * sign_0 at the first value of each rotation group and 0 elsewhere rotates to
    exactly c everywhere (H's first column is all ones); R^-1 of a positive vector rotates back to it."""
    b = int4.rotation_block(head_size)
    constant = torch.zeros(head_size)
    constant[::b] = -0.75 * float(int4.rht_signs(b)[0])
    gen = torch.Generator().manual_seed(head_size)
    positive = int4.rotate_back(torch.rand(head_size, generator=gen, dtype=torch.float64) + 0.5)
    return torch.stack([torch.zeros(head_size), constant, positive.float(), -positive.float()]).to(dtype)


def random_rows(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 2.0).to(dtype)


@pytest.fixture(scope="module")
def vllm_int4():
    module = vllm_int4_module()  # the suite's own loader of the peer's module
    if module is None:
        pytest.skip(vllm_peer_absent())
    return module


@pytest.mark.reference
@pytest.mark.parametrize("head_size", HEAD_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_writer_matches_vllm_bit_for_bit(vllm_int4, device, dtype, head_size):
    """Under the interpreter, where vLLM's Triton writer computes as written; compiled, it may contract
    a multiply-add into an FMA (as test_harness's builder test says), which no one has checked yet."""
    if device != "cpu":
        pytest.skip("bit for bit under the interpreter only")
    num_blocks, block_size, num_kv_heads = 4, 4, 2
    key = random_rows((10, num_kv_heads, head_size), dtype, seed=head_size)
    value = random_rows((10, num_kv_heads, head_size), dtype, seed=head_size + 1)
    key[:4, 0], value[:4, 1] = special_rows(head_size, dtype), special_rows(head_size, dtype)
    slots = torch.randperm(num_blocks * block_size, generator=torch.Generator().manual_seed(3))[:10]
    slots[5] = -1  # a token vLLM does not cache
    results = []
    for writer in ("ours", "vllm"):
        # Pre-filled with a pattern, so a slot either writer skips or misses shows.
        caches = [torch.full((num_blocks, block_size, num_kv_heads, head_size // 2), 0xA5, dtype=torch.uint8)
                  for _ in range(2)] + [torch.full((num_blocks, block_size, num_kv_heads), 7.0) for _ in range(2)]
        if writer == "ours":
            int4.reshape_and_cache(key, value, *caches[:2], slots, *caches[2:])
        else:
            vllm_int4.reshape_and_cache_int4(key, value, *caches[:2], slots, k_scale_cache=caches[2],
                                             v_scale_cache=caches[3])
        results.append(caches)
    for name, ours, theirs in zip(("key_cache", "value_cache", "k_scale_cache", "v_scale_cache"), *results):
        assert torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8)), name


@pytest.mark.reference
@pytest.mark.parametrize("head_size", HEAD_SIZES)
def test_rotation_is_its_matrix_and_rotating_back_inverts_it(head_size):
    x = torch.randn(5, head_size, generator=torch.Generator().manual_seed(head_size), dtype=torch.float64)
    matrix = rotation_matrix(head_size)
    torch.testing.assert_close(int4.rotate(x), x @ matrix.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(int4.rotate_back(int4.rotate(x)), x, rtol=0, atol=1e-12)
    b = int4.rotation_block(head_size)
    torch.testing.assert_close(matrix @ matrix.T, b * torch.eye(head_size, dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.reference
@pytest.mark.parametrize("head_size", HEAD_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_dequantized_rows_are_within_half_a_step(dtype, head_size):
    """Rotated: |(u - zero) * s - y| <= s / 2, plus float32's rounding of y / s + zero and the 2^-19
    relative the cleared zero-point bits take from s (together under 2^-12 steps). Original space:
    R^-1 shrinks every group's error norm by sqrt(b), so the row's error norm is at most that over
    sqrt(b), plus the rounding of y to the row's dtype carried back the same way."""
    x = random_rows((64, head_size), dtype, seed=head_size)
    packed, stored = int4.quantize(x)
    assert packed.dtype == torch.uint8 and packed.shape == (64, head_size // 2) and stored.dtype == torch.float32
    scale, zero = int4.split_scale(stored)
    y_rounded = int4.rotate(x.float()).to(dtype).double()
    step = scale.double()[:, None] * (0.5 + 2.0 ** -12)
    assert ((int4.dequantize(packed, stored, torch.float64) - y_rounded).abs() <= step).all()
    b = int4.rotation_block(head_size)
    y_exact = int4.rotate(x.double())
    bound = (math.sqrt(head_size) * step[:, 0] + (y_rounded - y_exact).norm(dim=-1)) / math.sqrt(b)
    error = (int4.rows(packed, stored, torch.float64) - x.double()).norm(dim=-1)
    assert (error <= bound * (1 + 1e-9)).all()
    assert 0 < error.mean() < 0.2 * x.double().norm(dim=-1).mean()  # 4 bits: lossy, but close


@pytest.mark.reference
@pytest.mark.parametrize("head_size", (40, 64))
def test_special_rows_floor_scale_and_end_zero_points(head_size):
    packed, stored = int4.quantize(special_rows(head_size, torch.float16))
    scale, zero = int4.split_scale(stored)
    floor = int4.split_scale(int4.SCALE_FLOOR.reshape(1))[0]
    assert zero.tolist() == [0, 15, 0, 15]
    assert torch.equal(scale[:2], floor.expand(2))  # constant rotated rows: the range is 0, the scale floors
    assert (scale[2:] > floor).all()
    assert packed[0].eq(0).all() and packed[1].eq(0).all()  # all at the zero point / clamped at 0
    rows = int4.rows(packed, stored, torch.float64)
    assert rows[0].eq(0).all()
    # The constant -0.75 row is beyond what the floor scale reaches: it reads back as -15 * 1e-6 in every
    # rotated value (the format's loss), which the reference reproduces rather than corrects.
    torch.testing.assert_close(int4.rotate(rows[1]), torch.full((head_size,), -15 * float(floor), dtype=torch.float64),
                               rtol=0, atol=1e-18)


@pytest.mark.reference
def test_nibble_order_and_zero_point_bits():
    packed = torch.tensor([[0x21, 0xF0]], dtype=torch.uint8)
    assert int4.unpack(packed).tolist() == [[1, 2, 0, 15]]
    stored = torch.tensor([0.5], dtype=torch.float32).view(torch.int32) | 9
    scale, zero = int4.split_scale(stored.view(torch.float32))
    assert scale.tolist() == [0.5] and zero.tolist() == [9]
    assert int4.dequantize(packed, stored.view(torch.float32), torch.float64).tolist() == [[-4.0, -3.5, -4.5, 3.0]]


@pytest.mark.reference
@pytest.mark.parametrize("head_size", (48, 64))
def test_attention_in_the_original_space_equals_vllms_rotated_formulation(head_size):
    """vLLM: q rotated, softmax_scale / b, P @ (rotated V), the output rotated back. The reference:
    plain attention over the rows rotated back. Equal because R^T R = b I."""
    gen = torch.Generator().manual_seed(head_size)
    num_keys, block_size, num_q = 13, 4, 3
    num_blocks = -(-num_keys // block_size)
    k_cache = torch.zeros(num_blocks, block_size, 1, head_size // 2, dtype=torch.uint8)
    v_cache = k_cache.clone()
    k_scales, v_scales = torch.zeros(num_blocks, block_size, 1), torch.zeros(num_blocks, block_size, 1)
    keys = torch.randn(num_keys, 1, head_size, generator=gen)
    values = torch.randn(num_keys, 1, head_size, generator=gen)
    int4.reshape_and_cache(keys.half(), values.half(), k_cache, v_cache, torch.arange(num_keys), k_scales, v_scales)
    q = torch.randn(num_q, 2, head_size, generator=gen).half()
    scale = head_size ** -0.5
    out = torch.zeros(num_q, 2, head_size, dtype=torch.float64)
    reference.unified_attention(
        q, k_cache, v_cache, out, torch.tensor([0, num_q], dtype=torch.int32), num_q,
        torch.tensor([num_keys], dtype=torch.int32), num_keys, scale, True, None,
        torch.arange(num_blocks, dtype=torch.int32)[None], 0.0, None, None, None,
        kv_quant_mode="int4_per_token_head", k_scale_cache=k_scales, v_scale_cache=v_scales)

    flat = (num_blocks * block_size, head_size // 2)
    k_rot = int4.dequantize(k_cache.reshape(flat), k_scales.reshape(-1), torch.float64)[:num_keys]
    v_rot = int4.dequantize(v_cache.reshape(flat), v_scales.reshape(-1), torch.float64)[:num_keys]
    b = int4.rotation_block(head_size)
    q_rot = int4.rotate(q.double())  # [num_q, 2 heads, dim]
    scores = torch.einsum("qhd,kd->hqk", q_rot, k_rot) * (scale / b)
    positions = torch.arange(num_keys - num_q, num_keys)
    scores = scores.masked_fill(torch.arange(num_keys)[None, :] > positions[:, None], float("-inf"))
    expected = int4.rotate_back(torch.einsum("hqk,kd->qhd", scores.softmax(-1), v_rot))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.reference
@pytest.mark.parametrize("change, arg", [
    (lambda x: x.to(torch.float64), "x"),
    (lambda x: x[..., :-1], "x"),
    (lambda x: x.index_fill(0, torch.tensor([1]), float("nan")), "x"),
    (lambda x: x * 1e9, "x"),
], ids=["float64", "odd-head-size", "nan", "beyond-int32"])
def test_writer_refuses_what_vllm_leaves_undefined(change, arg):
    x = torch.zeros(3, 16)
    x[1, 0] = 1.0
    with pytest.raises((TypeError, ValueError), match=f"^{arg}: "):
        int4.quantize(change(x), arg)
