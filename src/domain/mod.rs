//! Domain values with no I/O: input is parsed into these at the edge, so invalid data never
//! travels further in.

mod plan;

pub use plan::PlanName;
