#!/bin/bash
# Dumps the database libpq's environment names (PGHOST, PGDATABASE, PGUSER, PGPASSWORD,
# PGSSLMODE, ...) into $BACKUP_DIR as graspfleet-<UTC time>.dump, then keeps the newest
# $BACKUP_KEEP dumps. The postgres-backup CronJob runs it (README.md).
set -euo pipefail

dir=${BACKUP_DIR:?set BACKUP_DIR to the folder of the dumps}
keep=${BACKUP_KEEP:-7}
if ! [[ $keep =~ ^[1-9][0-9]*$ ]]; then
  echo "backup.sh: BACKUP_KEEP must be a positive number, not '$keep'" >&2
  exit 2
fi
name="graspfleet-$(date -u +%Y%m%dT%H%M%SZ).dump"
partial="$dir/.$name.partial"

# A run that failed left its partial dump (the CronJob never runs two at once).
rm -f "$dir"/.graspfleet-*.dump.partial
trap 'rm -f "$partial"' EXIT
pg_dump --format=custom --no-password --file="$partial"
# Only a complete dump gets a dump's name; pg_dump wrote it to disk before it exited.
mv "$partial" "$dir/$name"
trap - EXIT
echo "backup.sh: wrote $dir/$name ($(stat -c %s "$dir/$name") bytes)"

# The newest $keep complete dumps stay, this one among them: a dump is deleted only once a
# newer one is complete. The names sort by time.
find "$dir" -maxdepth 1 -name 'graspfleet-*.dump' -printf '%f\n' | sort -r | tail -n +$((keep + 1)) |
  while read -r old; do
    rm -f "$dir/$old"
    echo "backup.sh: deleted $dir/$old"
  done
