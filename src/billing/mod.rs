//! Stripe billing lives here. Stripe is the source of truth for subscriptions; keel learns about
//! changes from signed webhook deliveries, so the first piece is the signature check that decides
//! whether a delivery may be believed at all.

pub mod entitlement;
pub mod events;
pub mod signature;
pub mod webhooks;
