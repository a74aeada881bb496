"""Every etcd record decoder turns any malformed value into ``ValueError``, the one error its readers skip or
report (ipamd/domain/model.py): also JSON nested deeper than the interpreter's stack, which ``json.loads`` raises as
``RecursionError`` (found by attacking named pools: a spec nested 100,000 deep made every ``pool create`` a 999)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ipamd.domain.model import (
    CoolingRecord,
    HandleRecord,
    IpRecord,
    PoolRecord,
    decode,
    decode_block_record,
)

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "decode": decode, "PoolRecord": PoolRecord.decode, "IpRecord": IpRecord.decode,
    "HandleRecord": HandleRecord.decode, "CoolingRecord": CoolingRecord.decode, "block": decode_block_record,
}
DEEP = {"list": b"[" * 100_000 + b"]" * 100_000, "object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000}


@pytest.mark.parametrize("shape", sorted(DEEP))
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_json_nested_too_deeply_is_a_value_error(name: str, shape: str) -> None:
    with pytest.raises(ValueError):
        DECODERS[name](DEEP[shape])


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1]", b"\xff"])
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_not_a_json_object_is_a_value_error(name: str, raw: bytes) -> None:
    with pytest.raises(ValueError):
        DECODERS[name](raw)
