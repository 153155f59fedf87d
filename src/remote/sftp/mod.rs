//! Our SFTP version 3 client (SPEC §7): `codec` is the pure wire format,
//! `client` the pipelined request/reply engine over one russh channel.
//!
//! Why not a crate: russh-sftp 3 keeps handles as `String` (decoded lossily, so
//! binary handles break) and starts each request's clock at queue time;
//! openssh-sftp-client 0.15 reads a reply's declared length into memory
//! unbounded (`len - 5` also underflows on a short frame), its reads are not
//! cancel-safe (a deadline that fires mid-frame desynchronises the stream) and
//! it owns its own flush/read tasks with no per-request deadline. The protocol
//! subset a mirror needs is small enough to own outright, bounded everywhere.

mod client;
pub mod codec;

pub use client::{SftpClient, SftpError};
pub use codec::{Attrs, FileKind, Limits, NameEntry, StatusCode};
