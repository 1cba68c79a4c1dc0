//! Per-identity quotas (being written).
