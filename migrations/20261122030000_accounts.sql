-- Accounts (src/accounts/): users, the teams that own billing, who belongs to which team,
-- server-side sessions, and the single-use tokens of emailed links.

CREATE TABLE users (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Kept as typed; unique regardless of case (see users_email_key).
    email             text        NOT NULL CHECK (length(email) <= 254),
    -- An argon2id PHC string ($argon2id$v=19$m=…,t=…,p=…$salt$hash).
    password_hash     text        NOT NULL,
    email_verified_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Billing attaches to a team; every user gets a personal team at signup.
CREATE TABLE teams (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    team_id    uuid        NOT NULL REFERENCES teams ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users ON DELETE CASCADE,
    role       text        NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX memberships_user_id ON memberships (user_id);

-- One row per signed-in browser. The cookie holds a random token; only its SHA-256 is kept
-- here, so a copy of this table does not let anyone in.
CREATE TABLE sessions (
    id_hash      bytea       PRIMARY KEY CHECK (length(id_hash) = 32),
    user_id      uuid        NOT NULL REFERENCES users ON DELETE CASCADE,
    -- The team the user is working in (their personal team at login).
    team_id      uuid        NOT NULL REFERENCES teams ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Refreshed at most once a minute; the session ends after an idle period.
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    -- The absolute end, however active the session is.
    expires_at   timestamptz NOT NULL,
    user_agent   text
);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- The tokens of emailed links (verify an address, reset a password): single use, expiring,
-- stored as SHA-256 only.
CREATE TABLE auth_tokens (
    token_hash bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    purpose    text        NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    user_id    uuid        NOT NULL REFERENCES users ON DELETE CASCADE,
    -- The address the link was sent to: verifying it proves this address, no other.
    email      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX auth_tokens_user_id ON auth_tokens (user_id, purpose);
CREATE INDEX auth_tokens_expires_at ON auth_tokens (expires_at);
