//! Integration tests, compiled as one binary to keep CI builds short. Each
//! module tests one capability against real components: a private OpenSSH
//! sshd on loopback (`common::Sshd`) and the real `sftp-mirror` binary.

mod common;

mod demo;
mod event_groups;
mod events;
mod faults;
mod hooks;
mod hostile;
mod interop;
mod interop_servers;
mod lying_server;
mod mirror_options;
mod props;
mod reconcile;
mod reliability;
mod service;
mod testkit;
mod webhook;
