//! The exit codes of every command (SPEC §4), defined once.

/// Success; a pass converged.
pub const OK: u8 = 0;
/// Finished with failures (some operations, hooks or the mirror check failed).
pub const FAILED: u8 = 1;
/// Bad configuration or usage: what the operator must fix in the setup.
pub const CONFIG: u8 = 2;
/// `reconcile` refused by the delete guard (`mirror.max_delete_ratio`).
pub const GUARD: u8 = 3;
/// Cannot reach or log in to the SFTP server, or its host key does not match.
pub const ACCESS: u8 = 4;
