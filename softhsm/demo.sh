#!/usr/bin/env bash
# `make demo`: the main job end to end on embedded defaults (fresh SoftHSM tokens).
# Each run starts from nothing, in build/demo. Later stages (new, CA, accept) extend this script.
set -euo pipefail
cd "$(dirname "$0")/.."
ta=.venv/bin/tokenagent
demo=build/demo
rm -rf "$demo"
eval "$(softhsm/softhsm-env.sh "$demo/softhsm" user-card:87654321:1234 agent-card:87654321:5678)"
export USER_PIN=1234   # demo tokens only: real PINs come from a prompt, a file or an fd

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "Modules, slots and tokens" $ta tokens
step "The user's card (empty so far)" $ta objects --token user-card --pin-source env:USER_PIN
step "Same, as JSON" $ta objects --token pkcs11:token=agent-card --no-login --json
export TOKENAGENT_STATE_DIR="$demo/state"   # keep the demo's pending store out of ~/.local/state
step "What 'new' would do (touches nothing)" \
    $ta new docs/examples/smartcard-logon.inf --dry-run --token user-card --pin-source env:USER_PIN
step "Key generated on the user's card, request signed there" \
    $ta new docs/examples/smartcard-logon.inf "$demo/ada.req" --token user-card --pin-source env:USER_PIN
step "OpenSSL checks the request" openssl req -in "$demo/ada.req" -verify -noout -subject
step "The key on the card: sensitive, never extractable, sign only" \
    $ta objects --token user-card --pin-source env:USER_PIN --type private-key
step "Pending requests" $ta pending

# A local CA (OpenSSL) issues the certificate; installing it on the card is `accept` (next issue).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=Demo Issuing CA" \
    -keyout "$demo/ca.key" -out "$demo/ca.pem" -days 30 2>/dev/null
step "The local CA issues the certificate" openssl x509 -req -in "$demo/ada.req" -CA "$demo/ca.pem" \
    -CAkey "$demo/ca.key" -copy_extensions copy -days 30 -out "$demo/ada.cer"
step "Issued" openssl x509 -in "$demo/ada.cer" -noout -subject -issuer -ext subjectAltName,extendedKeyUsage
printf '\nDemo tokens live in %s (SOFTHSM2_CONF=%s).\n' "$demo/softhsm" "$SOFTHSM2_CONF"
