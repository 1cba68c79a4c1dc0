//! The native `nhi-guard` command as a library: [`check`] validates plugin
//! configurations wherever they are embedded, [`schema`] prints their JSON Schema.
//! Both run the core's own validation, never a copy of it.

pub mod check;
pub mod cluster;
pub mod explain;
pub mod schema;
