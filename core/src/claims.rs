//! Verified claims put to use: found by name or dotted path ([`path`]), tested by
//! matchers and patterns ([`matcher`]), and forwarded as request headers
//! ([`headers`]). Routes, profiles and quotas all match claims here.

pub mod headers;
pub mod matcher;
pub mod path;
