-- Durable background jobs (src/jobs/). A job row is written in the same transaction as the
-- change that causes it, so it exists exactly when that change committed. Workers claim rows
-- with FOR UPDATE SKIP LOCKED and hold them under a lease: a worker that dies (kill -9) stops
-- renewing its lease, and the job becomes claimable again when the lease expires.
-- Finished jobs are deleted; dead ones stay, with their last error, until retried or purged.
CREATE TABLE jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL,
    status       text        NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'dead')),
    attempts     integer     NOT NULL DEFAULT 0,
    max_attempts integer     NOT NULL CHECK (max_attempts > 0),
    -- When a queued job may run (now, or later for a retry or a delayed job).
    run_at       timestamptz NOT NULL DEFAULT now(),
    -- The lease of a running job, and who holds it.
    locked_until timestamptz,
    locked_by    text,
    last_error   text,
    -- Optional caller-chosen key: a second enqueue with the same key is ignored.
    key          text UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- What a worker scans: queued jobs that are due, and running jobs whose lease ran out.
CREATE INDEX jobs_due ON jobs (run_at) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (locked_until) WHERE status = 'running';

-- Scheduled work (src/jobs/schedule.rs): the last period each schedule was enqueued for.
-- Moving `last_period` forward is a compare-and-set, so across any number of instances each
-- period is enqueued once.
CREATE TABLE job_schedules (
    name        text PRIMARY KEY,
    last_period timestamptz NOT NULL
);

-- Wake the workers (LISTEN keel_jobs) when jobs are added. NOTIFY inside a transaction is
-- delivered at commit, and not at all on rollback, like the rows themselves.
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keel_jobs', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify AFTER INSERT ON jobs FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify();
