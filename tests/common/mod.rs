//! Helpers shared by the integration tests (compiled into the single `tests` binary).
//!
//! Not every test uses every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

mod chaos;
mod daemon;
mod embedded;
mod http;
pub mod servers;
mod sshd;

pub use chaos::*;
pub use daemon::*;
pub use embedded::*;
pub use http::*;
#[allow(unused_imports)]
pub use sshd::*;
