#!/usr/bin/env bash
# Start a private software TPM (swtpm) with a tpm2-pkcs11 token in it, or stop it.
#
#   eval "$(softhsm/swtpm-env.sh start DIR [LABEL[:SO_PIN:USER_PIN]])"
#   softhsm/swtpm-env.sh stop DIR
#
# start: swtpm keeps its state in DIR/state and listens on 127.0.0.1 only, on the ports in
# SWTPM_PORT (and SWTPM_PORT+1 for its control channel) or on free ones it picks; no system
# daemon (tpm2-abrmd) is involved: tpm2-pkcs11 talks to swtpm through the swtpm TCTI. The
# tpm2-pkcs11 store (its SQLite database) is DIR/store. The token LABEL (default tpm) is made with
# pkcs11-tool --init-token/--init-pin through tpm2-pkcs11 itself (tpm2_ptool needs a resource
# manager: without one its transient objects fill the TPM's three object slots). Default PINs: SO
# 87654321, user 1234 (test tokens: they pass through pkcs11-tool's command line).
# On stdout: the export lines to eval (TCTI, store, TOKENAGENT_MODULE).
# stop: ends the swtpm of DIR (its pid is in DIR/swtpm.pid). The state stays until DIR is removed.
set -euo pipefail

usage() { echo "usage: $0 start DIR [LABEL[:SO_PIN:USER_PIN]] | $0 stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)

if [ "$action" = stop ]; then
  if [ -s "$dir/swtpm.pid" ]; then
    pid=$(cat "$dir/swtpm.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$dir/swtpm.pid"
  fi
  exit 0
fi
[ "$action" = start ] || usage
for tool in swtpm pkcs11-tool; do
  command -v $tool >/dev/null || { echo "$tool not found: run 'make setup'" >&2; exit 5; }
done
module=""
for candidate in /usr/lib/*-linux-gnu/pkcs11/libtpm2_pkcs11.so /usr/lib64/pkcs11/libtpm2_pkcs11.so \
                 /usr/lib/pkcs11/libtpm2_pkcs11.so; do
  if [ -e "$candidate" ]; then module=$candidate; break; fi
done
[ -n "$module" ] || { echo "libtpm2_pkcs11.so not found: run 'make setup' (libtpm2-pkcs11-1)" >&2; exit 5; }

IFS=: read -r label so_pin user_pin <<<"${3:-tpm}"
so_pin=${so_pin:-87654321}
user_pin=${user_pin:-1234}
mkdir -p "$dir/state" "$dir/store"
chmod 700 "$dir" "$dir/state" "$dir/store"

free_port() {  # two consecutive free ports on 127.0.0.1; prints the first
  python3 - <<'PY'
import socket
for _ in range(100):
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
        try:
            b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        print(port)
        break
PY
}
port=${SWTPM_PORT:-$(free_port)}
swtpm socket --tpm2 --tpmstate "dir=$dir/state" \
  --server "type=tcp,port=$port,bindaddr=127.0.0.1" --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
  --flags not-need-init,startup-clear --log "file=$dir/swtpm.log" --pid "file=$dir/swtpm.pid" --daemon
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

export TPM2_PKCS11_TCTI="swtpm:host=127.0.0.1,port=$port"
export TPM2TOOLS_TCTI="$TPM2_PKCS11_TCTI"
export TPM2_PKCS11_STORE="$dir/store"
export TSS2_LOG="all+NONE"  # the TSS logs every failed TCTI probe on stderr otherwise
if ! pkcs11-tool --module "$module" -L 2>/dev/null | grep -q "token label *: *$label *\$"; then
  pkcs11-tool --module "$module" --init-token --label "$label" --so-pin "$so_pin" >/dev/null
  pkcs11-tool --module "$module" --token-label "$label" --login --login-type so --so-pin "$so_pin" \
    --init-pin --pin "$user_pin" >/dev/null
  # tpm2-pkcs11 offers RSA-PSS only once it knows the TPM signs PSS with a hash-length salt (its
  # "pss-sigs-good" token setting). `tpm2_ptool addtoken` finds out by signing once; C_InitToken
  # leaves it unknown, and 1.9 never finds out later (sign.c compares CKA_CLASS with CKK_RSA). So
  # do what addtoken does: sign with a TPM PSS key, check the salt with OpenSSL, record the answer.
  if command -v tpm2_createprimary >/dev/null; then
    work=$(mktemp -d)
    (
      cd "$work" && echo tokenagent > msg
      flush() { tpm2_flushcontext -t >/dev/null 2>&1 || true; }  # no resource manager: we flush
      tpm2_createprimary -Q -C o -c p.ctx && flush &&
        tpm2_create -Q -C p.ctx -G rsa2048:rsapss-sha256:null -u k.pub -r k.priv && flush &&
        tpm2_load -Q -C p.ctx -u k.pub -r k.priv -c k.ctx && flush &&
        tpm2_sign -Q -c k.ctx -g sha256 -s rsapss -f plain -o sig msg && flush &&
        tpm2_readpublic -Q -c k.ctx -f pem -o k.pem && flush
      flush
      good=false
      if openssl dgst -sha256 -verify k.pem -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest \
          -signature sig msg >/dev/null 2>&1; then good=true; fi
      python3 - "$dir/store/tpm2_pkcs11.sqlite3" "$label" "$good" <<'PY'
import sqlite3, sys
path, label, good = sys.argv[1:]
with sqlite3.connect(path) as db:
    config = ('---\n!!map {\n  ? !!str "token-init"\n  : !!bool "true",\n'
              f'  ? !!str "pss-sigs-good"\n  : !!bool "{good}",\n}}\n...\n')
    db.execute("UPDATE tokens SET config = ? WHERE label = ?", (config, label))
PY
    ) >/dev/null 2>&1 || echo "swtpm-env.sh: could not test the TPM's PSS salt; RSA-PSS stays off" >&2
    rm -rf "$work"
  fi
fi
for name in TPM2_PKCS11_TCTI TPM2TOOLS_TCTI TPM2_PKCS11_STORE TSS2_LOG; do
  printf 'export %s=%q\n' "$name" "${!name}"
done
printf 'export TOKENAGENT_MODULE=%q\n' "$module"
