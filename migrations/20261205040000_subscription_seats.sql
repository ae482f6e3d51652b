-- Per-seat plans (src/billing/seats.rs): the subscription's item (the line whose quantity is
-- the seat count) and its quantity, as keel last learned them from Stripe.
ALTER TABLE subscriptions
    ADD COLUMN item_id  text,
    ADD COLUMN quantity integer CHECK (quantity >= 0);
