"""A real MIT Kerberos KDC (Debian krb5-kdc) for the Negotiate tests: its own realm, database and
configuration in a private directory, listening on 127.0.0.1 only, started once per session.

  KDC.start(directory, principals={"station": "pw"}, services=["HTTP/localhost"])
  kdc.env()              KRB5_CONFIG (and KRB5_KDC_PROFILE) for anything that talks to it
  kdc.keytab             the services' keys (a server's KRB5_KTNAME)
  kdc.kinit(principal, password, ccache)   a ticket cache, as `kinit` makes it
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

REALM = "EXAMPLE.TEST"


def available() -> bool:
    return all(shutil.which(tool) for tool in ("krb5kdc", "kdb5_util", "kadmin.local", "kinit"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class KDC:
    def __init__(self, directory: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.directory = directory
        self.port = port
        self.process = process
        self.keytab = directory / "services.keytab"

    @property
    def krb5_conf(self) -> Path:
        return self.directory / "krb5.conf"

    def env(self) -> dict[str, str]:
        return {"KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(self.directory / "kdc.conf")}

    @classmethod
    def start(cls, directory: Path, *, principals: dict[str, str], services: list[str], timeout: float = 15.0) -> KDC:
        directory.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        (directory / "krb5.conf").write_text(
            f"[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n"
            " rdns = false\n udp_preference_limit = 1\n"
            f"[realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{port}\n }}\n"
            f"[domain_realm]\n localhost = {REALM}\n .localhost = {REALM}\n"
        )
        (directory / "kdc.conf").write_text(
            f"[kdcdefaults]\n kdc_listen = 127.0.0.1:{port}\n kdc_tcp_listen = 127.0.0.1:{port}\n"
            f"[realms]\n {REALM} = {{\n  database_name = {directory}/principal\n"
            f"  key_stash_file = {directory}/stash\n  acl_file = {directory}/kadm5.acl\n"
            f"  kdc_listen = 127.0.0.1:{port}\n  kdc_tcp_listen = 127.0.0.1:{port}\n }}\n"
            f"[logging]\n kdc = FILE:{directory}/kdc.log\n"
        )
        (directory / "kadm5.acl").write_text("")
        env = {**os.environ, "KRB5_CONFIG": str(directory / "krb5.conf")}
        env["KRB5_KDC_PROFILE"] = str(directory / "kdc.conf")

        def run(*command: str) -> None:
            subprocess.run(list(command), env=env, check=True, capture_output=True, cwd=directory)

        run("kdb5_util", "create", "-s", "-r", REALM, "-P", "master-key-for-tests")
        for name, password in principals.items():
            run("kadmin.local", "-r", REALM, "-q", f"addprinc -pw {password} {name}")
        for service in services:
            run("kadmin.local", "-r", REALM, "-q", f"addprinc -randkey {service}")
            run("kadmin.local", "-r", REALM, "-q", f"ktadd -k {directory / 'services.keytab'} {service}")
        process = subprocess.Popen(
            ["krb5kdc", "-n", "-r", REALM, "-P", str(directory / "kdc.pid")],
            env=env, cwd=directory, stdin=subprocess.DEVNULL,
            stdout=open(directory / "kdc.stdout", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"krb5kdc did not start: {(directory / 'kdc.stdout').read_text()}") from None
                time.sleep(0.05)
        return cls(directory, port, process)

    def kinit(self, principal: str, password: str, ccache: Path) -> None:
        env = {**os.environ, **self.env(), "KRB5CCNAME": f"FILE:{ccache}"}
        subprocess.run(["kinit", principal], input=password + "\n", text=True, env=env, check=True, capture_output=True)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
