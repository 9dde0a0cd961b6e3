-- The roles of the database psql runs this in (the postgres image runs it in POSTGRES_DB when it
-- creates the cluster): graspfleet_store, the episode store's, which owns the database and
-- nothing else; graspfleet_backup, the backup's, which may only read it. Neither is a superuser
-- or may create roles or databases. Their passwords come from the environment
-- (GRASPFLEET_STORE_PASSWORD, GRASPFLEET_BACKUP_PASSWORD). Run it as a superuser; running it
-- again sets the passwords anew and hands over tables a superuser created (README.md).
\set ON_ERROR_STOP on
\set store_password ''
\set backup_password ''
\getenv store_password GRASPFLEET_STORE_PASSWORD
\getenv backup_password GRASPFLEET_BACKUP_PASSWORD
-- Session settings carry the passwords into the DO block; psql never prints them.
SET graspfleet.store_password = :'store_password';
SET graspfleet.backup_password = :'backup_password';

DO $roles$
DECLARE
  store_password text := current_setting('graspfleet.store_password');
  backup_password text := current_setting('graspfleet.backup_password');
BEGIN
  IF store_password = '' OR backup_password = '' THEN
    RAISE EXCEPTION 'GRASPFLEET_STORE_PASSWORD and GRASPFLEET_BACKUP_PASSWORD must be set'
      USING HINT = 'the Secrets graspfleet-postgres-store and graspfleet-postgres-backup';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'graspfleet_store') THEN
    CREATE ROLE graspfleet_store;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'graspfleet_backup') THEN
    CREATE ROLE graspfleet_backup;
  END IF;
  EXECUTE format(
    'ALTER ROLE graspfleet_store LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
    'NOBYPASSRLS PASSWORD %L', store_password);
  EXECUTE format(
    'ALTER ROLE graspfleet_backup LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
    'NOBYPASSRLS PASSWORD %L', backup_password);
END
$roles$;

RESET graspfleet.store_password;
RESET graspfleet.backup_password;

-- A dump only reads; pg_dump makes its transaction read-only anyway.
ALTER ROLE graspfleet_backup SET default_transaction_read_only = on;

-- The store owns its database, hence its schema public (owned by pg_database_owner), where it
-- creates its tables. Nobody else may connect but the backup.
ALTER DATABASE :"DBNAME" OWNER TO graspfleet_store;
REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"DBNAME" TO graspfleet_backup;

-- Tables a superuser created (a database from before these roles) become the store's; their
-- identity sequences and indexes follow them.
DO $handover$
DECLARE
  found regclass;
BEGIN
  FOR found IN
    SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
      AND c.relowner <> 'graspfleet_store'::regrole
  LOOP
    EXECUTE format('ALTER TABLE %s OWNER TO graspfleet_store', found);
  END LOOP;
END
$handover$;

-- The backup reads every table and sequence the store has created or will create.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO graspfleet_backup;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO graspfleet_backup;
ALTER DEFAULT PRIVILEGES FOR ROLE graspfleet_store IN SCHEMA public
  GRANT SELECT ON TABLES TO graspfleet_backup;
ALTER DEFAULT PRIVILEGES FOR ROLE graspfleet_store IN SCHEMA public
  GRANT SELECT ON SEQUENCES TO graspfleet_backup;
