-- 0006: server-side time limits for every session of this database, without a SET on request paths.
--
-- A SET in a session makes RDS Proxy pin it to one database connection, so the app never sends one;
-- database-level defaults apply to every new session instead, the proxy's own included. With them
-- a stalled statement is cancelled by the server (SQLSTATE 57014, or 55P03 for a lock wait) before
-- the client's read timeout (DB_READ_TIMEOUT, 6 s by default) fires, so the app gets a clear error
-- and never has to guess whether a timed-out write committed.
--
-- * statement_timeout 4 s: the slowest request path, creating a 10,000-member group, takes well
--   under a second (docs/performance.md).
-- * lock_timeout 2 s: sends to one conversation queue on its row; two seconds of queueing is
--   already a fault worth reporting.
-- * idle_in_transaction_session_timeout 15 s: the app runs no multi-statement transactions, so a
--   session idle inside one is a stuck tool or client, not the app.
--
-- Database defaults apply to sessions opened after this runs. Long maintenance sessions (the
-- migration runner, bulk loads) set their own limits for themselves. To scope the limits to the
-- app's role only, run the same ALTERs as `ALTER ROLE <app user> IN DATABASE <db> SET ...` instead
-- (README, Deploying), or put them in the proxy target group's InitQuery.

DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET statement_timeout = %L', current_database(), '4s');
    EXECUTE format('ALTER DATABASE %I SET lock_timeout = %L', current_database(), '2s');
    EXECUTE format('ALTER DATABASE %I SET idle_in_transaction_session_timeout = %L', current_database(), '15s');
END
$$;
