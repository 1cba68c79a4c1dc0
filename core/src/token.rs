//! The credential as the request carries it: where the bearer token is
//! ([`source`]), the compact JWS split into typed pieces ([`jws`]), the JOSE `typ`
//! check ([`typ`]), and the lenient reading that tells whose a credential that
//! failed verification is ([`attribution`]). Nothing here verifies a signature.

pub mod attribution;
pub mod jws;
pub mod source;
pub mod typ;
