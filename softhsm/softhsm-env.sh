#!/usr/bin/env bash
# Create an isolated SoftHSM instance and initialize named tokens in it.
#
#   eval "$(softhsm/softhsm-env.sh DIR [LABEL[:SO_PIN:USER_PIN]]...)"
#
# DIR gets its own softhsm2.conf whose directories.tokendir is DIR/tokens, so nothing touches
# /etc/softhsm or /var/lib/softhsm. Each LABEL becomes a fresh token (default PINs: SO 87654321,
# user 1234; these are test tokens, so the PINs are passed to softhsm2-util on its command line).
# A token whose label already exists in DIR is left as it is. On stdout: the export lines to eval.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 DIR [LABEL[:SO_PIN:USER_PIN]]..." >&2
  exit 2
fi
command -v softhsm2-util >/dev/null || { echo "softhsm2-util not found: run 'make setup'" >&2; exit 5; }

dir=$(mkdir -p "$1" && cd "$1" && pwd)
shift
mkdir -p "$dir/tokens"
chmod 700 "$dir" "$dir/tokens"
cat > "$dir/softhsm2.conf" <<CONF
# Private SoftHSM instance made by tokenagent's softhsm/softhsm-env.sh
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
CONF
export SOFTHSM2_CONF="$dir/softhsm2.conf"

for spec in "$@"; do
  IFS=: read -r label so_pin user_pin <<<"$spec"
  so_pin=${so_pin:-87654321}
  user_pin=${user_pin:-1234}
  if softhsm2-util --show-slots 2>/dev/null | grep -q "Label: *$label *\$"; then
    continue
  fi
  softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$user_pin" >/dev/null
done

module=""
for candidate in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*-linux-gnu/softhsm/libsofthsm2.so \
                 /usr/local/lib/softhsm/libsofthsm2.so; do
  if [ -e "$candidate" ]; then module=$candidate; break; fi
done
printf 'export SOFTHSM2_CONF=%q\n' "$SOFTHSM2_CONF"
printf 'export TOKENAGENT_MODULE=%q\n' "$module"
