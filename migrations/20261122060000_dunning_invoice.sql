-- Dunning is about one invoice: only its payment ends it, and a failure older than the last
-- successful payment (a late delivery) does not start it again.
ALTER TABLE subscriptions
    ADD COLUMN failed_invoice_id text,
    ADD COLUMN payment_succeeded_at timestamptz;
