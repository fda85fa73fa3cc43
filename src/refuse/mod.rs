//! What happens to refused requests beyond their answer: requests that fail
//! verification are limited per client address ([`ByAddress`]), and refusals are logged
//! with a rate limit ([`RefusalLog`]), so that a flood of bad requests neither spends a
//! provider's `rate_limit` nor fills the log. Metrics still count every refusal.

pub mod address;
pub mod log;

pub use address::ByAddress;
pub use log::RefusalLog;
