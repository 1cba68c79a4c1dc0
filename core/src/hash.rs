//! Hashing: a seeded fast hasher for a VM's own tables ([`seeded`]).

pub mod seeded;
