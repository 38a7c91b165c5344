//! Traffic as load: per-slot rates from `CLUSTER SLOT-STATS` counters ([`rates`]), for
//! the planner's second dimension (CPU per master).
//!
//! Owns: the rate series. Does not own: reading the counters from the servers, or the
//! plan.

pub mod rates;
