"""Request builders, message classification and frame decoding (pure functions)."""

from __future__ import annotations

import json

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiyotaka_ws import ConfigurationError, DecodeError
from kiyotaka_ws.channels import Channel, make_spec
from kiyotaka_ws.protocol import (
    FrameDecoder,
    Kind,
    authenticate,
    classify,
    error_details,
    subscribe,
    unsubscribe,
)

CAP = 1 << 20


def test_builders():
    spec = make_spec(Channel.BLOCK_BOOK_SNAPSHOT, exchange="BINANCE_FUTURES", symbol="BTC",
                     options={"block_size": 25, "max_depth": 500, "group_by_coin": True, "quote": "COIN"})
    sub = json.loads(subscribe(7, [spec.wire()], "brotli"))
    assert sub == {"jsonrpc": "2.0", "id": 7, "method": "public/subscribe",
                   "params": {"channels": [{"type": "BLOCK_BOOK_SNAPSHOT", "exchange": "BINANCE_FUTURES",
                                            "symbol": "BTC", "category": "*", "blockSize": "25",
                                            "groupByType": "1", "maxDepth": "500", "quote": "COIN"}],
                              "version": "v2", "compression": "brotli"}}
    assert "compression" not in json.loads(subscribe(1, [], None))["params"]
    assert json.loads(unsubscribe(8, [spec.wire()]))["params"]["channels"] == [spec.wire()]
    auth = json.loads(authenticate(1, "secret"))
    assert auth == {"jsonrpc": "2.0", "id": 1, "method": "public/authenticate", "params": {"token": "secret"}}


def test_classify_and_error_details():
    assert classify({"points": []}) is Kind.DATA
    assert classify({"jsonrpc": "2.0", "id": 3, "result": None}) is Kind.RESPONSE
    assert classify({"id": 3, "error": {"code": 1, "message": "m"}}) is Kind.RESPONSE
    assert classify({"error": "INVALID_API_KEY", "message": "bad", "retry_after": 3}) is Kind.ERROR
    assert classify({"hello": 1}) is Kind.UNKNOWN and classify([1]) is Kind.UNKNOWN
    assert error_details({"error": {"code": -32602, "message": "bad symbol", "data": 1}}) == (-32602, "bad symbol", 1)
    assert error_details({"error": "INVALID_PARAMS", "message": "m", "retry_after": 5}) == (
        "INVALID_PARAMS", "m", {"retry_after": 5})
    assert error_details({"error": "TIMEOUT"}) == ("TIMEOUT", "TIMEOUT", None)


def test_frames_text_binary_and_fallback(json_parser):
    dec = FrameDecoder(CAP)
    doc = {"points": [{"a": 1}]}
    raw = json.dumps(doc).encode()
    assert dec.decode(raw, binary=False) == doc
    assert dec.decode(brotli.compress(raw), binary=True) == doc
    assert dec.decode(raw, binary=True) == doc  # plain JSON in a binary frame


@pytest.mark.parametrize("payload,binary,words", [
    (b"not json", False, "not JSON"),
    (b"\xff\xfe{\"a\":1}", False, "UTF-8"),
    (b"\x8b\x00garbage-not-brotli", True, "neither brotli nor JSON"),
    (brotli.compress(b"not json at all"), True, "not JSON"),
    (brotli.compress(b'{"points": []}')[:-3], True, "truncated"),
    (b"[" * 100_000, False, "not JSON"),
    (b'{"a": "\xff"}', True, "invalid UTF-8"),                    # plain JSON in a binary frame, bad UTF-8
    (brotli.compress(b'{"a": "\xc3"}'), True, "invalid UTF-8"),   # brotli, truncated UTF-8 sequence
    (b'{"a": "\xed\xa0\x80"}', True, "invalid UTF-8"),          # an encoded surrogate is not UTF-8
    (b'\xef\xbb\xbf{"a": 1}', False, "not JSON"),                # a BOM: valid UTF-8, not JSON text
    (b'\xff\xfe{\x00"\x00a\x00"\x00:\x001\x00}\x00', False, "invalid UTF-8"),  # UTF-16: refused by both
    (b'{"a": NaN}', False, "not JSON"),
    (b'{"a": -Infinity}', True, "not JSON"),
])
def test_bad_frames_raise_decode_error(payload, binary, words, json_parser):
    with pytest.raises(DecodeError) as info:
        FrameDecoder(CAP).decode(payload, binary)
    assert words in str(info.value) and len(info.value.excerpt) <= 200


