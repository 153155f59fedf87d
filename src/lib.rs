//! `sftp-mirror` keeps a local folder an exact mirror of an SFTP To Go storage.
//!
//! # Layout
//! - [`config`]: file + environment + `SFTPTOGO_URL` → validated [`config::Settings`].
//! - [`event`]: the SFTP To Go event model and [`event::RemotePath`], the validated path type.
//! - [`webhook`]: the warp endpoint: verify (HMAC, Authorization), parse, journal, answer.
//! - [`journal`]: the durable SQLite event journal that survives crashes.
//! - [`remote`]: the SFTP side (russh + our SFTP v3 client): sessions, host keys, downloads, listings.
//! - [`mirror`]: the local side: confined, atomic file operations on the mirror folder.
//! - [`sync`]: the one place joining both: apply one path, dispatch events, reconcile trees.
//! - [`logfmt`]: the `journald` log format.
//!
//! The rule everywhere: the remote is the truth, an event is a hint (SPEC §2).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod check;
pub mod config;
pub mod daemon;
#[cfg(feature = "testkit")]
pub mod demo;
pub mod event;
pub mod exit;
pub mod hooks;
pub mod http;
pub mod human;
pub mod journal;
pub mod logfmt;
pub mod metrics;
pub mod mirror;
pub mod remote;
pub mod sync;
pub mod terminal;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod webhook;
