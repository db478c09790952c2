"""slot_ranges (parse / compress / expand) against the pure-Python reference."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lmcache_native import ops
from lmcache_native.ops.slot_ranges import parse_slot_ranges
from lmcache_native.testing import reference as ref

INT64_MAX = 2**63 - 1

# ---- parse: valid forms ---------------------------------------------------------------------

VALID = [
    ("1,2,3,[9,12],17,19", [1, 2, 3, 9, 10, 11, 12, 17, 19]),
    ("", []),
    ("   \t\n ", []),
    (",,,", []),
    (",1,,2,", [1, 2]),
    (" 1 , 2 ,\t[ 3 , 5 ]\n", [1, 2, 3, 4, 5]),
    ("1 2", [12]),  # whitespace is removed before parsing, also inside numbers
    ("[1 0,1 2]", [10, 11, 12]),
    ("5,1,[3,4],0", [5, 1, 3, 4, 0]),  # order kept
    ("1,1,[1,2],2", [1, 1, 1, 2, 2]),  # duplicates kept
    ("[7,7]", [7]),
    ("007,[0,0]", [7, 0]),
    ("\x0b1\x0c,\r2\x1c", [1, 2]),  # every ASCII whitespace of str.split()
    (str(INT64_MAX), [INT64_MAX]),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_parse_valid_forms(text: str, expected: list[int]) -> None:
    got = ops.parse_slot_mapping(text, 100)
    assert got.dtype == torch.int64
    assert got.device.type == "cpu"
    assert got.dim() == 1
    assert got.tolist() == expected
    assert ref.parse_slot_mapping(text, 100) == expected


def test_parse_unicode_whitespace_is_ignored() -> None:
    text = "1,\u00a02,\u2003[3,\u30004]"
    assert ops.parse_slot_mapping(text, 10).tolist() == ref.parse_slot_mapping(text, 10)


def test_parse_max_slots_boundary() -> None:
    assert ops.parse_slot_mapping("[0,9]", 10).tolist() == list(range(10))
    assert ops.parse_slot_mapping("", 0).tolist() == []
    with pytest.raises(ValueError, match="max_slots=9"):
        ops.parse_slot_mapping("[0,9]", 9)
    with pytest.raises(ValueError, match="max_slots=2"):
        ops.parse_slot_mapping("1,2,3", 2)


def test_parse_ranges_form() -> None:
    got = parse_slot_ranges(" 4,[1, 3],,9", 10)
    assert got.shape == (3, 2)
    assert got.dtype == torch.int64
    assert got.tolist() == [[4, 4], [1, 3], [9, 9]]
    with pytest.raises(ValueError, match="max_slots"):
        parse_slot_ranges("[0,10]", 10)


# ---- parse: malformed -----------------------------------------------------------------------

MALFORMED = [
    ("[1,[2,3]]", "nested"),
    ("[[1,2],3]", "nested"),
    ("[1,2", "unmatched '\\['"),
    ("1,[", "unmatched '\\['"),
    ("[1,", "unmatched '\\['"),
    ("1,2]", "unmatched '\\]'"),
    ("]", "unmatched '\\]'"),
    ("[1,2]]", "unmatched '\\]'"),
    ("[5,3]", "start 5 > end 3"),
    ("a", "expected a non-negative integer"),
    ("1,b", "position 2"),
    ("1.5", "expected ','"),
    ("0x10", "expected ','"),
    ("+3", "expected a non-negative integer"),
    ("[1,b]", "range end"),
    ("[1,2,3]", "exactly two numbers"),
    ("[1]", "must be \\[a,b\\]"),
    ("[]", "range start"),
    ("[1,2]3", "expected ','"),
    ("1[2,3]", "expected ','"),
    ("-1", "negative"),
    ("1,-1", "negative"),
    ("[-1,3]", "negative"),
    ("[1,-3]", "negative"),
    ("1,é", "byte 0x"),
]


@pytest.mark.parametrize(("text", "message"), MALFORMED)
def test_parse_malformed(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ops.parse_slot_mapping(text, 100)
    with pytest.raises(ValueError):  # noqa: PT011 - the reference's wording is not the contract
        ref.parse_slot_mapping(text, 100)


@pytest.mark.parametrize("text", [str(INT64_MAX + 1), "[0,99999999999999999999]", "1" * 40])
def test_parse_integer_overflow(text: str) -> None:
    with pytest.raises(ValueError, match="integer overflow"):
        ops.parse_slot_mapping(text, 10**6)


@pytest.mark.parametrize(
    "text", ["[0,1000000000000]", f"[0,{INT64_MAX}]", "[5,5],[0,999999]", "1," * 1000 + "[0,10**6]"]
)
def test_parse_too_many_slots_fails_before_allocating(text: str) -> None:
    if "**" in text:
        text = text.replace("10**6", str(10**6))
    with pytest.raises(ValueError, match="more than max_slots=1000000"):
        ops.parse_slot_mapping(text, 10**6)


def test_parse_error_names_the_position() -> None:
    with pytest.raises(ValueError, match="position 6"):
        ops.parse_slot_mapping("1, 2, x", 10)
    with pytest.raises(ValueError, match="at position 4"):
        ops.parse_slot_mapping("1,2,[3,4", 10)


def test_parse_argument_checks() -> None:
    with pytest.raises(TypeError, match="text"):
        ops.parse_slot_mapping(b"1,2", 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_slots"):
        ops.parse_slot_mapping("1,2", 10.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_slots must be >= 0"):
        ops.parse_slot_mapping("1,2", -1)


# ---- parse: random texts against the reference ----------------------------------------------

_item = st.one_of(
    st.integers(0, 10**6).map(str),
    st.tuples(st.integers(0, 10**5), st.integers(0, 50)).map(lambda t: f"[{t[0]},{t[0] + t[1]}]"),
    st.just(""),
)
_ws = st.sampled_from(["", " ", "\t", "\n", "  "])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_ws, _item, _ws), max_size=30))
def test_parse_random_valid_texts(parts: list[tuple[str, str, str]]) -> None:
    text = ",".join(a + item + b for a, item, b in parts)
    assert ops.parse_slot_mapping(text, 10**7).tolist() == ref.parse_slot_mapping(text, 10**7)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789[], -x", max_size=25))
def test_parse_random_texts_agree_on_validity(text: str) -> None:
    try:
        expected: list[int] | None = ref.parse_slot_mapping(text, 10**4)
    except ValueError:
        expected = None
    if expected is not None and any(v > INT64_MAX for v in expected):
        expected = None  # the reference has no int64 limit
    if expected is None:
        with pytest.raises(ValueError):  # noqa: PT011 - any malformed text; messages vary
            ops.parse_slot_mapping(text, 10**4)
    else:
        assert ops.parse_slot_mapping(text, 10**4).tolist() == expected


# ---- compress -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "expected"),
    [
        ([], []),
        ([5], [5]),
        ([5, 6], [5, 6]),
        ([5, 6, 7], [[5, 7]]),
        ([1, 2, 3, 7, 5, 6], [[1, 3], 7, 5, 6]),
        ([3, 2, 1], [3, 2, 1]),
        ([1, 1, 2, 3], [1, [1, 3]]),
        ([-3, -2, -1, 0], [[-3, 0]]),
        ([INT64_MAX - 2, INT64_MAX - 1, INT64_MAX], [[INT64_MAX - 2, INT64_MAX]]),
        ([INT64_MAX, -(2**63), -(2**63) + 1], [INT64_MAX, -(2**63), -(2**63) + 1]),
    ],
)
def test_compress_named_cases(slots: list[int], expected: list[int | list[int]]) -> None:
    assert ops.compress_slot_mapping(slots) == expected
    assert ops.compress_slot_mapping(torch.tensor(slots, dtype=torch.int64)) == expected
    assert ref.compress_slot_mapping(slots) == expected


def test_compress_input_kinds() -> None:
    expected = [[4, 7], 9]
    assert ops.compress_slot_mapping(np.array([4, 5, 6, 7, 9], dtype=np.int32)) == expected
    assert ops.compress_slot_mapping(torch.tensor([4, 5, 6, 7, 9], dtype=torch.int32)) == expected
    assert ops.compress_slot_mapping(torch.arange(20)[4:14:2]) == [4, 6, 8, 10, 12]
    with pytest.raises(TypeError):
        ops.compress_slot_mapping(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="1-D"):
        ops.compress_slot_mapping(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError):
        ops.compress_slot_mapping("1,2,3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int64"):
        ops.compress_slot_mapping([2**64])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 40), max_size=80))
def test_compress_random_against_reference(slots: list[int]) -> None:
    assert ops.compress_slot_mapping(slots) == ref.compress_slot_mapping(slots)


def _to_text(items: list[int | list[int]]) -> str:
    return ",".join(f"[{i[0]},{i[1]}]" if isinstance(i, list) else str(i) for i in items)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=100))
def test_round_trip_parse_of_compressed(slots: list[int]) -> None:
    compressed = ops.compress_slot_mapping(slots)
    assert ops.parse_slot_mapping(_to_text(compressed), len(slots)).tolist() == slots


def test_round_trip_large_random() -> None:
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randperm(4096, generator=gen)[:2000]
    slots = (blocks[:, None] * 16 + torch.arange(16)).reshape(-1)
    slots[torch.randint(0, slots.numel(), (500,), generator=gen)] = 7  # break some runs
    compressed = ops.compress_slot_mapping(slots)
    assert compressed == ref.compress_slot_mapping(slots.tolist())
    assert torch.equal(ops.parse_slot_mapping(_to_text(compressed), slots.numel()), slots)


# ---- compress to the run table ----------------------------------------------------------------


@pytest.mark.parametrize(
    "slots",
    [
        [],
        [5],
        [5, 6],
        [5, 6, 7],
        [1, 2, 3, 7, 5, 6],
        [1, 1, 2, 3],
        [-3, -2, -1, 0],
        [INT64_MAX - 2, INT64_MAX - 1, INT64_MAX],
        [INT64_MAX, -(2**63), -(2**63) + 1],
    ],
)
def test_compress_ranges_named_cases(slots: list[int]) -> None:
    table = ops.compress_slot_ranges(slots)
    assert table.dtype == torch.int64
    assert table.shape == (table.shape[0], 2)
    assert table.tolist() == ref.compress_slot_ranges(slots)


def test_reference_run_table() -> None:
    assert ref.compress_slot_ranges([1, 2, 3, 7, 5, 6]) == [[1, 3], [7, 7], [5, 5], [6, 6]]


def test_compress_ranges_input_kinds_and_errors() -> None:
    expected = [[4, 7], [9, 9]]
    assert ops.compress_slot_ranges(np.array([4, 5, 6, 7, 9], dtype=np.int32)).tolist() == expected
    assert ops.compress_slot_ranges(torch.arange(20)[4:14:2]).tolist() == [
        [v, v] for v in (4, 6, 8, 10, 12)
    ]
    with pytest.raises(TypeError):
        ops.compress_slot_ranges(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="1-D"):
        ops.compress_slot_ranges(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError):
        ops.compress_slot_ranges("1,2,3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int64"):
        ops.compress_slot_ranges([2**64])


@pytest.mark.parametrize("compress", [ops.compress_slot_mapping, ops.compress_slot_ranges])
def test_compress_uint64_beyond_int64_is_refused_not_wrapped(
    compress: Callable[..., object],
) -> None:
    big = np.array([2**63 + 5, 1], dtype=np.uint64)
    with pytest.raises(ValueError, match="int64"):
        compress(big)
    with pytest.raises(ValueError, match="int64"):
        compress(torch.as_tensor(big))
    fits = np.array([2**63 - 1, 7, 8, 9], dtype=np.uint64)
    assert ops.compress_slot_mapping(fits) == [2**63 - 1, [7, 9]]
    assert ops.compress_slot_ranges(fits).tolist() == [[2**63 - 1, 2**63 - 1], [7, 9]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=80))
def test_compress_ranges_random_against_reference_and_expand(slots: list[int]) -> None:
    table = ops.compress_slot_ranges(slots)
    assert table.tolist() == ref.compress_slot_ranges(slots)
    assert ops.expand_slot_ranges(table).tolist() == slots


def test_compress_ranges_large_round_trip() -> None:
    gen = torch.Generator().manual_seed(1)
    blocks = torch.randperm(8192, generator=gen)[:4000]
    slots = (blocks[:, None] * 16 + torch.arange(16)).reshape(-1)
    slots[torch.randint(0, slots.numel(), (900,), generator=gen)] = 3  # break some runs
    table = ops.compress_slot_ranges(slots)
    assert table.tolist() == ref.compress_slot_ranges(slots.tolist())
    assert torch.equal(ops.expand_slot_ranges(table), slots)


# ---- expand ---------------------------------------------------------------------------------


def test_expand_cpu() -> None:
    ranges = torch.tensor([[4, 4], [10, 13], [0, 1], [10, 10]])
    got = ops.expand_slot_ranges(ranges)
    assert got.dtype == torch.int64
    assert got.tolist() == [4, 10, 11, 12, 13, 0, 1, 10]
    assert ops.expand_slot_ranges([[2, 3]]).tolist() == [2, 3]
    assert ops.expand_slot_ranges(torch.empty(0, 2, dtype=torch.int64)).tolist() == []


def test_expand_large_matches_parse() -> None:
    text = ",".join(f"[{b * 16},{b * 16 + 15}]" for b in range(5000, 0, -7)) + ",[0,200000]"
    ranges = parse_slot_ranges(text, 10**6)
    assert torch.equal(ops.expand_slot_ranges(ranges), ops.parse_slot_mapping(text, 10**6))


def test_expand_errors() -> None:
    with pytest.raises(ValueError, match=r"ranges\[1\]"):
        ops.expand_slot_ranges(torch.tensor([[0, 1], [5, 3]]))
    with pytest.raises(ValueError, match="0 <= start"):
        ops.expand_slot_ranges(torch.tensor([[-1, 1]]))
    with pytest.raises(ValueError, match="max_slots=3"):
        ops.expand_slot_ranges(torch.tensor([[0, 3]]), max_slots=3)
    with pytest.raises(ValueError, match="far too many"):
        ops.expand_slot_ranges(torch.tensor([[0, INT64_MAX - 1], [0, INT64_MAX - 1]]))
    with pytest.raises(ValueError, match=r"\[num_ranges, 2\]"):
        ops.expand_slot_ranges(torch.zeros(3, 3, dtype=torch.int64))


@pytest.mark.cuda
def test_expand_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(1)
    starts = torch.randint(0, 10**6, (3000,), generator=gen)
    lengths = torch.randint(1, 40, (3000,), generator=gen)
    ranges = torch.stack([starts, starts + lengths - 1], dim=1)
    cpu = ops.expand_slot_ranges(ranges)
    cuda = ops.expand_slot_ranges(ranges, device="cuda")
    assert cuda.device.type == "cuda"
    assert torch.equal(cuda.cpu(), cpu)
    cuda_from_cuda = ops.expand_slot_ranges(ranges.cuda(), device="cuda")
    assert torch.equal(cuda_from_cuda.cpu(), cpu)
    assert ops.expand_slot_ranges(ranges[:0], device="cuda").numel() == 0


def test_compress_runs_ending_at_int64_max_do_not_overflow() -> None:
    """Compress runs ending at int64 max do not overflow.

    A run's last value is formed as start + (length - 1): for a run ending at INT64_MAX,
    start + length would overflow int64 (undefined behaviour that UBSan reports).
    """
    tail = list(range(INT64_MAX - 6, INT64_MAX + 1))  # 7 values ending at INT64_MAX
    slots = [3, 4, 5, 6, 9, *tail]
    assert ops.compress_slot_mapping(slots) == [[3, 6], 9, [INT64_MAX - 6, INT64_MAX]]
    assert ops.compress_slot_ranges(slots).tolist() == [
        [3, 6],
        [9, 9],
        [INT64_MAX - 6, INT64_MAX],
    ]
    assert ops.compress_slot_mapping([INT64_MAX - 1, INT64_MAX]) == [INT64_MAX - 1, INT64_MAX]
    assert ops.compress_slot_ranges(tail[-3:]).tolist() == [[INT64_MAX - 2, INT64_MAX]]
