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
printf '\nDemo tokens live in %s (SOFTHSM2_CONF=%s).\n' "$demo/softhsm" "$SOFTHSM2_CONF"
