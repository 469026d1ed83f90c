"""The core chain on three PKCS#11 implementations: SoftHSM, NSS softokn and tpm2-pkcs11 on swtpm
(tests/peers/tokens.py starts them). One suite, parametrized by implementation: tokens, objects,
new (EC and RSA, PKCS#1 v1.5 and PSS), accept, repair, sign with an agent key on that token, show.
Every request and CMS message is checked by OpenSSL, every token listing by pkcs11-tool (for NSS
through p11-kit-proxy, which can pass softokn's init string). Differences between implementations
are the named tests at the end (docs/tokens.md, "Tested implementations").
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ca import OpenSslCA
from tests.conftest import ROOT, Run, run_cli
from tests.peers.tokens import USER_PIN, Implementation

pytestmark = pytest.mark.slow

NAMES = ("softhsm", "nss", "tpm")
AGENT_EKU = "keyUsage = critical,digitalSignature\nextendedKeyUsage = 1.3.6.1.4.1.311.20.2.1"

INF = """[NewRequest]
Subject = "CN={name},O=Implementations"
{algorithm}
KeyContainer = {name}
ProviderName = "Microsoft Software Key Storage Provider"
{extra}
"""
ALGORITHMS = {
    "p256": "KeyAlgorithm = ECDSA_P256",
    "rsa2048": "KeyAlgorithm = RSA\nKeyLength = 2048",
    "rsa2048-pss": "KeyAlgorithm = RSA\nKeyLength = 2048\nAlternateSignatureAlgorithm = TRUE",
}


def cli(impl: Implementation, *args: str, **env: str) -> Run:
    return run_cli(*args, env=impl.env(**env))


def openssl_verify_request(path: Path) -> str:
    result = subprocess.run(
        ["openssl", "req", "-in", str(path), "-verify", "-noout", "-text"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "verify OK" in result.stdout + result.stderr, result.stderr
    return result.stdout


@dataclass
class Enrolled:
    name: str
    request: Path
    key_id: str
    key_uri: str
    cert: Path | None = None


class Chain:
    """Per implementation, what the tests share: one CA, keys made once (TPM and NSS RSA generation
    is not what most tests are about)."""

    def __init__(self, impl: Implementation, work: Path) -> None:
        self.impl = impl
        self.work = work
        self.ca = OpenSslCA.create(work / "ca")
        self.keys: dict[str, Enrolled] = {}

    def new(self, name: str, algorithm: str, extra: str = "", *args: str) -> tuple[Run, Path]:
        inf = self.work / f"{name}.inf"
        inf.write_text(INF.format(name=name, algorithm=ALGORITHMS[algorithm], extra=extra))
        request = self.work / f"{name}.req"
        request.unlink(missing_ok=True)
        run = cli(
            self.impl, "new", str(inf), str(request), "--token", self.impl.token, "--pin-source", "env:PIN", *args
        )
        return run, request

    def key(self, name: str, algorithm: str) -> Enrolled:
        if name not in self.keys:
            run, request = self.new(f"{self.impl.name}-{name}", algorithm, "", "--json")
            assert run.returncode == 0, run.stderr
            made = json.loads(run.stdout)
            self.keys[name] = Enrolled(f"{self.impl.name}-{name}", request, made["key_id"], made["private_key_uri"])
        return self.keys[name]

    def certified(self, name: str, algorithm: str, extensions: str | None = None) -> Enrolled:
        enrolled = self.key(name, algorithm)
        if enrolled.cert is None:
            cert = self.work / f"{enrolled.name}.cer"
            self.ca.issue(enrolled.request, cert, extensions=extensions, copy_extensions=extensions is None)
            run = cli(self.impl, "accept", str(cert), "--token", self.impl.token, "--pin-source", "env:PIN")
            assert run.returncode == 0, run.stderr
            enrolled.cert = cert
        return enrolled


_chains: dict[str, Chain] = {}


@pytest.fixture(params=NAMES)
def chain(request: pytest.FixtureRequest, implementations: dict[str, Implementation], tmp_path_factory) -> Chain:
    impl = implementations[request.param]
    impl.fresh()
    if impl.name not in _chains:
        _chains[impl.name] = Chain(impl, tmp_path_factory.mktemp(f"chain-{impl.name}"))
    return _chains[impl.name]


def test_tokens_lists_the_token(chain: Chain) -> None:
    run = cli(chain.impl, "tokens", "--json")
    assert run.returncode == 0, run.stderr
    labels = [
        slot["token"]["label"]
        for module in json.loads(run.stdout)["modules"]
        for slot in module["slots"]
        if slot.get("token")
    ]
    assert chain.impl.token in labels


@pytest.mark.parametrize("algorithm", ["p256", "rsa2048"])
def test_new_makes_a_sensitive_key_and_a_request_openssl_verifies(chain: Chain, algorithm: str) -> None:
    enrolled = chain.key(algorithm, algorithm)
    text = openssl_verify_request(enrolled.request)
    assert f"CN={enrolled.name}" in text.replace(" = ", "=")
    listed = cli(chain.impl, "objects", "--token", chain.impl.token, "--pin-source", "env:PIN", "--json")
    assert listed.returncode == 0, listed.stderr
    private = [
        o for o in json.loads(listed.stdout)["objects"] if o["class"] == "private-key" and o["id"] == enrolled.key_id
    ]
    assert len(private) == 1 and private[0]["label"] == enrolled.name
    assert private[0]["flags"]["sensitive"] is True and private[0]["flags"]["extractable"] is False
    assert "sign" in private[0]["usage"]
    assert enrolled.name in chain.impl.listing()  # pkcs11-tool / certutil see the key by its label


def test_pss_request_declares_the_salt_the_token_used(chain: Chain) -> None:
    """OpenSSL checks the salt length against the one the request declares (RFC 4055 parameters)."""
    run, request = chain.new(f"{chain.impl.name}-pss", "rsa2048-pss")
    assert run.returncode == 0, run.stderr
    text = openssl_verify_request(request)
    assert "rsassaPss" in text and re.search(r"Salt Length: 0x20\b", text), text


def test_accept_installs_the_certificate_next_to_its_key(chain: Chain) -> None:
    enrolled = chain.certified("p256", "p256")
    listed = cli(chain.impl, "objects", "--token", chain.impl.token, "--pin-source", "env:PIN", "--json")
    objects = json.loads(listed.stdout)["objects"]
    certs = [o for o in objects if o["class"] == "certificate" and o["id"] == enrolled.key_id]
    assert len(certs) == 1, objects
    blocks = chain.impl.listing().split("Certificate Object")[1:]  # pkcs11-tool -O
    assert any(f"ID:         {enrolled.key_id}" in block for block in blocks), blocks


def test_repair_finds_the_link_whole_and_the_key_working(chain: Chain) -> None:
    enrolled = chain.certified("p256", "p256")
    assert enrolled.cert is not None
    der = subprocess.run(
        ["openssl", "x509", "-in", str(enrolled.cert), "-outform", "DER"], capture_output=True, check=True
    ).stdout
    run = cli(
        chain.impl, "repair", hashlib.sha1(der).hexdigest(), "--token", chain.impl.token, "--pin-source", "env:PIN"
    )
    assert run.returncode == 0, run.stderr
    assert "nothing to repair" in run.stdout and "key test: passed" in run.stdout, run.stdout


def test_sign_on_behalf_with_an_agent_key_on_the_token(chain: Chain) -> None:
    agent = chain.certified("agent", "p256", extensions=AGENT_EKU)
    user = chain.key("rsa2048", "rsa2048")
    out = chain.work / "eobo.p7"
    run = cli(
        chain.impl, "sign", str(user.request), str(out), "--binary", "--agent", agent.key_uri,
        "--requester", "EXAMPLE\\impl", "--pin-source", "env:PIN", "--yes",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    bundle = chain.work / "ca-bundle.pem"
    bundle.write_bytes(chain.ca.root_cert.read_bytes() + chain.ca.sub_cert.read_bytes())
    verified = subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(out), "-binary", "-purpose", "any",
         "-CAfile", str(bundle), "-out", "/dev/null"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr


def test_show_names_the_subject(chain: Chain) -> None:
    enrolled = chain.certified("p256", "p256")
    assert enrolled.cert is not None
    for path in (enrolled.request, enrolled.cert):
        run = cli(chain.impl, "show", str(path))
        assert run.returncode == 0, run.stderr
        assert f"CN={enrolled.name}" in run.stdout


def sign_through_uri(impl: Implementation, key_uri: str, cert: Path, work: Path) -> None:
    """A tool we did not write signs with the key by the URI tokenagent printed, and the signature
    verifies with the accepted certificate's public key. OpenSSL's pkcs11 engine (libp11) for
    SoftHSM; for tpm2-pkcs11 GnuTLS's certtool signs a PKCS#10 request and OpenSSL verifies it: in an
    OpenSSL process with libp11's engine loaded, the TSS cannot make the session keys it needs
    (esys_crypto_ossl: "Could not create rsa key"), whatever the key (docs/tokens.md)."""
    public = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"], capture_output=True, text=True, check=True
    ).stdout
    if impl.name == "tpm":
        template = work / "certtool.cfg"
        template.write_text('cn = "signed through the pkcs11: URI"\n')
        csr = work / "through-uri.csr"
        made = subprocess.run(
            ["certtool", "--generate-request", "--provider", impl.library, "--load-privkey", key_uri,
             "--template", str(template), "--outfile", str(csr)],
            capture_output=True, text=True, env=impl.env(GNUTLS_PIN=USER_PIN), check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        openssl_verify_request(csr)
        in_request = subprocess.run(
            ["openssl", "req", "-in", str(csr), "-pubkey", "-noout"], capture_output=True, text=True, check=True
        ).stdout
        assert in_request == public
        return
    message, signature = work / "message.txt", work / "message.sig"
    message.write_text("signed through the pkcs11: URI\n")
    sign = subprocess.run(
        ["openssl", "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign",
         f"{key_uri}?pin-value={USER_PIN}", "-out", str(signature), str(message)],
        capture_output=True, text=True, env=impl.env(PKCS11_MODULE_PATH=impl.library), check=False,
    )  # fmt: skip
    assert sign.returncode == 0, sign.stderr
    public_pem = work / "public.pem"
    public_pem.write_text(public)
    verified = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(public_pem), "-signature", str(signature), str(message)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0 and "Verified OK" in verified.stdout, verified.stderr


@pytest.mark.parametrize("name", ["softhsm", "tpm"])  # neither libp11 nor GnuTLS can pass softokn's init string
def test_openssl_signs_through_the_printed_uri(name: str, implementations, tmp_path_factory) -> None:
    impl = implementations[name]
    impl.fresh()
    chain = _chains.setdefault(name, Chain(impl, tmp_path_factory.mktemp(f"chain-{name}")))
    enrolled = chain.certified("p256", "p256")
    assert enrolled.cert is not None
    sign_through_uri(impl, enrolled.key_uri, enrolled.cert, chain.work)


# --- what differs, one named test per difference -------------------------------------------------


def test_tpm_platform_crypto_provider_end_to_end(implementations, tmp_path: Path) -> None:
    """The seed-style TPM INF with no --module and no TOKENAGENT_MODULE: the built-in provider finds
    tpm2-pkcs11 through the p11-kit registry; key born in the TPM, request verified by OpenSSL,
    certificate accepted next to it, OpenSSL signing through the printed URI."""
    impl = implementations["tpm"]
    impl.fresh()
    env = impl.env(TOKENAGENT_STATE_DIR=str(tmp_path / "state"))
    env.pop("TOKENAGENT_MODULE")
    request = tmp_path / "web01.req"
    run = run_cli("new", str(ROOT / "docs/examples/tpm-server.inf"), str(request), "--pin-source", "env:PIN",
                  "--json", env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    made = json.loads(run.stdout)
    assert made["token"]["label"] == "tpm" and made["plan"]["provider"]["profile"]["name"] == "tpm"
    text = openssl_verify_request(request)
    assert "DNS:web01.example.com" in text
    ca = OpenSslCA.create(tmp_path / "ca")
    cert = tmp_path / "web01.cer"
    ca.issue(request, cert)
    accepted = run_cli("accept", str(cert), "--pin-source", "env:PIN", env=env)
    assert accepted.returncode == 0, accepted.stderr
    listing = impl.listing()
    assert "web01-tls" in listing and "Certificate Object" in listing
    sign_through_uri(impl, made["private_key_uri"], cert, tmp_path)


def test_tpm_module_name_is_never_loaded_from_the_working_directory(implementations, tmp_path: Path) -> None:
    """A file named like the TPM provider's module in the working directory is not loaded (it would
    run in a process holding PINs): the module comes from the p11-kit registry."""
    impl = implementations["tpm"]
    inf = tmp_path / "cwd.inf"
    inf.write_text((ROOT / "docs/examples/tpm-server.inf").read_text().replace("web01-tls", "cwd-test"))
    (tmp_path / "libtpm2_pkcs11.so").write_bytes(b"not a library")
    (tmp_path / "tpm2_pkcs11").write_bytes(b"not a library")
    env = impl.env(TOKENAGENT_STATE_DIR=str(tmp_path / "state"))
    env.pop("TOKENAGENT_MODULE")
    result = subprocess.run(
        [*run_cli_prefix(), "new", str(inf), "--dry-run", "--json",
         "--pin-source", "env:PIN"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr  # dlopen of either file would have failed the run
    assert json.loads(result.stdout)["token"]["label"] == "tpm"


def run_cli_prefix() -> list[str]:
    import sys

    return [sys.executable, "-m", "tokenagent"]


def test_tpm_templates_leave_paired_usages_to_the_token(implementations, tmp_path: Path) -> None:
    """A TPM key has two usage bits: the plan sets only the private half's CKA_SIGN/CKA_DECRYPT and
    says so; what pkcs11-tool lists follows the TPM (CKA_ENCRYPT goes with CKA_SIGN)."""
    impl = implementations["tpm"]
    impl.fresh()
    chain = _chains.setdefault("tpm", Chain(impl, tmp_path))
    run, _ = chain.new("tpm-plan", "p256", "", "--dry-run", "--json")
    assert run.returncode == 0, run.stderr
    plan = json.loads(run.stdout)["plan"]
    assert not {"CKA_VERIFY", "CKA_ENCRYPT", "CKA_WRAP"} & set(plan["public_template"])
    assert plan["private_template"]["CKA_SIGN"] is True and plan["private_template"]["CKA_DECRYPT"] is False
    assert any("tpm2-pkcs11" in note for note in plan["notes"])
    enrolled = chain.key("p256", "p256")
    block = next(b for b in impl.listing().split("Private Key Object")[1:] if enrolled.key_id in b)
    assert re.search(r"Usage:\s+sign\b", block), block


@pytest.mark.parametrize(
    ("name", "algorithm", "says"),
    [
        # beyond the TPM's RSA range (CKM_RSA_PKCS_KEY_PAIR_GEN 1024..3072): the token's own limit
        ("tpm-4096", "KeyAlgorithm = RSA\nKeyLength = 4096", ("4096", "3072")),
        # swtpm makes P-521 keys, but tpm2-pkcs11 1.9 fails every signature with one (CKR_HOST_MEMORY),
        # after which it will not delete the key in that process
        ("tpm-p521", "KeyAlgorithm = ECDSA_P521", ("P-521", "nothing was created")),
    ],
)
def test_tpm_refuses_before_generating(
    name: str, algorithm: str, says: tuple[str, ...], implementations, tmp_path: Path
) -> None:
    impl = implementations["tpm"]
    impl.fresh()
    before = impl.listing()
    inf = tmp_path / f"{name}.inf"
    inf.write_text(INF.format(name=name, algorithm=algorithm, extra=""))
    run = run_cli("new", str(inf), str(tmp_path / f"{name}.req"), "--token", "tpm", "--pin-source", "env:PIN",
                  env=impl.env(TOKENAGENT_STATE_DIR=str(tmp_path / "state")))  # fmt: skip
    assert run.returncode == 8, run.stderr
    assert all(text in run.stderr for text in says), run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert impl.listing() == before


def test_nss_needs_its_init_string(implementations, tmp_path: Path) -> None:
    """softokn named by its library path gets C_Initialize(NULL) and refuses (CKR_ARGUMENTS_BAD):
    the message says to name a p11-kit module file, whose x-init-reserved tokenagent passes."""
    impl = implementations["nss"]
    run = run_cli("tokens", "--module", impl.library, env=impl.env())
    assert run.returncode != 0
    assert "CKR_ARGUMENTS_BAD" in run.stderr and "x-init-reserved" in run.stderr, run.stderr
    ok = run_cli("tokens", "--module", impl.module, env=impl.env())
    assert ok.returncode == 0 and "NSS Certificate DB" in ok.stdout, ok.stderr


def test_nss_tokens_share_serial_zero(implementations) -> None:
    """Both softokn tokens report serial 0000000000000000: a serial alone selects nothing, the label does."""
    impl = implementations["nss"]
    run = run_cli("objects", "--token", "0000000000000000", "--pin-source", "env:PIN", env=impl.env())
    assert run.returncode != 0 and "NSS Certificate DB" in run.stderr and "NSS Generic Crypto Services" in run.stderr
    by_label = run_cli("objects", "--token", "NSS Certificate DB", "--pin-source", "env:PIN", env=impl.env())
    assert by_label.returncode == 0, by_label.stderr


def test_tpm_model_is_nul_padded_and_the_uri_keeps_it(implementations) -> None:
    """tpm2-pkcs11 pads CK_TOKEN_INFO.model with NULs: the printed URI keeps them (%00), as p11tool
    prints it, so p11-kit and GnuTLS find the token by it; tokenagent selects by it too."""
    impl = implementations["tpm"]
    listed = run_cli("tokens", "--json", env=impl.env())
    assert listed.returncode == 0, listed.stderr
    uris = [
        slot["token"]["uri"]
        for module in json.loads(listed.stdout)["modules"]
        for slot in module["slots"]
        if slot.get("token") and slot["token"]["label"] == "tpm"
    ]
    assert len(uris) == 1 and "model=SW%20%20%20TPM%00" in uris[0], uris
    p11tool = subprocess.run(
        ["p11tool", "--provider", impl.library, "--list-tokens"], capture_output=True, text=True, env=impl.env()
    )

    def attributes(uri: str) -> set[str]:
        return set(uri.removeprefix("pkcs11:").split(";"))

    p11tool_uris = [line.split("URL: ")[-1] for line in p11tool.stdout.splitlines() if "URL:" in line]
    assert attributes(uris[0]) in [attributes(uri) for uri in p11tool_uris], p11tool.stdout
    selected = run_cli("objects", "--token", uris[0], "--pin-source", "env:PIN", env=impl.env())
    assert selected.returncode == 0 and "Token 'tpm'" in selected.stdout, selected.stderr


def test_nss_memory_figures_are_placeholders(implementations) -> None:
    """softokn reports 1 byte of memory, total and free; the capacity check ignores it (else every
    key would be refused as not fitting)."""
    impl = implementations["nss"]
    script = (
        "from tokenagent.token.library import TokenSelector, iter_tokens, modules_for\n"
        "from tokenagent.token import raw\n"
        "s = TokenSelector.parse('NSS Certificate DB')\n"
        "h = next(h for h in iter_tokens(modules_for([], s)) if s.matches(h))\n"
        "i = raw.token_info(h.module.path, h.slot_id)\n"
        "print(i.ulTotalPublicMemory, i.ulFreePublicMemory, i.ulTotalPrivateMemory, i.ulFreePrivateMemory)\n"
    )
    import sys

    figures = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=impl.env())
    assert figures.stdout.split() == ["1", "1", "1", "1"], figures.stderr
    chain = _chains.get("nss")
    work = chain.work if chain else Path(impl.directory)
    inf = work / "memory.inf"
    inf.write_text(INF.format(name="nss-memory", algorithm=ALGORITHMS["p256"], extra=""))
    made = run_cli("new", str(inf), "--dry-run", "--json", "--token", impl.token, "--pin-source", "env:PIN",
                   env=impl.env())  # fmt: skip
    assert made.returncode == 0, made.stderr
    checks = {c["check"] for c in json.loads(made.stdout)["capacity"]["checks"]}
    assert not any("memory" in check for check in checks)


_REFUSED_TEMPLATE = """
from tokenagent.errors import TokenAgentError
from tokenagent.token.generate import generate_key_pair
from tokenagent.token.library import find_token
from tokenagent.token.pins import parse_pin_source
from tokenagent.token.session import open_session

