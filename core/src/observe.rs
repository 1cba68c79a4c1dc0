//! What the filter tells operators: metric names, labels and their bounds
//! ([`metrics`]), the per-request decision record and log line
//! ([`decision_log`]), and the identity inventory ([`inventory`]). Pure: the shell
//! emits them through its host.

pub mod decision_log;
pub mod inventory;
pub mod metrics;
