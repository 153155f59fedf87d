//! Embedded SFTP server for tests, the `demo` command and benchmarks.
//!
//! [`TestServer`] runs a real SSH server (russh) on `127.0.0.1:0` with a fresh
//! ed25519 host key, and serves a local folder read-only over SFTP v3
//! (russh-sftp). OpenSSH's `sftp` and our own client both work against it.
//! [`Faults`] injects failures while it runs: error statuses, short reads,
//! slow replies, dropped connections. [`serve_stream`] runs the same SFTP
//! handler over any byte stream, without SSH, for fast protocol tests.
//!
//! Layout: `server.rs` (SSH: auth, channels, accept loop, shutdown),
//! `sftp.rs` (the filesystem handler, path confinement, attributes),
//! `faults.rs` (the shared fault table).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use sftp_mirror::testkit::{Faults, Request, ServerOptions, TestServer};
//! let mut opts = ServerOptions::new("/tmp/remote", "alice");
//! opts.password = Some("secret".into());
//! let server = TestServer::start(opts).await?;
//! println!("{}", server.known_hosts_line()); // pin it in the client
//! server.faults().fail(Request::Open, "broken", russh_sftp::protocol::StatusCode::PermissionDenied);
//! // ... connect to server.addr() ...
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod faults;
mod server;
mod sftp;

pub use faults::{Faults, Lies, Request};
pub use server::{ServerOptions, TestServer};
pub use sftp::{serve_stream, MAX_HANDLES, MAX_READ_LEN, READDIR_BATCH};

mod client;
pub use client::{client_settings, generate_client_key};
