#!/bin/bash
# Restores a dump of backup.sh into the empty database libpq's environment names (PGHOST,
# PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE, ...): the dump named by $1 or $RESTORE_DUMP (a
# path, or a name in $BACKUP_DIR), else the newest in $BACKUP_DIR. README.md, "Restore".
set -euo pipefail

dump=${1:-${RESTORE_DUMP:-}}
if [[ -z $dump ]]; then
  dir=${BACKUP_DIR:?set BACKUP_DIR to the folder of the dumps, or name a dump}
  dump=$(find "$dir" -maxdepth 1 -name 'graspfleet-*.dump' -printf '%f\n' | sort -r | head -n 1)
  [[ -n $dump ]] || { echo "restore.sh: no dump in $dir" >&2; exit 1; }
fi
if [[ $dump != */* && -n ${BACKUP_DIR:-} ]]; then
  dump="$BACKUP_DIR/$dump"
fi
database=${PGDATABASE:?set PGDATABASE to the database to restore into}

# Into a fresh database only: a restore never mixes with what is there.
tables=$(psql --no-psqlrc --no-password --tuples-only --no-align --set=ON_ERROR_STOP=1 \
  --command="SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
if [[ $tables != 0 ]]; then
  echo "restore.sh: $database already holds $tables tables; restore into a new, empty one" >&2
  exit 1
fi
echo "restore.sh: restoring $dump into $database"
# One transaction: the database holds all of the dump, or stays empty.
pg_restore --exit-on-error --single-transaction --no-owner --no-password \
  --dbname="$database" "$dump"
echo "restore.sh: restored $dump"
