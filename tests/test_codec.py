"""Tests for torchprune_share.codec: bit packing and canonical Huffman coding."""

from __future__ import annotations

import heapq
import itertools
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from torchprune_share.codec import (
    DEFAULT_MAX_LEN,
    MAX_CODE_LEN,
    CodecError,
    code_lengths,
    decode,
    encode,
    encoded_size_bits,
    pack_bits,
    packed_nbytes,
    unpack_bits,
)
from torchprune_share.codec.wire import (
    BoundedReader,
    as_uint8,
    encode_varint,
    encode_varints,
    unsigned_dtype,
    zigzag_decode,
    zigzag_encode,
)

FAST = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- helpers


_varint = encode_varint


def _seal(body: bytes) -> bytes:
    """Wrap a hand-made body in the documented fixed header (magic, version, CRC-32)."""
    return b"HF\x01" + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "little") + body


def _reseal(data: bytes | bytearray) -> bytes:
    """Recompute the CRC of a (mutated) stream so structural checks are exercised."""
    if len(data) < 7:
        return bytes(data)
    return bytes(data[:3]) + _seal(bytes(data[7:]))[3:]


def _ref_pack(values: np.ndarray, bits: int) -> bytes:
    """Bit-by-bit reference of the documented little-endian bit order."""
    v = values.astype(np.uint64)
    matrix = (v[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
    return np.packbits(matrix.astype(np.uint8).ravel(), bitorder="little").tobytes()


def _huffman_cost(freqs: list[int]) -> tuple[int, int]:
    """Unconstrained Huffman (heapq): total cost and depth of the tree built."""
    items = [(f, 0, i) for i, f in enumerate(freqs) if f > 0]
    if len(items) <= 1:
        return sum(f for f, _, _ in items), 1
    heapq.heapify(items)
    cost, tie = 0, len(items)
    while len(items) > 1:
        a, b = heapq.heappop(items), heapq.heappop(items)
        cost += a[0] + b[0]
        tie += 1
        heapq.heappush(items, (a[0] + b[0], max(a[1], b[1]) + 1, tie))
    return cost, items[0][1]


def _brute_force_cost(freqs: list[int], max_len: int) -> int:
    """Optimal length-limited cost by enumerating length multisets (tiny inputs)."""
    f = sorted((x for x in freqs if x > 0), reverse=True)
    best = None
    for ls in itertools.combinations_with_replacement(range(1, max_len + 1), len(f)):
        if sum(2.0**-length for length in ls) <= 1.0:
            cost = sum(a * b for a, b in zip(f, ls))
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


def _entropy_bits(x: np.ndarray) -> float:
    _, counts = np.unique(x, return_counts=True)
    p = counts / x.size
    return float(-(counts * np.log2(p)).sum())


@st.composite
def symbol_streams(draw: st.DrawFn) -> np.ndarray:
    """Random streams: sizes incl. 0, dense/sparse/huge alphabets, skewed or flat."""
    n = draw(st.sampled_from([0, 1, 2, 3, 7, 16, 17, 100, 1000, 5000]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    k = draw(st.sampled_from([1, 2, 3, 5, 16, 33, 256, 1000]))
    kind = draw(st.sampled_from(["uniform", "zipf", "geometric"]))
    if kind == "uniform":
        ranks = rng.integers(0, k, n)
    elif kind == "zipf":
        p = 1.0 / np.arange(1, k + 1) ** 1.5
        ranks = rng.choice(k, size=n, p=p / p.sum())
    else:
        ranks = np.minimum(rng.geometric(0.5, n) - 1, k - 1)
    layout = draw(st.sampled_from(["dense", "offset", "sparse", "huge"]))
    if layout == "dense":
        values = np.arange(k)
    elif layout == "offset":
        values = np.arange(k) + draw(st.integers(1, 10**6))
    elif layout == "sparse":
        values = np.sort(rng.choice(10 * k + 10, size=k, replace=False))
    else:
        values = np.sort(rng.choice(2**62, size=k, replace=False)) + (2**62 - 1)
    dtype = draw(st.sampled_from([np.int64, np.uint64, np.int32, np.uint16]))
    x = values[ranks]
    if x.size and int(x.max()) > np.iinfo(dtype).max:
        dtype = np.uint64
    return x.astype(dtype)


# ----------------------------------------------------------------------------- bit packing


@FAST
@given(
    bits=st.integers(1, 32),
    n=st.integers(0, 300),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.int64, np.uint64, np.uint32]),
)
def test_pack_unpack_round_trip(bits: int, n: int, seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 1 << bits, n, dtype=np.uint64)
    if n:
        x[rng.integers(n)] = (1 << bits) - 1  # always exercise the top bit
    x = x.astype(dtype)
    packed = pack_bits(x, bits)
    assert packed == _ref_pack(x, bits)
    assert len(packed) == packed_nbytes(n, bits) == (n * bits + 7) // 8
    y = unpack_bits(packed, bits, n)
    assert y.dtype == (np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32)
    np.testing.assert_array_equal(y, x)
    # Extra trailing bytes are ignored; other buffer types work.
    np.testing.assert_array_equal(unpack_bits(packed + b"\xff\xff", bits, n), x)
    np.testing.assert_array_equal(unpack_bits(memoryview(bytearray(packed)), bits, n), x)
    np.testing.assert_array_equal(unpack_bits(np.frombuffer(packed, np.uint8), bits, n), x)


def test_pack_bit_order_documented_example() -> None:
    assert pack_bits(np.array([1, 2, 7]), 3) == bytes([0b11010001, 0b00000001])
    assert pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 0, 1]), 1) == b"\x01\x01"
    assert pack_bits(np.array([0xABCDE]), 20) == b"\xde\xbc\x0a"
    assert pack_bits(np.zeros(0, dtype=np.int64), 7) == b""
    assert pack_bits(np.array([[1, 2], [3, 0]]), 2) == pack_bits(np.array([1, 2, 3, 0]), 2)
    assert pack_bits(np.array([True, False, True]), 1) == b"\x05"


