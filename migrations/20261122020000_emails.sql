-- The email outbox (src/mail/). An email is written here, rendered, in the same transaction
-- as the change that causes it, together with the job that delivers it. Delivery marks the row
-- sent right after the SMTP server accepts it, so a retried job never sends it again.
CREATE TABLE emails (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Chosen by the caller (e.g. "dunning:<invoice>:<attempt>"): the same email is never
    -- queued twice.
    idempotency_key text        NOT NULL UNIQUE,
    recipient       text        NOT NULL,
    subject         text        NOT NULL,
    text_body       text        NOT NULL,
    html_body       text        NOT NULL,
    -- The Message-ID header, the same on every attempt, so receivers can drop a duplicate.
    message_id      text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
