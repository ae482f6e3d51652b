-- Every change keel makes to billing state on its own initiative rather than because a webhook
-- said so (src/billing/reconcile.rs): what it was, what it became, and why. Webhook-driven
-- changes are traced by their stored event instead (stripe_events).
CREATE TABLE billing_audit_log (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    -- What made the change: 'reconcile'.
    source          text        NOT NULL,
    -- 'created' (Stripe had a subscription keel had never heard of) or 'updated'.
    action          text        NOT NULL,
    subscription_id text        NOT NULL,
    team_id         uuid        REFERENCES teams ON DELETE SET NULL,
    -- The subscription's facts before (NULL when created) and after.
    before          jsonb,
    after           jsonb       NOT NULL
);
CREATE INDEX billing_audit_log_subscription ON billing_audit_log (subscription_id, at);