@pytest.mark.parametrize(
    ("values", "bits", "error", "match"),
    [
        (np.array([4]), 2, ValueError, "values must be < 2\\*\\*bits"),
        (np.array([-1, 0]), 3, ValueError, "values must be non-negative"),
        (np.array([1.0]), 3, TypeError, "values must have an integer dtype"),
        (np.array([1]), 0, ValueError, "bits must be in 1..32"),
        (np.array([1]), 33, ValueError, "bits must be in 1..32"),
        (np.array([1]), True, TypeError, "bits must be an int"),
        (np.array([1]), "3", TypeError, "bits must be an int"),
        (np.array([2**32], dtype=np.uint64), 32, ValueError, "values must be < 2\\*\\*bits"),
    ],
)
def test_pack_bits_validation(values: np.ndarray, bits, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        pack_bits(values, bits)


def test_unpack_bits_truncated() -> None:
    packed = pack_bits(np.arange(10), 5)  # 50 bits -> 7 bytes
    with pytest.raises(CodecError, match=r"truncated: 10 values of 5 bits need 7 bytes, got 6"):
        unpack_bits(packed[:-1], 5, 10)
    with pytest.raises(CodecError):
        unpack_bits(b"", 1, 1)
    assert unpack_bits(b"", 9, 0).dtype == np.uint16
    with pytest.raises(ValueError, match="count must be non-negative"):
        unpack_bits(packed, 5, -1)
    with pytest.raises(TypeError):
        unpack_bits(np.zeros(4, dtype=np.int32), 5, 1)


def test_pack_unpack_large_vectorised() -> None:
    rng = np.random.default_rng(1)
    for bits in (5, 13, 27, 32):
        x = rng.integers(0, 1 << bits, 200_003, dtype=np.uint64)
        np.testing.assert_array_equal(unpack_bits(pack_bits(x, bits), bits, x.size), x)


# ----------------------------------------------------------------------------- code lengths


@FAST
@given(freqs=st.lists(st.integers(0, 10**9), min_size=0, max_size=60))
def test_code_lengths_match_unconstrained_huffman(freqs: list[int]) -> None:
    f = np.array(freqs, dtype=np.int64)
    lengths = code_lengths(f)
    assert lengths.dtype == np.uint8 and lengths.shape == f.shape
    lengths = lengths.astype(np.int64)
    used = f > 0
    assert ((lengths > 0) == used).all()
    if used.sum() >= 2:
        # Complete code (Kraft equality) within the limit.
        assert sum(2.0 ** -int(length) for length in lengths[used]) == 1.0
        assert lengths.max() <= DEFAULT_MAX_LEN
        cost, depth = _huffman_cost(freqs)
        if depth <= DEFAULT_MAX_LEN:  # limit not binding: exactly Huffman's cost
            assert int((f * lengths).sum()) == cost
        else:
            assert int((f * lengths).sum()) >= cost
    elif used.sum() == 1:
        assert lengths[used].tolist() == [1]


@FAST
@given(
    freqs=st.lists(st.integers(0, 2**12), min_size=2, max_size=7),
    max_len=st.integers(1, 5),
)
def test_code_lengths_length_limited_optimal(freqs: list[int], max_len: int) -> None:
    used = sum(1 for x in freqs if x > 0)
    assume(2 <= used <= 2**max_len)
    lengths = code_lengths(np.array(freqs), max_len).astype(np.int64)
    assert lengths.max() <= max_len
    assert int((np.array(freqs) * lengths).sum()) == _brute_force_cost(freqs, max_len)


def test_code_lengths_binding_limit_and_errors() -> None:
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    # Fibonacci weights force a depth-29 Huffman tree; the limit must clamp it.
    lengths = code_lengths(np.array(fib), 8)
    assert lengths.max() == 8
    assert sum(2.0 ** -int(length) for length in lengths) == 1.0
    assert code_lengths(np.array([0, 0, 5])).tolist() == [0, 0, 1]
    assert code_lengths(np.zeros(3, dtype=int)).tolist() == [0, 0, 0]
    assert code_lengths(np.array([0.5, 0.25, 0.25])).tolist() == [1, 2, 2]
    with pytest.raises(ValueError, match="distinct symbols need codes longer"):
        code_lengths(np.ones(5), 2)
    with pytest.raises(ValueError, match="non-negative"):
        code_lengths(np.array([1, -1]))
    with pytest.raises(ValueError, match="max_len"):
        code_lengths(np.array([1, 1]), MAX_CODE_LEN + 1)


# ----------------------------------------------------------------------------- Huffman


@FAST
@given(x=symbol_streams(), chunk=st.sampled_from([None, 16, 64, 4096]))
def test_huffman_round_trip(x: np.ndarray, chunk: int | None) -> None:
    data = encode(x, chunk_size=chunk)
    y = decode(data)
    assert y.ndim == 1 and y.dtype.kind == "u"
    np.testing.assert_array_equal(y, x)
    if x.size:
        # Smallest sufficient unsigned dtype.
        assert np.iinfo(y.dtype).max >= int(x.max())
        if y.dtype != np.uint8:
            smaller = {np.uint16: np.uint8, np.uint32: np.uint16, np.uint64: np.uint32}
            assert int(x.max()) > np.iinfo(smaller[y.dtype.type]).max
    # Also accepts bytearray / memoryview / uint8 arrays.
    np.testing.assert_array_equal(decode(memoryview(bytearray(data))), x)
    np.testing.assert_array_equal(decode(np.frombuffer(data, np.uint8)), x)


@FAST
@given(x=symbol_streams(), max_len=st.integers(4, 12))
def test_huffman_size_near_entropy(x: np.ndarray, max_len: int) -> None:
    k = np.unique(x).size
    assume(x.size > 0 and k <= 2**max_len)
    bits = encoded_size_bits(x, max_len=max_len)
    data = encode(x, max_len=max_len)
    np.testing.assert_array_equal(decode(data), x)
    # Payload is exactly the estimate; the header stays small.
    header = len(data) - (bits + 7) // 8
    assert 8 <= header <= 40 + 12 * k + x.size // 8
    if k == 1:
        assert bits == x.size
        return
    h = _entropy_bits(x)
    assert bits >= h - 1e-6 * x.size
    cost, depth = _huffman_cost(np.unique(x, return_counts=True)[1].tolist())
    if depth <= max_len:
        assert bits == cost
        assert bits < h + x.size  # Huffman redundancy < 1 bit / symbol
    else:
        # Limit binds: no better than Huffman, no worse than a fixed-length code.
        assert cost <= bits <= x.size * int(np.ceil(np.log2(k)))


@pytest.mark.parametrize(
    "x",
    [
        np.zeros(0, dtype=np.int64),
        np.array([7]),
        np.full(1000, 2**40),
        np.array([0, 1]),
        np.array([3, 3, 3, 1, 0, 3]),
        np.array([2**63 - 1, 0, 2**63 - 1], dtype=np.uint64),
        np.array([True, False, True, True]),
        np.arange(12).reshape(3, 4),
    ],
    ids=["empty", "one", "constant", "two", "small", "max-symbol", "bool", "2d"],
)
def test_huffman_edge_cases(x: np.ndarray) -> None:
    y = decode(encode(x))
    np.testing.assert_array_equal(y, x.ravel().astype(np.uint64))


def test_huffman_empty_and_single_symbol_layout() -> None:
    empty = encode(np.zeros(0, dtype=np.int64))
    assert empty == _seal(b"\x00")
    assert decode(empty).dtype == np.uint8 and decode(empty).size == 0
    # Single distinct symbol: 1-bit code "0", so the payload is n zero bits.
    data = encode(np.full(20, 5))
    body = _varint(20) + _varint(1) + b"\x01" + _varint(1) + _varint(5) + _varint(0)
    assert data == _seal(body + _varint(20) + bytes(3))
    np.testing.assert_array_equal(decode(data), np.full(20, 5, dtype=np.uint8))


def test_huffman_all_distinct_and_big_alphabet() -> None:
    rng = np.random.default_rng(3)
    x = rng.permutation(2**16 + 1)
    data = encode(x)
    np.testing.assert_array_equal(decode(data), x)
    # 2**16 symbols get 16 bits, the one extra forces a pair of 17-bit codes.
    assert encoded_size_bits(x) == 16 * (2**16 - 1) + 2 * 17
    assert decode(data).dtype == np.uint32
    sparse = np.sort(rng.choice(2**40, 3000, replace=False))
    np.testing.assert_array_equal(decode(encode(sparse)), sparse)
    with pytest.raises(ValueError, match="distinct symbols"):
        encode(np.arange(300), max_len=8)


def test_huffman_many_chunks() -> None:
    rng = np.random.default_rng(4)
    x = np.minimum(rng.geometric(0.2, 300_001) - 1, 40)
    np.testing.assert_array_equal(decode(encode(x)), x)
    np.testing.assert_array_equal(decode(encode(x, chunk_size=16)), x)
    np.testing.assert_array_equal(decode(encode(x[:4097], chunk_size=65536)), x[:4097])


@pytest.mark.parametrize(
    ("symbols", "kwargs", "error", "match"),
    [
        (np.array([-1, 2]), {}, ValueError, "non-negative"),
        (np.array([1.5]), {}, TypeError, "integer dtype"),
        (np.array([2**63], dtype=np.uint64), {}, ValueError, "2\\*\\*63"),
        (np.array([1, 2]), {"chunk_size": 100}, ValueError, "chunk_size"),
        (np.array([1, 2]), {"chunk_size": 8}, ValueError, "chunk_size"),
        (np.array([1, 2]), {"chunk_size": 16.0}, TypeError, "chunk_size"),
        (np.array([1, 2]), {"max_len": 0}, ValueError, "max_len"),
        (np.array([1, 2]), {"max_len": 21}, ValueError, "max_len"),
        (np.array([1, 2]), {"max_len": "8"}, TypeError, "max_len"),
    ],
)
def test_encode_validation(symbols: np.ndarray, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        encode(symbols, **kwargs)


# ----------------------------------------------------------------------------- decoder errors


def test_decode_truncation_messages() -> None:
    data = encode(np.arange(100) % 7)
    with pytest.raises(CodecError, match=r"truncated Huffman stream: payload needs \d+ bytes"):
        decode(data[:-1])
    with pytest.raises(CodecError, match=r"truncated Huffman stream: 5 bytes"):
        decode(data[:5])
    with pytest.raises(CodecError, match="ran out of bytes reading max code length"):
        decode(encode(np.array([0, 1, 2, 1]))[:9])
    with pytest.raises(CodecError, match="trailing bytes"):
        decode(data + b"\x00")


def test_decode_bad_header_messages() -> None:
    data = encode(np.arange(100) % 7)
    with pytest.raises(CodecError, match="bad magic"):
        decode(b"XX" + data[2:])
    with pytest.raises(CodecError, match="unsupported Huffman stream version 2"):
        decode(data[:2] + b"\x02" + data[3:])
    flipped = bytearray(data)
    flipped[-1] ^= 0x80
    with pytest.raises(CodecError, match="checksum mismatch"):
        decode(bytes(flipped))
    # A header claiming 2**62 symbols in a few bytes is refused before allocating.
    with pytest.raises(CodecError, match="cannot fit"):
        decode(_seal(_varint(2**62) + _varint(2) + b"\x01"))
    with pytest.raises(CodecError, match="alphabet size"):
        decode(_seal(_varint(8) + _varint(2**40) + b"\x01" + bytes(8)))
    with pytest.raises(CodecError, match="max code length"):
        decode(_seal(_varint(8) + _varint(2) + b"\x15" + bytes(8)))
    with pytest.raises(CodecError, match="exceeds 9 bytes"):
        decode(_seal(_varint(8) + b"\xff" * 12))


def _three_symbol_body(lengths_byte: int, L: int = 2, n: int = 3) -> bytes:
    """n symbols over alphabet {0, 1, 2}: one run, lengths in mode 0 (width 1)."""
    return (
        _varint(n)
        + _varint(3)
        + bytes([L])
        + _varint(1)
        + _varint(0)
        + _varint(2)
        + bytes([0, lengths_byte])
        + bytes([6])  # chunk_log2: a single chunk
    )


def test_decode_invalid_code_lengths() -> None:
    # lengths [1, 1, 2] (stored minus one, LSB first: 0b100): Kraft 5/4.
    with pytest.raises(CodecError, match="over-subscribed"):
        decode(_seal(_three_symbol_body(0b100) + _varint(3) + b"\x00"))
    # lengths [2, 2, 2]: Kraft 3/4.
    with pytest.raises(CodecError, match="incomplete"):
        decode(_seal(_three_symbol_body(0b111) + _varint(4) + b"\x00"))
    # A valid [1, 2, 2] code decodes: "0" -> 0, "10" -> 1, "11" -> 2.
    ok = _seal(_three_symbol_body(0b110) + _varint(5) + bytes([0b01011000]))
    assert decode(ok).tolist() == [0, 1, 2]


def test_decode_past_end_and_bad_chunks() -> None:
    # Payload "11" "11" "1|0": the third code runs past the 5 recorded bits.
    with pytest.raises(CodecError, match="decoding ends at bit 6, expected 5"):
        decode(_seal(_three_symbol_body(0b110) + _varint(5) + bytes([0b11111000])))
    with pytest.raises(CodecError, match="padding"):
        decode(_seal(_three_symbol_body(0b110) + _varint(6) + bytes([0b11111110])))

    def two_chunks(base: int, total: int) -> bytes:
        # 32 zero bits = 32 times symbol 0 ("0"), two chunks of 16; chunk 0 has `base` bits.
        body = _three_symbol_body(0b110, n=32)[:-1] + bytes([4])
        body += _varint(base) + b"\x00" + _varint(total)
        return _seal(body + bytes((total + 7) // 8))

    assert decode(two_chunks(16, 32)).tolist() == [0] * 32
    with pytest.raises(CodecError, match="chunk offsets inconsistent"):
        decode(two_chunks(17, 32))
    with pytest.raises(CodecError, match="chunk 0 ends at bit 16, expected 18"):
        decode(two_chunks(18, 34))
    with pytest.raises(CodecError, match="chunk bit length exceeds"):
        decode(two_chunks(10**6, 32))
    with pytest.raises(CodecError, match="chunk bit length out of range"):
        decode(two_chunks(15, 32))


# ----------------------------------------------------------------------------- fuzzing


def _decode_or_error(data: bytes) -> np.ndarray | None:
    """Decode; only CodecError is an acceptable failure."""
    try:
        return decode(data)
    except CodecError:
        return None


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_error(data)
    _decode_or_error(b"HF\x01" + data)
    # With a valid fixed header and checksum the parser goes deep into the body.
    _decode_or_error(_seal(data))


_SAMPLES = [
    np.zeros(0, dtype=np.int64),
    np.full(37, 9),
    np.array([5, 1, 5, 5, 300, 5]),
    np.arange(200) % 13,
    np.minimum(np.random.default_rng(5).geometric(0.3, 3000), 20),
    np.random.default_rng(6).choice(2**40, 50),
]
_ENCODED = [encode(x, chunk_size=16 if x.size > 100 else None) for x in _SAMPLES]


@st.composite
def mutations(draw: st.DrawFn) -> tuple[int, bytes]:
    i = draw(st.integers(0, len(_SAMPLES) - 1))
    data = bytearray(_ENCODED[i])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "set", "insert", "delete", "extend"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "truncate":
            del data[pos:]
        elif op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=4))
    return i, bytes(data)


@FUZZ
@given(case=mutations())
def test_fuzz_mutations(case: tuple[int, bytes]) -> None:
    i, data = case
    out = _decode_or_error(data)
    if out is not None:  # the checksum leaves only the untouched original
        np.testing.assert_array_equal(out, _SAMPLES[i])
    # Re-sealed mutations pass the checksum: structural checks alone must hold.
    _decode_or_error(_reseal(data))


# ----------------------------------------------------------------------------- wire


def _leb128(value: int) -> bytes:
    """The textbook LEB128 loop, an oracle for the library's two encoders."""
    out = []
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@FAST
@given(st.lists(st.integers(0, 2**63 - 1), max_size=50))
def test_varints_round_trip(values: list[int]) -> None:
    data = b"".join(_leb128(v) for v in values)
    assert b"".join(encode_varint(v) for v in values) == data
    assert encode_varints(np.array(values, dtype=np.uint64)) == data
    rd = BoundedReader(data)
    assert [rd.varint("v") for _ in values] == values and rd.remaining == 0
    assert BoundedReader(data).varints(len(values), "v").tolist() == values


def test_wire_edges() -> None:
    assert len(encode_varint(2**63 - 1)) == 9
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
        encode_varint(2**63)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
        encode_varint(-1)
    with pytest.raises(TypeError, match="value must be an int"):
        encode_varint(1.0)
    with pytest.raises(ValueError, match="varint longer than 9 bytes"):
        BoundedReader(b"\xff" * 10).varint("v")
    with pytest.raises(ValueError, match="truncated: v needs 1 bytes, 0 left"):
        BoundedReader(b"\x80").varint("v")
    with pytest.raises(ValueError, match="truncated"):
        BoundedReader(b"\x80\x80").varints(2, "v")
    with pytest.raises(ValueError, match="longer than 9"):
        BoundedReader(b"\xff" * 20).varints(2, "v")
    rd = BoundedReader(b"abc")
    with pytest.raises(ValueError, match="truncated: x needs 4 bytes, 3 left"):
        rd.take(4, "x")
    assert rd.pos == 0 and bytes(rd.take(3, "x")) == b"abc"
    assert [zigzag_decode(zigzag_encode(v)) for v in range(-5, 6)] == list(range(-5, 6))
    assert [unsigned_dtype(v).itemsize for v in (0, 255, 256, 65536, 2**32)] == [1, 1, 2, 4, 8]
    assert as_uint8(np.arange(3, dtype=np.uint8)).tolist() == [0, 1, 2]
    with pytest.raises(TypeError, match="bytes-like"):
        as_uint8("abc")
