-- The Checkout Session keel last opened for each team (src/billing/checkout.rs). Two checkouts
-- started before the first one's webhook arrives could each become a subscription: a new
-- checkout reuses or expires the session named here before it opens another. The primary key
-- keeps one row per team; checkouts of one team take turns on a lock of the team's row.
CREATE TABLE checkout_sessions (
    team_id    uuid        PRIMARY KEY REFERENCES teams ON DELETE CASCADE,
    session_id text        NOT NULL CHECK (session_id LIKE 'cs\_%'),
    -- What it sells: a checkout for the same price reuses it, another price expires it.
    price_id   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
