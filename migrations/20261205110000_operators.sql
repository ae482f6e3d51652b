-- The operator console (src/admin.rs, src/http/admin.rs; SPEC "Operator console").

ALTER TABLE users
    -- Granted and revoked only by `keel admin grant|revoke EMAIL`.
    ADD COLUMN is_operator boolean NOT NULL DEFAULT false,
    -- Set by an operator: the user cannot sign in, and their sessions ended when it was set.
    ADD COLUMN disabled_at timestamptz;

-- An operator viewing the product as this session's user (impersonation): such a session is
-- the operator's only for 30 minutes and ends with the operator's account.
ALTER TABLE sessions ADD COLUMN impersonator_id uuid REFERENCES users ON DELETE CASCADE;

-- What operators did: who, from where, to what. Append-only like the team audit log; a row
-- outlives its operator's account (the address stays).
CREATE TABLE operator_audit_log (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    operator_id    uuid        REFERENCES users ON DELETE SET NULL,
    operator_email text        NOT NULL,
    -- 'user.disable', 'event.replay', 'job.retry'… (src/admin.rs)
    action         text        NOT NULL,
    -- What it was done to: 'user:<uuid>', 'event:<id>', 'job:<id>'.
    target         text        NOT NULL,
    client_ip      inet,
    -- The outcome, e.g. a replay's error.
    detail         text
);
CREATE INDEX operator_audit_log_target ON operator_audit_log (target, id DESC);

-- The console's searches and lists, each served by an index (EXPLAINs in README):
-- users in address order from the start of their address ("C" ordering, which LIKE 'prefix%'
-- can use), or by its domain (a search starting with '@', on the reversed address);
CREATE INDEX users_email_c ON users ((lower(email) COLLATE "C"));
CREATE INDEX users_email_reversed ON users ((reverse(lower(email)) COLLATE "C"));
-- teams by the start of their name, newest first otherwise;
CREATE INDEX teams_name_c ON teams ((lower(name) COLLATE "C"));
CREATE INDEX teams_created ON teams (created_at DESC, id DESC);
-- the outbox by status, newest first;
CREATE INDEX emails_status ON emails (status, id DESC);
-- stored Stripe events newest first, also of one type;
CREATE INDEX stripe_events_received ON stripe_events (received_at DESC, id DESC);
CREATE INDEX stripe_events_type ON stripe_events (type, received_at DESC, id DESC);
-- jobs that failed (dead, or queued again with an error), and an event's processing job.
CREATE INDEX jobs_failed ON jobs (updated_at DESC) WHERE last_error IS NOT NULL;
CREATE INDEX jobs_stripe_event ON jobs ((payload ->> 'event_id')) WHERE kind = 'stripe.process_event';
