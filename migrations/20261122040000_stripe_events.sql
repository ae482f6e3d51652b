-- Stripe webhook deliveries (src/billing/webhooks.rs). A verified event is written here, with
-- the job that processes it, in one transaction, before the endpoint answers 200: Stripe
-- stops retrying only once the event is safe. The event id is the primary key, so a
-- redelivery is recognised and acknowledged without being processed again.
CREATE TABLE stripe_events (
    id           text        PRIMARY KEY CHECK (id LIKE 'evt\_%'),
    type         text        NOT NULL,
    api_version  text,
    livemode     boolean     NOT NULL,
    -- Stripe's `created`: the order of events about one object.
    created      timestamptz NOT NULL,
    -- The body exactly as Stripe sent and signed it.
    payload      text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- Set by processing; NULL while the event waits for it.
    processed_at timestamptz
);
CREATE INDEX stripe_events_waiting ON stripe_events (received_at) WHERE processed_at IS NULL;
