//! Logging: `--log-format text|json`, `--log-level` as a tracing EnvFilter.
//!
//! One formatter of our own for both formats. tracing-subscriber's default formatters
//! render every field through `Debug` and a styling layer; on the audit line that every
//! admission request writes, that was the largest single cost after JSON parsing. This
//! one writes strings and numbers straight through (escaping only what must be).

use crate::cli::{LogArgs, LogFormat};
use std::fmt::{self, Write as _};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Installs the global subscriber; call once from `main`. Logs go to stderr so `check`
/// and `ironic-apply` keep stdout for their results.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(LineFormat {
            json: args.log_format == LogFormat::Json,
        })
        .try_init();
}

/// One line per event: `TIME LEVEL target: message k=v ...`, or one JSON object with the
/// fields at the top level (`timestamp`, `level`, `target`, `message`, fields...).
#[derive(Clone, Copy, Debug)]
pub struct LineFormat {
    /// JSON instead of text.
    pub json: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let now = time::OffsetDateTime::now_utc();
        let mut ts = String::with_capacity(32);
        write!(
            ts,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            now.year(),
            now.month() as u8,
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.microsecond()
        )?;
        let mut visitor = Visit {
            out: String::with_capacity(256),
            json: self.json,
            message: None,
            error: None,
        };
        event.record(&mut visitor);
        if let Some(e) = visitor.error {
            return Err(e);
        }
        if self.json {
            write!(
                w,
                "{{\"timestamp\":\"{ts}\",\"level\":\"{}\",\"target\":",
                meta.level()
            )?;
            json_str(&mut w, meta.target())?;
            if let Some(m) = &visitor.message {
                w.write_str(",\"message\":")?;
                json_str(&mut w, m)?;
            }
            writeln!(w, "{}}}", visitor.out)
        } else {
            write!(w, "{ts} {:>5} {}:", meta.level(), meta.target())?;
            if let Some(m) = &visitor.message {
                write!(w, " {m}")?;
            }
            writeln!(w, "{}", visitor.out)
        }
    }
}

struct Visit {
    out: String,
    json: bool,
    message: Option<String>,
    error: Option<fmt::Error>,
}

impl Visit {
    fn put(&mut self, field: &Field, raw: bool, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
            return;
        }
        let r = if self.json {
            write!(self.out, ",\"{}\":", field.name()).and_then(|()| {
                if raw {
                    self.out.write_str(value)
                } else {
                    json_str(&mut self.out, value)
                }
            })
        } else if raw || (!value.is_empty() && !value.contains([' ', '"', '=', '\n', '\\'])) {
            write!(self.out, " {}={value}", field.name())
        } else {
            write!(self.out, " {}={value:?}", field.name())
        };
        if let Err(e) = r {
            self.error = Some(e);
        }
    }
}

impl tracing::field::Visit for Visit {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, false, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, true, if value { "true" } else { "false" });
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, true, itoa::Buffer::new().format(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, true, itoa::Buffer::new().format(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` (Display) values and messages arrive here, already formatted once.
        let s = format!("{value:?}");
        self.put(field, false, &s);
    }
}

/// Writes `s` as a JSON string.
fn json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => {
                w.write_str(&s[start..i])?;
                write!(w, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
                continue;
            }
            _ => continue,
        };
        w.write_str(&s[start..i])?;
        w.write_str(esc)?;
        start = i + 1;
    }
    w.write_str(&s[start..])?;
    w.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(json: bool) -> String {
        let buf = Buf::default();
        let writer = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .event_format(LineFormat { json })
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "bootvolume::audit", uid = "u-1", name = "a \"b\"", dry_run = false, n = 42u64, e = %"x y", "admission");
        });
        String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8")
    }

    #[test]
    fn json_lines_parse_with_fields_at_top_level() {
        let line = capture(true);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect(&line);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "bootvolume::audit");
        assert_eq!(v["message"], "admission");
        assert_eq!(v["uid"], "u-1");
        assert_eq!(v["name"], "a \"b\"");
        assert_eq!(v["dry_run"], false);
        assert_eq!(v["n"], 42);
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn text_lines_quote_only_when_needed() {
        let line = capture(false);
        assert!(
            line.contains(
                " INFO bootvolume::audit: admission uid=u-1 name=\"a \\\"b\\\"\" dry_run=false n=42"
            ),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1);
    }
}