def test_json_parser_selection(monkeypatch):
    import subprocess
    import sys

    from kiyotaka_ws import protocol

    code = "from kiyotaka_ws import protocol; print(protocol.json_parser())"
    for value, expected in (("stdlib", "stdlib"), ("orjson", "orjson"), ("", "orjson")):
        env = {**__import__("os").environ, "KIYOTAKA_WS_JSON": value}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert result.stdout.strip() == expected
    env = {**__import__("os").environ, "KIYOTAKA_WS_JSON": "simdjson"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "KIYOTAKA_WS_JSON" in result.stderr and "simdjson" in result.stderr
    previous = protocol.json_parser()
    try:
        assert protocol.use_json_parser("stdlib") == "stdlib" and protocol.json_parser() == "stdlib"
        with pytest.raises(ValueError, match="expected one of orjson, stdlib"):
            protocol.use_json_parser("ujson")
    finally:
        protocol.use_json_parser(previous)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(doc=_JSON_VALUES, compress=st.booleans())
def test_both_parsers_read_protocol_json_alike(doc, compress):
    """Within the protocol's domain (no lone surrogates, 64-bit integers, finite numbers) the
    parsers agree exactly, types included (an int stays an int, a float a float)."""
    from kiyotaka_ws import protocol

    payload = json.dumps(doc, ensure_ascii=bool(compress)).encode()
    if compress:
        payload = brotli.compress(payload)
    previous = protocol.json_parser()
    try:
        results = []
        for name in ("orjson", "stdlib"):
            protocol.use_json_parser(name)
            results.append(FrameDecoder(CAP).decode(payload, binary=compress))
    finally:
        protocol.use_json_parser(previous)
    assert repr(results[0]) == repr(results[1])


def test_decompression_bomb_is_bounded():
    bomb = brotli.compress(b"0" * (128 * 2**20), quality=5)  # 128 MiB of zeros in a few hundred bytes
    assert len(bomb) < 10_000
    with pytest.raises(DecodeError, match="max_frame_bytes"):
        FrameDecoder(CAP).decode(bomb, binary=True)


def test_oversized_text_frame():
    with pytest.raises(DecodeError, match="exceeds max_frame_bytes"):
        FrameDecoder(1024).decode(b" " * 2048, binary=False)


def test_spec_validation_names_the_argument():
    cases = [({"exchange": ""}, "exchange"), ({"symbol": None}, "symbol"), ({"category": 3}, "category")]
    for override, name in cases:
        kwargs = {"exchange": "BINANCE", "symbol": "BTCUSDT", **override}
        with pytest.raises(ConfigurationError, match=f"^{name}:"):
            make_spec("TRADE", **kwargs)
    with pytest.raises(ConfigurationError, match="^channel:"):
        make_spec("NOPE", exchange="X", symbol="Y")
    with pytest.raises(ConfigurationError, match="^block_size:"):
        make_spec("BLOCK_BOOK_SNAPSHOT", exchange="X", symbol="Y")
    for name, value in [("block_size", -1), ("block_size", "abc"), ("max_depth", 1.5), ("max_depth", 0),
                        ("update_frequency", 5), ("batch_interval", "soon"), ("group_by_coin", "yes")]:
        options = {"block_size": 25, name: value}
        with pytest.raises(ConfigurationError, match=f"^{name}:"):
            make_spec("BLOCK_BOOK_SNAPSHOT", exchange="X", symbol="Y", options=options)
    with pytest.raises(ConfigurationError, match="^params:"):
        make_spec("TRADE", exchange="X", symbol="Y", params={"symbol": "Z"})


def test_wire_values_are_strings():
    spec = make_spec("BLOCK_BOOK_SNAPSHOT", exchange="X", symbol="Y",
                     options={"block_size": 0.5, "max_depth": "500", "update_frequency": "1s"},
                     extra_params={"flag": True, "n": 3, "f": 25.0})
    wire = spec.wire()
    assert wire["blockSize"] == "0.5" and wire["maxDepth"] == "500" and wire["updateFrequency"] == "1s"
    assert (wire["flag"], wire["n"], wire["f"]) == ("1", "3", "25")
    same = make_spec("BLOCK_BOOK_SNAPSHOT", exchange="X", symbol="Y",
                     options={"block_size": "0.5", "max_depth": 500, "update_frequency": "1s"},
                     extra_params={"f": 25, "n": "3", "flag": "1"})
    assert spec == same and hash(spec) == hash(same)  # identical specs share one wire subscription
    assert Channel.BLOCK_BOOK_SNAPSHOT.family == "book" and Channel.TRADE.family == "nonbook"


def test_backoff_is_exponential_jittered_and_capped():
    from kiyotaka_ws.session import Backoff

    low, high = Backoff(0.5, 30.0, rng=lambda: 0.0), Backoff(0.5, 30.0, rng=lambda: 0.999999)
    assert [low.delay(n) for n in range(4)] == [0.5, 0.5, 0.5, 0.5]  # never below backoff_initial
    assert [round(high.delay(n), 3) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert high.delay(10_000) <= 30.0  # no overflow for long outages
