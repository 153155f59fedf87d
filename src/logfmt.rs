//! The `journald` log format: one line per event for systemd's journal, which
//! adds its own timestamp and reads the syslog priority from a `<N>` prefix
//! (sd-daemon's convention), so `journalctl -p warning` works. Fields (the
//! event id, the path) follow the message as `key=value`.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// See the module documentation.
pub struct Journald;

/// The syslog priority of a tracing level.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(w, "<{}>", priority(event.metadata().level()))?;
        ctx.format_fields(w.by_ref(), event)?;
        // The fields of the spans it happened in (an apply's event id and path).
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(w, " {fields}")?;
                    }
                }
            }
        }
        writeln!(w)
    }
}

#[cfg(test)]
mod tests {
    use super::priority;
    use tracing::Level;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!([Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG].map(|l| priority(&l)), [3, 4, 6, 7]);
    }
}
