"""The exception tree (ipamd.domain.errors): CNI codes, the gRPC status table, error_for_code, to_cni.

Field cases: docs/cni-contract.md §4 (codes and the error object), house style "one table maps exceptions to gRPC
status codes; the CNI code travels with the status so clients rebuild the same exception".
"""

from __future__ import annotations

import inspect
import json

import grpc
import pytest

from ipamd.domain import errors
from ipamd.domain.errors import ERROR_BY_CODE, GRPC_STATUS_BY_CODE, IpamError, error_for_code


def all_error_classes() -> list[type[IpamError]]:
    return [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
            if issubclass(obj, IpamError) and obj.__module__ == errors.__name__]


EXPECTED = {
    "IpamError": (999, "INTERNAL"),
    "IncompatibleVersion": (1, "FAILED_PRECONDITION"),
    "UnsupportedField": (2, "INVALID_ARGUMENT"),
    "InvalidEnvironment": (4, "INVALID_ARGUMENT"),
    "IOFailure": (5, "INVALID_ARGUMENT"),
    "DecodeFailure": (6, "INVALID_ARGUMENT"),
    "InvalidConfig": (7, "INVALID_ARGUMENT"),
    "TryAgainLater": (11, "UNAVAILABLE"),
    "NotAvailable": (50, "UNAVAILABLE"),
    "PoolExhausted": (100, "RESOURCE_EXHAUSTED"),
    "AddressUnavailable": (101, "ALREADY_EXISTS"),
    "CheckNoAllocation": (102, "NOT_FOUND"),
    "CheckMismatch": (103, "FAILED_PRECONDITION"),
    # admin API: a named pool that still holds addresses cannot be deleted (B27, docs/configuration.md)
    "PoolInUse": (120, "FAILED_PRECONDITION"),
    # deep CHECK (docs/errors.md, docs/namespace-checks.md)
    "CheckInterfaceMissing": (110, "FAILED_PRECONDITION"),
    "CheckInterfaceDown": (111, "FAILED_PRECONDITION"),
    "CheckAddressMismatch": (112, "FAILED_PRECONDITION"),
    "CheckRouteMissing": (113, "FAILED_PRECONDITION"),
}


def test_expected_table_names_every_class() -> None:
    assert {cls.__name__ for cls in all_error_classes()} == set(EXPECTED)


@pytest.mark.parametrize("name, code, status", [(n, c, s) for n, (c, s) in EXPECTED.items()])
def test_cni_code_and_grpc_status(name: str, code: int, status: str) -> None:
    cls = getattr(errors, name)
    assert cls.cni_code == code
    assert cls.grpc_status == status


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_tables_cover_every_class(cls: type[IpamError]) -> None:
    assert ERROR_BY_CODE[cls.cni_code] is cls
    assert GRPC_STATUS_BY_CODE[cls.cni_code] == cls.grpc_status
    assert isinstance(grpc.StatusCode[GRPC_STATUS_BY_CODE[cls.cni_code]], grpc.StatusCode)


def test_codes_are_unique() -> None:
    codes = [cls.cni_code for cls in all_error_classes()]
    assert len(codes) == len(set(codes))
    assert set(ERROR_BY_CODE) == set(GRPC_STATUS_BY_CODE) == set(codes)


def test_every_class_derives_from_the_base() -> None:
    for cls in all_error_classes():
        assert issubclass(cls, IpamError) and issubclass(cls, Exception)


def test_plugin_codes_start_at_100() -> None:
    # §4: codes 0-99 are the spec's well-known list; ours start at 100.
    well_known = {1, 2, 3, 4, 5, 6, 7, 8, 11, 50, 51, 999}
    for cls in all_error_classes():
        assert cls.cni_code in well_known or cls.cni_code >= 100


def test_store_errors_carry_code_11() -> None:
    from ipamd.store.base import StoreOutcomeUnknown, StoreUnavailable
    assert StoreUnavailable.cni_code == 11 and StoreOutcomeUnknown.cni_code == 11
    assert GRPC_STATUS_BY_CODE[StoreUnavailable.cni_code] == "UNAVAILABLE"


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_error_for_code_round_trip(cls: type[IpamError]) -> None:
    err = cls("short message", "longer details")
    back = error_for_code(err.cni_code, err.msg, err.details)
    assert type(back) is cls
    assert (back.cni_code, back.msg, back.details) == (err.cni_code, "short message", "longer details")
    assert back.to_cni("1.0.0") == err.to_cni("1.0.0")


@pytest.mark.parametrize("code", [3, 8, 51, 104, 12345])
def test_error_for_unknown_code_keeps_the_code(code: int) -> None:
    err = error_for_code(code, "m", "d")
    assert type(err) is IpamError
    assert err.cni_code == code
    assert err.to_cni("1.1.0")["code"] == code
    # the class attribute is untouched
    assert IpamError.cni_code == 999


@pytest.mark.parametrize("details, expected_keys", [("", {"cniVersion", "code", "msg"}),
                                                     ("why", {"cniVersion", "code", "msg", "details"})])
def test_to_cni_shape(details: str, expected_keys: set[str]) -> None:
    obj = errors.PoolExhausted("pool exhausted", details).to_cni("0.4.0")
    assert set(obj) == expected_keys
    assert obj["cniVersion"] == "0.4.0" and obj["code"] == 100 and obj["msg"] == "pool exhausted"
    assert isinstance(obj["code"], int) and obj["code"] >= 0
    if details:
        assert obj["details"] == details
    json.dumps(obj)


def test_str_is_msg() -> None:
    err = errors.InvalidConfig("rangeStart 10.1.3.1 is outside subnet 10.1.2.0/24", "x")
    assert str(err) == "rangeStart 10.1.3.1 is outside subnet 10.1.2.0/24"
