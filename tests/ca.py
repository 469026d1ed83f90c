"""A small two-level test CA driven only by the openssl CLI and pyasn1-modules, never by tokenagent.

What a CA hands back after certreq -submit: the issued certificate (.cer), a certs-only PKCS #7
(.p7b, `openssl crl2pkcs7`) and a full CMC response (.rsp): a PKIResponse encoded with pyasn1's
RFC 6402 module, signed by the intermediate CA with `openssl cms -sign`.

OpenSSL 3.0's `x509 -req` cannot set a start date (`-not_before` came in 3.4), so certificates are
issued with `openssl ca` and a minimal configuration, which also copies the request's extensions.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from pyasn1.codec.der import decoder, encoder
from pyasn1.type import char, univ, useful
from pyasn1_modules import rfc5280, rfc5652, rfc6402

OID_PKI_RESPONSE = "1.3.6.1.5.5.7.12.3"

_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused

[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ca_copy]
dir = {directory}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = yes
copy_extensions = copy

[ca_nocopy]
dir = {directory}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = yes
copy_extensions = none

[policy_any]
commonName = optional
"""

# Written before the request's extensions are copied, so these (and the caller's) win.
_END_ENTITY = """\
basicConstraints = critical,CA:FALSE
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *map(str, args)], input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


def pem_to_der(pem: Path) -> bytes:
    return openssl("x509", "-in", pem, "-outform", "DER")


def _key_args(key: str) -> list[str]:
    if key == "ec":
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    if key == "rsa":
        return ["-newkey", "rsa:2048"]
    raise ValueError(f"key is 'ec' or 'rsa', not {key!r}")


@dataclass
class OpenSslCA:
    """Root CA (self-signed) and intermediate CA; the intermediate issues and signs CMC responses."""

    directory: Path
    root_cert: Path
    root_key: Path
    sub_cert: Path
    sub_key: Path

    @classmethod
    def create(cls, directory: Path, *, key: str = "ec") -> OpenSslCA:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "issued").mkdir(exist_ok=True)
        (directory / "index.txt").write_text("")
        (directory / "serial").write_text("1000\n")
        config = directory / "openssl.cnf"
        config.write_text(_CONFIG.format(directory=directory))
        ca = cls(
            directory=directory,
            root_cert=directory / "root.pem",
            root_key=directory / "root.key",
            sub_cert=directory / "sub.pem",
            sub_key=directory / "sub.key",
        )
        openssl(
            "req", "-x509", "-config", config, "-extensions", "v3_ca", *_key_args(key), "-nodes",
            "-keyout", ca.root_key, "-out", ca.root_cert, "-days", "3650", "-sha256",
            "-subj", "/O=tokenagent tests/CN=Test Root CA",
        )  # fmt: skip
        sub_csr = directory / "sub.csr"
        openssl(
            "req", "-new", "-config", config, *_key_args(key), "-nodes", "-keyout", ca.sub_key,
            "-out", sub_csr, "-subj", "/O=tokenagent tests/CN=Test Issuing CA",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", sub_csr, "-CA", ca.root_cert, "-CAkey", ca.root_key, "-set_serial", "2",
            "-days", "3650", "-sha256", "-extfile", config, "-extensions", "v3_ca", "-out", ca.sub_cert,
        )  # fmt: skip
        return ca

    @property
    def config(self) -> Path:
        return self.directory / "openssl.cnf"

    @cached_property
    def root_der(self) -> bytes:
        return pem_to_der(self.root_cert)

    @cached_property
    def sub_der(self) -> bytes:
        return pem_to_der(self.sub_cert)

    def issue(
        self,
        csr: Path | bytes,
        out: Path,
        *,
        days: int = 30,
        not_before: str | None = None,
        extensions: str | None = None,
        copy_extensions: bool = True,
    ) -> bytes:
        """Sign a PKCS #10 request (PEM or DER) with the intermediate CA; PEM to ``out``, DER returned.

        ``not_before`` is openssl's YYYYMMDDHHMMSSZ; the certificate then ends ``days`` later, so
        "20200101000000Z" makes an expired certificate and a future date a not-yet-valid one.
        ``extensions`` are extfile lines (e.g. "keyUsage = critical,keyEncipherment") that win
        over the request's own.
        """
        if isinstance(csr, bytes):
            path = out.with_suffix(".csr")
            inform = "DER" if csr[:1] == b"\x30" else "PEM"
            path.write_bytes(openssl("req", "-inform", inform, "-in", "/dev/stdin", "-outform", "PEM", stdin=csr))
            csr = path
        extfile = out.with_suffix(".ext")
        extfile.write_text(_END_ENTITY + (extensions or "") + "\n")
        if not_before is None:
            validity = ["-days", str(days)]
        else:
            start = datetime.strptime(not_before, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
            end = (start + timedelta(days=days)).strftime("%Y%m%d%H%M%SZ")
            validity = ["-startdate", not_before, "-enddate", end]
        openssl(
            "ca", "-batch", "-config", self.config, "-name", "ca_copy" if copy_extensions else "ca_nocopy",
            "-cert", self.sub_cert, "-keyfile", self.sub_key, "-in", csr, "-out", out, "-notext",
            "-preserveDN", "-rand_serial", "-extfile", extfile, *validity,
        )  # fmt: skip
        return pem_to_der(out)

    def issue_agent(self, csr: Path | bytes, out: Path, *, days: int = 30) -> bytes:
        """An enrollment agent certificate: EKU Certificate Request Agent (1.3.6.1.4.1.311.20.2.1),
        digitalSignature; the request's own extensions are ignored. PEM to ``out``, DER returned."""
        extensions = "keyUsage = critical,digitalSignature\nextendedKeyUsage = 1.3.6.1.4.1.311.20.2.1"
        return self.issue(csr, out, days=days, extensions=extensions, copy_extensions=False)

    def p7b(self, certs: list[Path], out: Path, *, der: bool = True) -> bytes:
        """Certs-only SignedData (what a CA's "download chain" gives); returns what was written."""
        args: list[str | Path] = ["crl2pkcs7", "-nocrl", "-outform", "DER" if der else "PEM", "-out", out]
        for cert in certs:
            args += ["-certfile", cert]
        openssl(*args)
        return out.read_bytes()

    def cmc_response(
        self,
        certs: list[bytes],
        out: Path,
        *,
        status: int = 0,
        status_string: str | None = None,
        fail_info: int | None = None,
        pend_token: bytes | None = None,
        pend_time: datetime | None = None,
        extended_fail_info: str | None = None,
        body_list: tuple[int | tuple[int, ...], ...] = (1,),
        v1: bool = False,
        sign: bool = True,
        include_signer: bool = True,
        digest: str = "sha256",
        pss: bool = False,
    ) -> bytes:
        """A full PKI Response holding ``certs`` (DER): pyasn1 encodes, openssl signs; DER to ``out``.

        ``body_list`` items are bodyPartIDs or, as tuples, bodyPartPaths (statusInfoV2 only).

        ``include_signer=False`` leaves the signer's certificate out (`-nocerts`, and it is dropped
        from ``certs``); ``sign=False`` makes a SignedData without SignerInfos (pyasn1 only).
        """
        content = encoder.encode(
            pki_response(
                status,
                status_string=status_string,
                fail_info=fail_info,
                pend_token=pend_token,
                pend_time=pend_time,
                extended_fail_info=extended_fail_info,
                body_list=body_list,
                v1=v1,
            )
        )
        if not sign:
            data = unsigned_signed_data(content, certs)
            out.write_bytes(data)
            return data
        content_file = out.with_suffix(".content")
        content_file.write_bytes(content)
        signer = self.sub_der
        # openssl adds the signer itself; listing it again in -certfile would add it twice
        others = [c for c in certs if c != signer]
        args: list[str | Path] = [
            "cms", "-sign", "-binary", "-nodetach", "-nosmimecap", "-econtent_type", OID_PKI_RESPONSE,
            "-in", content_file, "-signer", self.sub_cert, "-inkey", self.sub_key, "-md", digest,
            "-outform", "DER", "-out", out,
        ]  # fmt: skip
        if pss:
            args += ["-keyopt", "rsa_padding_mode:pss"]
        if not include_signer:
            args.append("-nocerts")
        if others:
            bundle = out.with_suffix(".certs.pem")
            bundle.write_bytes(b"".join(openssl("x509", "-inform", "DER", stdin=c) for c in others))
            args += ["-certfile", bundle]
        openssl(*args)
        return out.read_bytes()


