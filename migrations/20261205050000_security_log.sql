-- Account security (src/accounts/security.rs; SPEC "Account security and lifecycle"): what
-- /settings/sessions shows of each session, and the user's security log.

-- A session's public id (the token's hash never leaves the database) and the client address it
-- signed in from. Rows of older versions get an id here and no address.
ALTER TABLE sessions
    ADD COLUMN public_id uuid NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN client_ip inet;
CREATE UNIQUE INDEX sessions_public_id ON sessions (public_id);

-- What happened to an account's security, for its owner to see: sign-ins, password changes,
-- sessions ended… Rows go with the user.
CREATE TABLE security_log (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id   uuid        NOT NULL REFERENCES users ON DELETE CASCADE,
    at        timestamptz NOT NULL DEFAULT now(),
    -- 'signed_in', 'password_changed', 'session_revoked'… (src/accounts/security.rs)
    event     text        NOT NULL,
    client_ip inet,
    detail    text
);
CREATE INDEX security_log_user ON security_log (user_id, id DESC);
