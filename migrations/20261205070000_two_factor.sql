-- Two-factor sign-in (src/accounts/two_factor.rs; SPEC "Account security and lifecycle").

-- A user's TOTP secret: sealed with a key derived from SECRET_KEY (nonce, then AES-256-GCM
-- ciphertext and tag). NULL `enabled_at` while the enrolment waits for its first code.
CREATE TABLE two_factor (
    user_id       uuid        PRIMARY KEY REFERENCES users ON DELETE CASCADE,
    secret_sealed bytea       NOT NULL,
    enabled_at    timestamptz,
    -- The time step of the last code accepted: a code is accepted once.
    last_step     bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Single-use recovery codes, as SHA-256 of the code (lower case, letters and digits only).
CREATE TABLE recovery_codes (
    user_id   uuid        NOT NULL REFERENCES users ON DELETE CASCADE,
    code_hash bytea       NOT NULL CHECK (length(code_hash) = 32),
    used_at   timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- A login whose password was right, waiting for its second factor: the browser holds the
-- token (a cookie), only its SHA-256 is here. Five minutes.
CREATE TABLE pending_logins (
    id_hash    bytea       PRIMARY KEY CHECK (length(id_hash) = 32),
    user_id    uuid        NOT NULL REFERENCES users ON DELETE CASCADE,
    team_id    uuid        NOT NULL REFERENCES teams ON DELETE CASCADE,
    -- Where to go once signed in (a same-site path, checked at login).
    next       text,
    expires_at timestamptz NOT NULL
);
CREATE INDEX pending_logins_expires_at ON pending_logins (expires_at);
