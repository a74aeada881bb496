"""The one exception tree of ipamd, each class carrying its CNI error code.

Codes come from the CNI spec (SPEC.md "Error" section, well-known codes 1-11, 50-51, 999) and from our own
plugin-specific range (>= 100), see ``docs/errors.md``::

    IpamError (999, internal)                      base; unexpected failures map here
    ├── IncompatibleVersion (1)                    cniVersion unsupported / verb not allowed at that version
    ├── UnsupportedField (2)                       a recognised option we cannot honour
    ├── InvalidEnvironment (4)                     CNI_* variables missing or malformed
    ├── IOFailure (5)                              stdin unreadable
    ├── DecodeFailure (6)                          stdin not a JSON object, cniVersion not a string
    ├── InvalidConfig (7)                          network configuration invalid
    ├── TryAgainLater (11)                         daemon not ready, datastore unreachable, deadline passed
    ├── NotAvailable (50)                          STATUS: cannot serve ADD now
    ├── PoolExhausted (100)                        no free address in a range set
    ├── AddressUnavailable (101)                   a requested address is outside the ranges or taken
    ├── PoolInUse (120)                            admin: a named pool still holds addresses (B27)
    ├── CheckNoAllocation (102)                    CHECK: the attachment holds nothing
    ├── CheckMismatch (103)                        CHECK: prevResult lists another address
    ├── CheckInterfaceMissing (110)                CHECK: CNI_IFNAME is not in the namespace
    ├── CheckInterfaceDown (111)                   CHECK: the interface is down or has no carrier
    ├── CheckAddressMismatch (112)                 CHECK: an allocated address is missing or has another prefix
    └── CheckRouteMissing (113)                    CHECK: a route of the result is missing

Every class has ``cni_code`` and a gRPC status name (``grpc_status``); :data:`GRPC_STATUS_BY_CODE` is the one
table the gRPC adapter uses, and it sends the CNI code along as trailing metadata so clients rebuild the same
exception with :func:`error_for_code`.
"""

from __future__ import annotations


class IpamError(Exception):
    """Base of all ipamd errors. ``msg`` is short, ``details`` optional and longer (CNI error object fields)."""

    cni_code = 999
    grpc_status = "INTERNAL"

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def to_cni(self, cni_version: str) -> dict[str, object]:
        """The CNI error object (SPEC.md "Error"): ``{"cniVersion", "code", "msg", "details"?}``."""
        out: dict[str, object] = {"cniVersion": cni_version, "code": self.cni_code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class IncompatibleVersion(IpamError):
    cni_code = 1
    grpc_status = "FAILED_PRECONDITION"


class UnsupportedField(IpamError):
    cni_code = 2
    grpc_status = "INVALID_ARGUMENT"


class InvalidEnvironment(IpamError):
    cni_code = 4
    grpc_status = "INVALID_ARGUMENT"


class IOFailure(IpamError):
    cni_code = 5
    grpc_status = "INVALID_ARGUMENT"


class DecodeFailure(IpamError):
    cni_code = 6
    grpc_status = "INVALID_ARGUMENT"


class InvalidConfig(IpamError):
    cni_code = 7
    grpc_status = "INVALID_ARGUMENT"


class TryAgainLater(IpamError):
    cni_code = 11
    grpc_status = "UNAVAILABLE"


class NotAvailable(IpamError):
    cni_code = 50
    grpc_status = "UNAVAILABLE"


class PoolExhausted(IpamError):
    cni_code = 100
    grpc_status = "RESOURCE_EXHAUSTED"


class AddressUnavailable(IpamError):
    cni_code = 101
    grpc_status = "ALREADY_EXISTS"


class PoolInUse(IpamError):
    """Admin API: a named pool cannot be deleted while it holds addresses; the message gives their count (field
    case B27, docs/configuration.md "Named pools"). Drain it (``ipamctl pool drain``), let DEL empty it, then
    delete it."""

    cni_code = 120
    grpc_status = "FAILED_PRECONDITION"


class CheckNoAllocation(IpamError):
    cni_code = 102
    grpc_status = "NOT_FOUND"


class CheckMismatch(IpamError):
    cni_code = 103
    grpc_status = "FAILED_PRECONDITION"


class CheckInterfaceMissing(IpamError):
    """Deep CHECK: the namespace has no interface ``CNI_IFNAME`` (docs/namespace-checks.md)."""

    cni_code = 110
    grpc_status = "FAILED_PRECONDITION"


class CheckInterfaceDown(IpamError):
    """Deep CHECK: the interface is administratively down or has no carrier."""

    cni_code = 111
    grpc_status = "FAILED_PRECONDITION"


class CheckAddressMismatch(IpamError):
    """Deep CHECK: an allocated address is not on the interface, or is there with another prefix length."""

    cni_code = 112
    grpc_status = "FAILED_PRECONDITION"


class CheckRouteMissing(IpamError):
    """Deep CHECK: a route of the result is not in the namespace through the interface via its gateway."""

    cni_code = 113
    grpc_status = "FAILED_PRECONDITION"


_ALL: tuple[type[IpamError], ...] = (
    IpamError, IncompatibleVersion, UnsupportedField, InvalidEnvironment, IOFailure, DecodeFailure,
    InvalidConfig, TryAgainLater, NotAvailable, PoolExhausted, AddressUnavailable, PoolInUse, CheckNoAllocation,
    CheckMismatch, CheckInterfaceMissing, CheckInterfaceDown, CheckAddressMismatch, CheckRouteMissing,
)

#: CNI code -> exception class (the table clients use to rebuild an error from a gRPC status).
ERROR_BY_CODE: dict[int, type[IpamError]] = {cls.cni_code: cls for cls in _ALL}

#: CNI code -> gRPC status code name (``grpc.StatusCode[name]``).
GRPC_STATUS_BY_CODE: dict[int, str] = {cls.cni_code: cls.grpc_status for cls in _ALL}


def error_for_code(code: int, msg: str, details: str = "") -> IpamError:
    """Rebuild the exception for a CNI ``code`` (unknown codes become :class:`IpamError` keeping the code)."""
    cls = ERROR_BY_CODE.get(code)
    if cls is None:
        err = IpamError(msg, details)
        err.cni_code = code
        return err
    return cls(msg, details)
