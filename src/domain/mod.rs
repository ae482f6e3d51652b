//! Domain values with no I/O: input is parsed into these at the edge, so invalid data never
//! travels further in.

mod account;
mod plan;

pub use account::{EmailAddress, InvalidEmail, NewPassword, WeakPassword};
pub use plan::PlanName;