def pki_response(
    status: int,
    *,
    status_string: str | None = None,
    fail_info: int | None = None,
    pend_token: bytes | None = None,
    pend_time: datetime | None = None,
    extended_fail_info: str | None = None,
    body_list: tuple[int | tuple[int, ...], ...] = (1,),
    v1: bool = False,
) -> rfc6402.PKIResponse:
    """PKIResponse { controlSequence { statusInfoV2 (or statusInfo), bodyPartID 100 }, {}, {} }."""
    info = rfc6402.CMCStatusInfo() if v1 else rfc6402.CMCStatusInfoV2()
    info["cMCStatus"] = status
    for body_part in body_list:
        if v1:
            assert isinstance(body_part, int), "statusInfo (v1) has no bodyPartPath"
            info["bodyList"].append(rfc6402.BodyPartID(body_part))
            continue
        reference = rfc6402.BodyPartReference()
        if isinstance(body_part, int):
            reference["bodyPartID"] = body_part
        else:
            reference["bodyPartPath"].extend(rfc6402.BodyPartID(n) for n in body_part)
        info["bodyList"].append(reference)
    if status_string is not None:
        info["statusString"] = char.UTF8String(status_string)
    if fail_info is not None:
        info["otherInfo"]["failInfo"] = fail_info
    elif pend_token is not None and pend_time is not None:
        info["otherInfo"]["pendInfo"]["pendToken"] = pend_token
        info["otherInfo"]["pendInfo"]["pendTime"] = useful.GeneralizedTime(pend_time.strftime("%Y%m%d%H%M%SZ"))
    elif extended_fail_info is not None:
        extended = info["otherInfo"]["extendedFailInfo"]
        extended["failInfoOID"] = univ.ObjectIdentifier(extended_fail_info)
        extended["failInfoValue"] = encoder.encode(char.UTF8String("extended reason"))
    attribute = rfc6402.TaggedAttribute()
    attribute["bodyPartID"] = 100
    attribute["attrType"] = rfc6402.id_cmc_statusInfo if v1 else rfc6402.id_cmc_statusInfoV2
    attribute["attrValues"].append(rfc6402.AttributeValue(encoder.encode(info)))
    response = rfc6402.PKIResponse()
    response["controlSequence"].append(attribute)
    response["cmsSequence"].clear()
    response["otherMsgSequence"].clear()
    return response


def unsigned_signed_data(content: bytes, certs: list[bytes]) -> bytes:
    """ContentInfo { signedData { v3, no digestAlgorithms, PKIResponse, certs, no SignerInfos } }."""
    signed = rfc5652.SignedData()
    signed["version"] = 3
    signed["digestAlgorithms"].clear()
    signed["encapContentInfo"]["eContentType"] = univ.ObjectIdentifier(OID_PKI_RESPONSE)
    signed["encapContentInfo"]["eContent"] = content
    certificates = signed["certificates"]
    for der in certs:
        choice = rfc5652.CertificateChoices()
        choice["certificate"] = decoder.decode(der, asn1Spec=rfc5280.Certificate())[0]
        certificates.append(choice)
    signed["signerInfos"].clear()
    info = rfc5652.ContentInfo()
    info["contentType"] = rfc5652.id_signedData
    info["content"] = encoder.encode(signed)
    return encoder.encode(info)
