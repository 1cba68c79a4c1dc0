//! Route classes and authorization policy (being written).
