#!/usr/bin/env bash
# `make demo`: the enrollment-station story end to end, against a real CA server on 127.0.0.1.
#
#   two SoftHSM cards (the agent's, a user's) -> django-ca + django-ca-cmc (CMC over HTTP, its own
#   venv in build/peers, installed on first use) -> the agent's key born on its card, certified by
#   the CA and registered with it -> `tokenagent enroll` for the user: key on the user's card, CMC
#   request co-signed by the agent with RequesterName, sent to the CA, issued, installed next to the
#   key -> pkcs11-tool and OpenSSL check the card -> `tokenagent batch`: server keys from a CSV on an
#   HSM partition, run twice (the journal skips what is done). The server is stopped at the end,
#   whatever happens.
#
# Everything lives in build/demo (or $TOKENAGENT_DEMO_DIR: the tests run it elsewhere) and starts
# from nothing on each run.
set -euo pipefail
cd "$(dirname "$0")/.."
ta=.venv/bin/tokenagent
py=.venv/bin/python
demo=${TOKENAGENT_DEMO_DIR:-build/demo}
rm -rf "$demo"
mkdir -p "$demo"

# Each step prints one line saying what it does, then the command and its output.
# Bold only on a terminal, and never with NO_COLOR set (https://no-color.org).
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
# The command is shown quoted as a shell would need it, so it can be pasted (URIs hold ';').
quoted() { local a out=(); for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$a"); else out+=("${a@Q}"); fi; done; printf '%s' "${out[*]}"; }
step() { printf '\n%s== %s%s\n$ %s\n' "$bold" "$1" "$plain" "$(quoted "${@:2}")"; "${@:2}"; }
said() { printf '%s== %s%s\n' "$bold" "$1" "$plain"; }

eval "$(softhsm/softhsm-env.sh "$demo/softhsm" user-card:87654321:1234 agent-card:87654321:5678)"
export TOKENAGENT_STATE_DIR="$demo/state"   # keep the demo's pending store out of ~/.local/state
# Demo cards only: real PINs come from a prompt, a file or an fd (docs/tokens.md).
export USER_PIN=1234 AGENT_PIN=5678
said "Two SoftHSM cards created in $demo/softhsm: user-card and agent-card"

# The CA: django-ca with its CMC endpoint, on a free loopback port.
$py tests/peers/djangoca.py ensure-venv >/dev/null
$py tests/peers/djangoca.py create "$demo/ca" >/dev/null
stop_ca() { $py tests/peers/djangoca.py stop "$demo/ca" >/dev/null 2>&1 || true; }
trap stop_ca EXIT
$py tests/peers/djangoca.py start "$demo/ca" >/dev/null
ca_url=$($py -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$demo/ca/server.json")
ca_pem="$demo/ca/ca.pem"
said "CA started: django-ca-cmc at $ca_url (RSA CA, SHA-256; log in $demo/ca/server.log)"

step "Modules, slots and tokens" $ta tokens

step "The agent's key is born on the agent card; the request is signed there" \
    $ta new docs/examples/agent.inf "$demo/agent.req" --token agent-card --pin-source env:AGENT_PIN
step "The CA issues the agent's certificate (Certificate Request Agent EKU)" \
    $py tests/peers/djangoca.py issue "$demo/ca" "$demo/agent.req" "$demo/agent.cer" --agent
step "OpenSSL shows the agent's certificate" openssl x509 -in "$demo/agent.cer" -noout -subject -issuer -ext extendedKeyUsage
step "The agent's certificate goes onto the agent card next to its key" \
    $ta accept "$demo/agent.cer" --token agent-card --pin-source env:AGENT_PIN
step "The CA registers the agent's certificate as a CMC client it accepts signatures from" \
    $py tests/peers/djangoca.py add-client "$demo/ca" "$demo/agent.cer"

agent=(--agent "pkcs11:token=agent-card;object=enrollment-agent;type=private" --agent-pin-source env:AGENT_PIN)
step "What enroll will put into the request (touches nothing)" \
    $ta new docs/examples/smartcard-logon-cmc.inf --dry-run --token user-card --pin-source env:USER_PIN "${agent[@]}"
step "Enroll Grace on behalf of EXAMPLE\\grace: key on her card, CMC co-signed by the agent card, issued, installed" \
    $ta enroll docs/examples/smartcard-logon-cmc.inf --config "cmc+$ca_url" --ca-trust "$ca_pem" \
    --token user-card --pin-source env:USER_PIN "${agent[@]}" --chain
step "pkcs11-tool lists Grace's card: the key pair, its certificate under the same ID, the CA certificate" \
    pkcs11-tool --module "$TOKENAGENT_MODULE" --token-label user-card --login --pin "$USER_PIN" -O
step "Nothing left pending" $ta pending

cert_id=$(pkcs11-tool --module "$TOKENAGENT_MODULE" --token-label user-card -O --type cert 2>/dev/null |
    awk '/label:.*Grace Hopper/ {found=1} found && /ID:/ {print $2; exit}')
pkcs11-tool --module "$TOKENAGENT_MODULE" --token-label user-card --read-object --type cert --id "$cert_id" \
    -o "$demo/grace.der" >/dev/null 2>&1
openssl x509 -inform DER -in "$demo/grace.der" -out "$demo/grace.pem"
step "OpenSSL verifies the certificate read back from the card against the CA" \
    openssl verify -CAfile "$ca_pem" "$demo/grace.pem"
step "... and shows what the CA put into it" \
    openssl x509 -in "$demo/grace.pem" -noout -subject -issuer -ext subjectAltName,extendedKeyUsage

uri=$($ta objects --token user-card --pin-source env:USER_PIN --type private-key --json | $py -c \
    'import json,sys; print([o["uri"] for o in json.load(sys.stdin)["objects"] if o["label"] == "grace-logon"][0])')
printf 'Signed with the card through its pkcs11: URI\n' > "$demo/message.txt"
openssl x509 -in "$demo/grace.pem" -pubkey -noout > "$demo/grace.pub"
# The engine reads the PIN from a file named in the URI (RFC 7512 pin-source), never from argv.
(umask 077; printf '%s' "$USER_PIN" > "$demo/user.pin")
step "OpenSSL signs with Grace's key on the card through the pkcs11 engine" env PKCS11_MODULE_PATH="$TOKENAGENT_MODULE" \
    openssl dgst -sha256 -engine pkcs11 -keyform engine -sign "$uri?pin-source=file:$demo/user.pin" \
    -out "$demo/message.sig" "$demo/message.txt"
step "... and the signature verifies with the certificate the CA issued" \
    openssl dgst -sha256 -verify "$demo/grace.pub" -signature "$demo/message.sig" "$demo/message.txt"

# Server keys in bulk: an HSM partition, one key and request per CSV row (tokenagent batch).
eval "$(softhsm/softhsm-env.sh "$demo/softhsm" server-hsm:87654321:4321)"
export SERVER_PIN=4321
step "A batch of server keys on an HSM partition: one key and request per CSV row, one login, journaled" \
    $ta batch docs/examples/server-batch.inf --items docs/examples/servers.csv --out "$demo/servers" \
    --name-column host --token server-hsm --pin-source env:SERVER_PIN
step "OpenSSL checks a request of the batch: its signature, and the row's host in the subject" \
    openssl req -in "$demo/servers/web2.example.com.req" -noout -verify -subject
step "The same batch again: the journal says every row is done, nothing is made twice" \
    $ta batch docs/examples/server-batch.inf --items docs/examples/servers.csv --out "$demo/servers" \
    --name-column host --token server-hsm --pin-source env:SERVER_PIN
step "The journal: each row's key started, then key and request done (append-only SQLite)" \
    $ta journal --user db1.example.com

stop_ca
trap - EXIT
said "CA stopped. Demo cards live in $demo/softhsm (SOFTHSM2_CONF=$SOFTHSM2_CONF)."
