//! Subscriptions (SPEC §9-10): the second way out of the journal. Every accepted event
//! that matches a subscription gets a delivery, created in the committer step that
//! accepts it; a worker per subscription takes its pending deliveries within its
//! limits, makes an attempt, and writes the outcome back in one committer step.

pub mod client;
pub mod pattern;
pub mod schedule;
pub mod sign;
pub mod target;
