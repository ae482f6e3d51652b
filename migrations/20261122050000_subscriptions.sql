-- Subscription state as Stripe's events report it (src/billing/events.rs). Stripe is the
-- source of truth; these rows are what keel last learned, and what entitlement is computed
-- from at request time.

-- A team's Stripe customer, set by checkout.session.completed (client_reference_id = team).
ALTER TABLE teams ADD COLUMN stripe_customer_id text UNIQUE;

CREATE TABLE subscriptions (
    id                   text        PRIMARY KEY CHECK (id LIKE 'sub\_%'),
    team_id              uuid        NOT NULL REFERENCES teams ON DELETE CASCADE,
    customer_id          text        NOT NULL,
    -- Stripe's status: trialing, active, past_due, unpaid, canceled, incomplete,
    -- incomplete_expired, paused (kept as sent, so a new status is stored, not refused).
    status               text        NOT NULL,
    price_id             text,
    current_period_end   timestamptz,
    cancel_at_period_end boolean     NOT NULL DEFAULT false,
    trial_end            timestamptz,
    -- Stripe's `created` of the newest event applied to the fields above: an older event
    -- arriving later never overwrites them.
    state_as_of          timestamptz NOT NULL,
    -- Dunning: when the first payment of the current run of failures failed; NULL when the
    -- subscription is in good standing. Paid access lasts GRACE_PERIOD_DAYS from here.
    payment_failed_at    timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_team_id ON subscriptions (team_id);
