"""Self-signed X.509 v3 certificates (RequestType = Cert), with the request's extensions plus an AKI."""

from __future__ import annotations

import calendar
import secrets
from datetime import UTC, datetime, timedelta

from asn1crypto import core, x509

from tokenagent.errors import PolicyError
from tokenagent.inf.diagnostics import Diagnostic, InfError
from tokenagent.inf.policy import RequestPolicy
from tokenagent.request import extensions
from tokenagent.request.algorithms import signature_algorithm
from tokenagent.request.pkcs10 import public_key_info, request_extensions, subject_name
from tokenagent.request.signer import Signer

_FIXED_UNITS = {
    "Weeks": timedelta(weeks=1),
    "Days": timedelta(days=1),
    "Hours": timedelta(hours=1),
    "Minutes": timedelta(minutes=1),
    "Seconds": timedelta(seconds=1),
}


def _fail(policy: RequestPolicy, field_name: str, message: str) -> PolicyError:
    origin = policy.origins.get(field_name)
    if origin is not None and origin.line:
        return InfError(Diagnostic(policy.filename, origin.line, "error", message))
    return PolicyError(f"{policy.filename}: {message}")


def _utc(moment: datetime) -> datetime:
    # naive datetimes are UTC, as the INF parser reads dates; X.509 times have whole seconds
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def _add_months(moment: datetime, months: int) -> datetime:
    """Calendar months: Jan 31 + 1 month is the last day of February, as .NET's AddMonths does."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def validity(policy: RequestPolicy, now: datetime) -> tuple[datetime, datetime]:
    """(NotBefore, NotAfter) in UTC: NotBefore or now; NotAfter, or ValidityPeriodUnits x ValidityPeriod, or 1 year."""
    start = _utc(policy.not_before or now)
    try:
        if policy.not_after is not None:
            end = _utc(policy.not_after)
        elif policy.validity_period and policy.validity_period_units:
            units, period = policy.validity_period_units, policy.validity_period
            if period == "Years":
                end = _add_months(start, 12 * units)
            elif period == "Months":
                end = _add_months(start, units)
            else:
                end = start + units * _FIXED_UNITS[period]
        else:
            end = _add_months(start, 12)  # certreq's default: one year
    except (ValueError, OverflowError):
        raise _fail(policy, "validity_period_units", "the validity period ends after the year 9999") from None
    if end <= start:
        raise _fail(
            policy,
            "not_after",
            f"NotAfter {end.isoformat()} is not after NotBefore {start.isoformat()}",
        )
    return start, end


def _time(moment: datetime) -> x509.Time:
    # RFC 5280 4.1.2.5: UTCTime for 1950-2049, GeneralizedTime otherwise
    if 1950 <= moment.year < 2050:
        return x509.Time(name="utc_time", value=moment)
    return x509.Time(name="general_time", value=moment)


def random_serial() -> int:
    """16 random bytes with the first bit clear: positive (RFC 5280 4.1.2.2), never zero."""
    while True:
        raw = bytearray(secrets.token_bytes(16))
        raw[0] &= 0x7F
        serial = int.from_bytes(raw, "big")
        if serial:
            return serial


def _key_id(ext: x509.Extension) -> bytes | None:
    try:
        return core.OctetString.load(bytes(ext["extn_value"]), strict=True).native
    except (ValueError, TypeError):
        return None  # an [Extensions] SKI that is not an OCTET STRING: no AKI can point to it


def certificate_extensions(policy: RequestPolicy, spki_der: bytes) -> list[x509.Extension]:
    exts = request_extensions(policy, spki_der)
    oids = [e["extn_id"].dotted for e in exts]
    if extensions.OID_SUBJECT_KEY_IDENTIFIER in oids and extensions.OID_AUTHORITY_KEY_IDENTIFIER not in oids:
        key_id = _key_id(exts[oids.index(extensions.OID_SUBJECT_KEY_IDENTIFIER)])
        if key_id:
            exts.append(extensions.authority_key_identifier(key_id))
    return exts


def self_signed_certificate(policy: RequestPolicy, spki_der: bytes, signer: Signer, *, now: datetime) -> bytes:
    signature_algorithm(policy)  # refuses DSA and DH
    if policy.subject is None:
        raise _fail(policy, "subject", "RequestType = Cert needs a Subject: a certificate's issuer cannot be empty")
    name = subject_name(policy)
    not_before, not_after = validity(policy, now)
    tbs: dict[str, object] = {
        "version": "v3",
        "serial_number": random_serial(),
        "signature": signer.algorithm.identifier(),
        "issuer": name,
        "validity": {"not_before": _time(not_before), "not_after": _time(not_after)},
        "subject": name,
        "subject_public_key_info": public_key_info(spki_der),
    }
    exts = certificate_extensions(policy, spki_der)
    if exts:
        tbs["extensions"] = exts
    tbs_certificate = x509.TbsCertificate(tbs)
    signature = signer.sign(tbs_certificate.dump())
    certificate = x509.Certificate(
        {
            "tbs_certificate": tbs_certificate,
            "signature_algorithm": signer.algorithm.identifier(),
            "signature_value": signature,
        }
    )
    return certificate.dump()
