//! The one place that joins the remote and the mirror: `apply` (one path),
//! `dispatch` (journal-driven event workers), `reconcile` (whole trees).
pub mod apply;
pub mod diff;
pub mod dispatch;
pub mod filter;
pub mod locks;
pub mod reconcile;
pub mod schedule;

pub use apply::{list_bound, Action, ApplyError, Lookup, Syncer, LIST_MIN};
pub use filter::Filter;
pub use locks::PathLocks;
