//! Rate limits that hold across the fleet: GCRA arithmetic ([`gcra`]), what one request asks of
//! its caller's budgets and how it is settled ([`plan`]), and the consistent store that keeps them
//! ([`store`]).

pub mod gcra;
pub mod plan;
pub mod store;
