-- sqlgate's signed caller identity for PostgreSQL. Run as an administrator (the owner of these
-- objects must not be sqlgate's service role): `sqlgate pg-identity install`
-- runs this file and stores the key; re-running it is safe.
--
-- For every call sqlgate sets the transaction-local setting `sqlgate.identity` to
--   <hex HMAC-SHA256 of body> '.' <body: JSON {u, i, e, p, d, c, pid, exp}>
-- The functions below verify the HMAC with a key only their owner can read, check that the
-- identity was issued for this backend (pid) and has not expired, and return the value or NULL.
-- A query that sets `sqlgate.identity` itself cannot sign it, so a spoofed identity yields NULL.
-- Row-level security: USING (owner = (SELECT sqlgate.username())) — the scalar subquery makes
-- PostgreSQL verify once per statement instead of once per row.

CREATE SCHEMA IF NOT EXISTS sqlgate;
REVOKE ALL ON SCHEMA sqlgate FROM PUBLIC;
GRANT USAGE ON SCHEMA sqlgate TO PUBLIC;

-- HMAC-SHA256 with pg_catalog.sha256 (no extension needed): the key is stored as its two padded
-- forms, ikey = K xor 0x36.., okey = K xor 0x5c.., so HMAC(m) = sha256(okey || sha256(ikey || m)).
CREATE TABLE IF NOT EXISTS sqlgate.identity_key (
    id   int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    ikey bytea NOT NULL CHECK (length(ikey) = 64),
    okey bytea NOT NULL CHECK (length(okey) = 64)
);
REVOKE ALL ON sqlgate.identity_key FROM PUBLIC;

CREATE OR REPLACE FUNCTION sqlgate._identity() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    raw  text := current_setting('sqlgate.identity', true);
    body text;
    k    record;
    j    jsonb;
BEGIN
    IF raw IS NULL OR length(raw) < 67 OR substr(raw, 65, 1) <> '.' THEN
        RETURN NULL;
    END IF;
    body := substr(raw, 66);
    SELECT ikey, okey INTO k FROM sqlgate.identity_key WHERE id = 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF encode(sha256(k.okey || sha256(k.ikey || convert_to(body, 'UTF8'))), 'hex') <> substr(raw, 1, 64) THEN
        RETURN NULL;  -- not signed by sqlgate
    END IF;
    j := body::jsonb;  -- parsed only once the signature proved sqlgate wrote it
    IF (j ->> 'pid')::int IS DISTINCT FROM pg_backend_pid()
       OR (j ->> 'exp')::float8 < extract(epoch FROM clock_timestamp()) THEN
        RETURN NULL;  -- issued for another connection, or too old
    END IF;
    RETURN j;
END
$fn$;
REVOKE ALL ON FUNCTION sqlgate._identity() FROM PUBLIC;

CREATE OR REPLACE FUNCTION sqlgate.username() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT sqlgate._identity() ->> 'u' $fn$;

CREATE OR REPLACE FUNCTION sqlgate.user_id() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT sqlgate._identity() ->> 'i' $fn$;

CREATE OR REPLACE FUNCTION sqlgate.user_email() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT sqlgate._identity() ->> 'e' $fn$;

CREATE OR REPLACE FUNCTION sqlgate.user_provider() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT sqlgate._identity() ->> 'p' $fn$;

CREATE OR REPLACE FUNCTION sqlgate.user_display_name() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT sqlgate._identity() ->> 'd' $fn$;

CREATE OR REPLACE FUNCTION sqlgate.claims() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT sqlgate._identity() -> 'c' $fn$;

GRANT EXECUTE ON FUNCTION sqlgate.username(), sqlgate.user_id(), sqlgate.user_email(), sqlgate.user_provider(),
    sqlgate.user_display_name(), sqlgate.claims() TO PUBLIC;
