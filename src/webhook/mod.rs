//! The public webhook endpoint: `verify` holds the authentication rules,
//! `routes` the HTTP answers of SPEC §3. Knows HTTP, nothing of SFTP.
pub mod routes;
pub mod verify;

pub use routes::{routes, Intake, IntakeStats};
pub use verify::{sign, Verifier};
