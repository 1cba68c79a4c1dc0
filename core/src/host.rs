//! What the core needs of a proxy, without depending on any: header maps as bytes
//! ([`header_map`]), the shared key/value store with its CAS contract ([`store`]),
//! and what a host can do ([`capabilities`]).

pub mod capabilities;
pub mod header_map;
pub mod store;
