#!/usr/bin/env bash
# Create a private NSS softokn database and a p11-kit module file that loads it.
#
#   eval "$(softhsm/nss-env.sh DIR [USER_PIN])"
#
# DIR gets a fresh NSS database (cert9.db, key4.db: `certutil -N -d sql:DIR`) whose password is
# USER_PIN (default 1234), and DIR/nss-softokn.module: a p11-kit module file naming libsoftokn3.so
# with the init string NSS-based applications give it (`x-init-reserved: configdir='sql:DIR' ...`).
# softokn refuses C_Initialize without that string (CKR_ARGUMENTS_BAD); tokenagent passes a module
# file's x-init-reserved to C_Initialize, so TOKENAGENT_MODULE (or --module) names the file.
# The token to use is "NSS Certificate DB" (the other, "NSS Generic Crypto Services", has no
# storage). Both report serial 0000000000000000. A DIR that already holds a database is reused.
# On stdout: the export lines to eval. Test databases only: the PIN is written to DIR/pin.txt.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 DIR [USER_PIN]" >&2
  exit 2
fi
command -v certutil >/dev/null || { echo "certutil not found: run 'make setup' (libnss3-tools)" >&2; exit 5; }

dir=$(mkdir -p "$1" && cd "$1" && pwd)
pin=${2:-1234}
chmod 700 "$dir"
module=""
for candidate in /usr/lib/*-linux-gnu/libsoftokn3.so /usr/lib64/libsoftokn3.so /usr/lib/libsoftokn3.so; do
  if [ -e "$candidate" ]; then module=$candidate; break; fi
done
[ -n "$module" ] || { echo "libsoftokn3.so not found: run 'make setup' (libnss3)" >&2; exit 5; }

if [ ! -e "$dir/key4.db" ]; then
  (umask 077; printf '%s\n' "$pin" > "$dir/pin.txt")
  certutil -N -d "sql:$dir" -f "$dir/pin.txt" >/dev/null
fi
cat > "$dir/nss-softokn.module" <<MODULE
# NSS softokn on a private database, made by tokenagent's softhsm/nss-env.sh
module: $module
x-init-reserved: configdir='sql:$dir' certPrefix='' keyPrefix='' secmod='secmod.db' flags=
MODULE
printf 'export TOKENAGENT_MODULE=%q\n' "$dir/nss-softokn.module"
