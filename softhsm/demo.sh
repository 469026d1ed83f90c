#!/usr/bin/env bash
# `make demo`: the main job end to end on embedded defaults (fresh SoftHSM tokens).
# Each run starts from nothing, in build/demo: tokens, new, a local CA, accept, OpenSSL using the card.
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

# A local CA (OpenSSL) issues the certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=Demo Issuing CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$demo/ca.key" -out "$demo/ca.pem" -days 30 2>/dev/null
step "The local CA issues the certificate" openssl x509 -req -in "$demo/ada.req" -CA "$demo/ca.pem" \
    -CAkey "$demo/ca.key" -copy_extensions copy -days 30 -out "$demo/ada.cer"
step "Issued" openssl x509 -in "$demo/ada.cer" -noout -subject -issuer -ext subjectAltName,extendedKeyUsage
openssl crl2pkcs7 -nocrl -certfile "$demo/ada.cer" -certfile "$demo/ca.pem" -outform DER -out "$demo/ada.p7b"
step "certreq -accept: the certificate and its CA go onto the card next to the key" \
    $ta accept "$demo/ada.p7b" --chain --token user-card --pin-source env:USER_PIN
step "Accepting again changes nothing" $ta accept "$demo/ada.p7b" --chain --token user-card --pin-source env:USER_PIN
step "The card now: key and certificate share one CKA_ID" $ta objects --token user-card --pin-source env:USER_PIN
step "No request pending any more" $ta pending
uri=$($ta accept "$demo/ada.p7b" --token user-card --pin-source env:USER_PIN --json | python3 -c \
    'import json,sys; print(json.load(sys.stdin)["key"]["uri"])')
printf 'Signed with the card through its pkcs11: URI\n' > "$demo/message.txt"
openssl x509 -in "$demo/ada.cer" -pubkey -noout > "$demo/ada.pub"
step "OpenSSL signs with the card's key through the pkcs11 engine" env PKCS11_MODULE_PATH="$TOKENAGENT_MODULE" \
    openssl dgst -sha256 -engine pkcs11 -keyform engine -sign "$uri?pin-value=$USER_PIN" \
    -out "$demo/message.sig" "$demo/message.txt"
step "... and the signature verifies with the accepted certificate" \
    openssl dgst -sha256 -verify "$demo/ada.pub" -signature "$demo/message.sig" "$demo/message.txt"

# The enrollment station: the agent's own key and certificate (Certificate Request Agent EKU) on its card
export AGENT_PIN=5678
$ta new docs/examples/agent.inf "$demo/agent.req" --token agent-card --pin-source env:AGENT_PIN >/dev/null
openssl x509 -req -in "$demo/agent.req" -CA "$demo/ca.pem" -CAkey "$demo/ca.key" -copy_extensions copy \
    -days 30 -out "$demo/agent.cer" 2>/dev/null
$ta accept "$demo/agent.cer" --token agent-card --pin-source env:AGENT_PIN >/dev/null
step "Enroll on behalf of Grace: key born on her card, the agent's card co-signs (certreq -new -cert)" \
    $ta new docs/examples/smartcard-logon-eobo.inf "$demo/grace.req" --binary --token user-card --pin-source env:USER_PIN \
    --agent "pkcs11:token=agent-card;object=enrollment-agent;type=private" --agent-pin-source env:AGENT_PIN
step "What the CA receives (certutil -dump)" $ta show "$demo/grace.req"
step "OpenSSL verifies the agent's signature" openssl cms -verify -in "$demo/grace.req" -inform DER \
    -CAfile "$demo/ca.pem" -purpose any -binary -out "$demo/grace.csr.der"
openssl x509 -req -in "$demo/grace.csr.der" -inform DER -CA "$demo/ca.pem" -CAkey "$demo/ca.key" \
    -copy_extensions copy -days 30 -out "$demo/grace.cer" 2>/dev/null
step "The CA issued Grace's certificate; onto her card it goes" \
    $ta accept "$demo/grace.cer" --token user-card --pin-source env:USER_PIN

printf '\nDemo tokens live in %s (SOFTHSM2_CONF=%s).\n' "$demo/softhsm" "$SOFTHSM2_CONF"