session = open_session(find_token("tpm"), login=True, pin_source=parse_pin_source("env:PIN"), rw=True)
try:  # what tokenagent sent before it knew tpm2-pkcs11: CKA_SIGN TRUE beside CKA_ENCRYPT FALSE
    generate_key_pair(
        session, key_type="CKK_EC", generation_mechanism="CKM_EC_KEY_PAIR_GEN",
        public_template={"CKA_TOKEN": True, "CKA_EC_PARAMS": bytes.fromhex("06082a8648ce3d030107"),
                         "CKA_VERIFY": True, "CKA_ENCRYPT": False},
        private_template={"CKA_TOKEN": True, "CKA_PRIVATE": True, "CKA_SENSITIVE": True, "CKA_SIGN": True,
                          "CKA_DECRYPT": False, "CKA_LABEL": "refused"},
        temporary_id=b"refused",
    )
except TokenAgentError as exc:
    print(exc.one_line())
"""


def test_tpm_refusal_shows_the_tokens_own_answer(implementations) -> None:
    """A refused key generation is one line with the CKR_ name the token returned (python-pkcs11's
    class names, or an AttributeError from a class it lacks, used to stand there)."""
    impl = implementations["tpm"]
    impl.fresh()
    import sys

    try:
        run = subprocess.run([sys.executable, "-c", _REFUSED_TEMPLATE], capture_output=True, text=True, env=impl.env())
    finally:
        impl.fresh()  # tpm2-pkcs11 leaves transient objects behind after this refusal
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "token 'tpm': key generation failed: CKR_GENERAL_ERROR", run.stdout
    assert "refused" not in impl.listing()
