//! Verified claims put to use: forwarded as request headers ([`headers`]).

pub mod headers;
