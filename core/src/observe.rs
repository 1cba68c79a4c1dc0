//! What the filter tells operators: metric names, labels and their bounds
//! ([`metrics`]), and the per-request decision record and log line
//! ([`decision_log`]). Pure: the shell emits them through its host.

pub mod decision_log;
pub mod metrics;
