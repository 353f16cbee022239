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
    let json = args.log_format == LogFormat::Json;
    // A second init (tests) is harmless: keep the first subscriber.
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(LineFormat { json })
        .try_init();
    if installed.is_ok() {
        let _ = STDERR_LINES.set(json);
    }
}

/// Set by [`init`]: log lines go to stderr in our format, JSON when true.
static STDERR_LINES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether [`init`] installed our stderr logger, and with JSON lines: then a component may
/// write lines of the same format to stderr itself (the audit log does).
pub fn stderr_lines() -> Option<bool> {
    STDERR_LINES.get().copied()
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
        let mut ts = String::with_capacity(32);
        push_timestamp(&mut ts);
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
        push_field(&mut self.out, self.json, field.name(), raw, value);
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, without `fmt` machinery: the
/// digits go into one stack buffer, appended (and checked as UTF-8) once.
pub(crate) fn push_timestamp(out: &mut String) {
    fn digits(buf: &mut [u8], n: u32) {
        let mut n = n;
        for b in buf.iter_mut().rev() {
            *b = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let mut buf = *b"0000-00-00T00:00:00.000000Z";
    digits(&mut buf[0..4], u32::try_from(now.year()).unwrap_or(0));
    digits(&mut buf[5..7], now.month() as u32);
    digits(&mut buf[8..10], now.day().into());
    digits(&mut buf[11..13], now.hour().into());
    digits(&mut buf[14..16], now.minute().into());
    digits(&mut buf[17..19], now.second().into());
    digits(&mut buf[20..26], now.microsecond());
    // ASCII digits and separators.
    out.push_str(std::str::from_utf8(&buf).unwrap_or("0000-00-00T00:00:00.000000Z"));
}

/// Whether a text-format value can go unquoted.
fn bare(value: &str) -> bool {
    !value.is_empty()
        && !value
            .bytes()
            .any(|b| matches!(b, b' ' | b'"' | b'=' | b'\n' | b'\\'))
}

/// Appends one ` key=value` (text) or `,"key":value` (JSON) field; `raw` values (numbers,
/// booleans) are never quoted.
fn push_field(out: &mut String, json: bool, name: &str, raw: bool, value: &str) {
    if json {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        if raw {
            out.push_str(value);
        } else {
            let _ = json_str(out, value);
        }
    } else {
        out.push(' ');
        out.push_str(name);
        out.push('=');
        if raw || bare(value) {
            out.push_str(value);
        } else {
            let _ = write!(out, "{value:?}");
        }
    }
}

/// One log line in [`LineFormat`]'s format, built field by field into a caller's buffer
/// (the audit line, which is formatted without tracing).
pub(crate) struct Line<'a> {
    out: &'a mut String,
    json: bool,
}

impl<'a> Line<'a> {
    /// Timestamp, level, target and message.
    pub(crate) fn start(out: &'a mut String, json: bool, level: &str, target: &str, message: &str) -> Self {
        if json {
            out.push_str("{\"timestamp\":\"");
            push_timestamp(out);
            out.push_str("\",\"level\":\"");
            out.push_str(level);
            out.push_str("\",\"target\":");
            let _ = json_str(out, target);
            out.push_str(",\"message\":");
            let _ = json_str(out, message);
        } else {
            push_timestamp(out);
            for _ in level.len()..5 {
                out.push(' ');
            }
            out.push(' ');
            out.push_str(level);
            out.push(' ');
            out.push_str(target);
            out.push_str(": ");
            out.push_str(message);
        }
        Self { out, json }
    }

    /// A string field.
    pub(crate) fn str(&mut self, name: &str, value: &str) {
        push_field(self.out, self.json, name, false, value);
    }

    /// A number or boolean.
    pub(crate) fn raw(&mut self, name: &str, value: &str) {
        push_field(self.out, self.json, name, true, value);
    }

    /// A string field written by `write`, straight into the line; only a value that needs
    /// quoting or escaping (rare) is copied out and written again.
    pub(crate) fn str_with(&mut self, name: &str, write: impl FnOnce(&mut String)) {
        if self.json {
            self.out.push_str(",\"");
            self.out.push_str(name);
            self.out.push_str("\":\"");
            let start = self.out.len();
            write(self.out);
            if self.out[start..].contains(|c: char| c == '"' || c == '\\' || (c as u32) < 0x20) {
                let value = self.out.split_off(start);
                self.out.pop(); // the opening quote: json_str writes its own
                let _ = json_str(self.out, &value);
            } else {
                self.out.push('"');
            }
        } else {
            self.out.push(' ');
            self.out.push_str(name);
            self.out.push('=');
            let start = self.out.len();
            write(self.out);
            if !bare(&self.out[start..]) {
                let value = self.out.split_off(start);
                let _ = write!(self.out, "{value:?}");
            }
        }
    }

    /// Closes the line.
    pub(crate) fn end(self) {
        if self.json {
            self.out.push('}');
        }
        self.out.push('\n');
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
pub(crate) mod tests {
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

    /// What `f` logs through [`LineFormat`].
    pub(crate) fn capture_with(json: bool, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let writer = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .event_format(LineFormat { json })
            .finish();
        tracing::subscriber::with_default(sub, f);
        String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8")
    }

    fn capture(json: bool) -> String {
        capture_with(json, || {
            tracing::info!(target: "bootvolume::audit", uid = "u-1", name = "a \"b\"", dry_run = false, n = 42u64, e = %"x y", "admission");
        })
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
