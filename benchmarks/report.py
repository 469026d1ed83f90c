"""docs/performance.md and benchmarks/results.json from one run's results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """What the figures were measured on."""

    def first(path: str, key: str) -> str | None:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            return None
        return None

    def output(*command: str) -> str | None:
        try:
            proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.returncode == 0 else None

    def package(name: str) -> str | None:
        return output("dpkg-query", "-W", "-f=${Version}", name)

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    mem_kib = first("/proc/meminfo", "MemTotal")
    try:
        debian = Path("/etc/debian_version").read_text().strip()
    except OSError:
        debian = None
    return {
        "cpu": first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem_kib.split()[0]) / 1024 / 1024, 1) if mem_kib else None,
        "debian": debian,
        "kernel": platform.release(),
        "softhsm": output("softhsm2-util", "--version"),
        "softhsm_package": package("softhsm2"),
        "openssl": output("openssl", "version"),
        "libp11_engine": package("libengine-pkcs11-openssl"),
        "opensc": package("opensc"),
        "python": platform.python_version(),
        "python_pkcs11": dist("python-pkcs11"),
        "cryptography": dist("cryptography"),
        "asn1crypto": dist("asn1crypto"),
        "click": dist("click"),
        "pyinstrument": dist("pyinstrument"),
        "filesystem_of_tmp": output("findmnt", "-n", "-o", "FSTYPE", "--target", "/tmp"),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


# -- markdown -------------------------------------------------------------------------------------


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"
    magnitude = abs(value)
    text = f"{value:.0f}" if magnitude >= 100 else f"{value:.1f}" if magnitude >= 10 else f"{value:.2f}"
    return f"{text} {unit}".strip()


def _fig(fig: dict[str, Any] | None) -> str:
    if not fig or fig.get("median") is None:
        return "-"
    unit = fig.get("unit", "")
    shown = "" if unit == "x" else unit
    if unit == "s":
        return f"{_num(fig['median'], 's')} [{_num(fig['min'], 's')} – {_num(fig['max'], 's')}]"
    return f"{_num(fig['median'], shown)} [{_num(fig['min'])} – {_num(fig['max'])}]"


def _met(value: bool | None) -> str:
    return "-" if value is None else "**yes**" if value else "**no**"


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| # | what | target | tokenagent: median [min – max] | baseline: median [min – max] "
        "| ratio: median [min – max] | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, item in enumerate(rows, 1):
        ratio = _fig(item["ratio"])
        if item["ratio"] and item["ratio"].get("median") is not None:
            ratio = ratio.replace(" [", "× [", 1) if "[" in ratio else ratio + "×"
        lines.append(
            f"| {number} | {item['what']} | {item['target']} | {_fig(item['measured'])} | {_fig(item['baseline'])} "
            f"| {ratio} | {_met(item['met'])} |"
        )
    notes = [f"{number}. {item['note']}" for number, item in enumerate(rows, 1) if item.get("note")]
    return [*lines, "", "Row notes:", "", *notes]


def profile_table(profile: dict[str, Any] | None, kind: str, limit: int = 10) -> list[str]:
    if not profile or profile.get("skipped") or not profile.get(kind):
        return [f"(no profile: {profile.get('skipped') if profile else 'not run'})"]
    lines = ["| share | seconds | function |", "|---:|---:|---|"]
    for entry in profile[kind][:limit]:
        lines.append(f"| {entry['share'] * 100:.1f}% | {entry['seconds']:.3f} | `{entry['function']}` |")
    return lines


def markdown(data: dict[str, Any], analysis: list[str]) -> str:
    m = data["machine"]
    out = [
        "# Performance",
        "",
        "Written by `make bench` (`python -m benchmarks`, see [benchmarks/](../benchmarks/)); every figure below is",
        "from one run, and every raw sample is in [benchmarks/results.json](../benchmarks/results.json). Do not edit",
        "by hand: rerun `make bench`.",
        "",
        "Performance for tokenagent means two things: how close it gets to what the token itself can do (the same",
        "PKCS#11 work driven by a bare python-pkcs11 loop), and how it compares with what people use on Linux today",
        "for one request (pkcs11-tool makes the key, OpenSSL signs the request through libp11's PKCS#11 engine).",
        "Each figure is the median over repeated runs with min and max; each ratio is taken between the two sides",
        "measured side by side in the same child process (or the same loop of runs), in alternating order.",
        "",
        f"Run: {data['started']} to {data['finished']} ({data['duration_s']:.0f} s), "
        f"{'QUICK (tiny N, not for publication)' if data['quick'] else 'full'} run, "
        f"{data['repeats']} repeats. Load average at start {data['load_start']}, at end {data['load_end']}"
        + (f". {data['context'].rstrip('.')}." if data.get("context") else "."),
        "",
        "Load average (1 min) at the start and end of each benchmark: "
        + "; ".join(
            f"{name} {item['load']['start'].split()[0]} → {item['load']['end'].split()[0]}"
            for name, item in data["benchmarks"].items()
            if "load" in item
        )
        + ". The benchmark keeps about one core busy, so a load well above 1 means something else ran too.",
        "",
        "## Results",
        "",
        *table(data["rows"]),
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']} (model name in /proc/cpuinfo), {m['cores']} cores; RAM {m['ram_gib']} GiB;"
        f" Debian {m['debian']}, Linux {m['kernel']}; /tmp (token files, outputs) on {m['filesystem_of_tmp']}",
        f"- SoftHSM {m['softhsm']} (package {m['softhsm_package']}, file object store), {m['openssl']},"
        f" libp11 engine {m['libp11_engine']}, OpenSC (pkcs11-tool) {m['opensc']}",
        f"- Python {m['python']}, python-pkcs11 {m['python_pkcs11']}, cryptography {m['cryptography']},"
        f" asn1crypto {m['asn1crypto']}, click {m['click']}, pyinstrument {m['pyinstrument']}",
        "",
        "## Command lines",
        "",
        *commands(data),
        "",
        *analysis,
    ]
    return "\n".join(out).rstrip() + "\n"


def commands(data: dict[str, Any]) -> list[str]:
    one = data["benchmarks"].get("oneshot", {}).get("commands")
    startup = data["benchmarks"].get("startup", {}).get("commands")
    lines = [
        "Every benchmark makes its own SoftHSM instance with `softhsm/softhsm-env.sh DIR LABEL...` (user PIN 1234)",
        "in a temporary directory; `$MODULE` is SoftHSM's `libsofthsm2.so`. The PINs on command lines below are",
        "for these throw-away tokens only.",
        "",
    ]
    if one:
        lines += [
            "One request per process, tokenagent (with `PIN=1234`, `TOKENAGENT_MODULE=$MODULE`):",
            "",
            "```sh",
            one["tokenagent"],
            "```",
            "",
            f"One request per process, the pipeline ({one['pipeline_env']}):",
            "",
            "```sh",
            *one["pipeline"],
            "```",
            "",
        ]
    if startup:
        lines += ["Start-up:", "", "```sh", *startup.values(), "```", ""]
    lines += [
        "Batch `new`, accept and co-signing use the library in one process (see the modules in benchmarks/):",
        "`tokenagent.enroll.batch.NewBatch(...).new(NewOptions(...))` per request,",
        "`tokenagent.enroll.accept.accept_certificate(AcceptOptions(...))` per certificate,",
        "`tokenagent.enroll.sign.co_sign(open_agent(...), ...)` per request. The raw loops (benchmarks/raw.py) call",
        "python-pkcs11 directly: `Session.generate_keypair(..., store=True)` with the templates of tokenagent's own",
        "key plan, CKA_ID = SHA-1 of the public key set on both halves, and one `PrivateKey.sign` (CKM_ECDSA on a",
        "host SHA-256, or CKM_SHA256_RSA_PKCS) over a to-be-signed blob of the CertificationRequestInfo's size.",
    ]
    return lines
