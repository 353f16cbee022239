//! The audit line every admission request writes, off the request path.
//!
//! `serve` logs one line per decision (`target: bootvolume::audit`). Through a tracing
//! subscriber that line costs the request its formatting (field by field, through
//! `Debug`/`Display`) and a `write(2)` to stderr while it waits. Here the request formats
//! the line once, straight into a per-thread buffer (no allocation once warm), and copies
//! it into a bounded in-memory buffer; a writer thread hands whole batches to stderr.
//! A request never waits for the writer: when the buffer is full (stderr blocked, say),
//! the line is dropped and counted in `bootvolume_audit_lines_dropped_total`. Lines keep
//! the format of every other log line (`--log-format text|json`) and obey `--log-level`.
//!
//! Used when `telemetry::init` installed our own formatter (the binary); otherwise (tests,
//! library users with their own subscriber) the line goes through tracing as any other.

use crate::telemetry;
use prometheus_client::metrics::counter::Counter;
use std::{
    cell::RefCell,
    io::Write,
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::Duration,
};

/// The target audit lines are logged under.
pub const TARGET: &str = "bootvolume::audit";

/// Bytes of lines waiting for the writer before new lines are dropped (~3,000 lines).
pub const BUFFER_BYTES: usize = 1 << 20;

/// How long the writer lets lines gather before writing them: a busy webhook then costs
/// one `write(2)` (and one wake-up) per batch instead of one per request.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

/// The fields of one audit line.
#[derive(Debug)]
pub struct Entry<'a> {
    /// `validate` or `mutate`.
    pub webhook: &'a str,
    /// The request uid.
    pub uid: &'a str,
    /// The operation label.
    pub operation: &'a str,
    /// The request namespace.
    pub namespace: &'a str,
    /// The object name.
    pub name: &'a str,
    /// The requesting user.
    pub user: &'a str,
    /// Whether the request is a dry run.
    pub dry_run: bool,
    /// The decision label.
    pub decision: &'a str,
    /// Fields with errors.
    pub violations: &'a [String],
    /// Time to decide.
    pub duration_us: u64,
}

impl Entry<'_> {
    /// Logs the entry through tracing (the subscriber formats and writes it).
    fn trace(&self) {
        let mut violations = String::new();
        push_joined(&mut violations, self.violations);
        tracing::info!(
            target: TARGET,
            webhook = self.webhook,
            uid = self.uid,
            operation = self.operation,
            namespace = self.namespace,
            name = self.name,
            user = self.user,
            dry_run = self.dry_run,
            decision = self.decision,
            violations = violations.as_str(),
            duration_us = self.duration_us,
            "admission"
        );
    }

    /// Appends the entry as one log line, as `telemetry::LineFormat` would print it.
    pub fn format(&self, json: bool, out: &mut String) {
        let mut line = telemetry::Line::start(out, json, "INFO", TARGET, "admission");
        line.str("webhook", self.webhook);
        line.str("uid", self.uid);
        line.str("operation", self.operation);
        line.str("namespace", self.namespace);
        line.str("name", self.name);
        line.str("user", self.user);
        line.raw("dry_run", if self.dry_run { "true" } else { "false" });
        line.str("decision", self.decision);
        line.str_with("violations", |s| push_joined(s, self.violations));
        line.raw("duration_us", itoa::Buffer::new().format(self.duration_us));
        line.end();
    }
}

fn push_joined(out: &mut String, parts: &[String]) {
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(p);
    }
}

struct State {
    lines: Vec<u8>,
    writer_idle: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    dropped: Counter,
    json: bool,
}

/// Where audit lines go: through the tracing subscriber on the request path
/// ([`AuditLog::tracing`]), or through a bounded buffer to a writer thread
/// ([`AuditLog::buffered`]).
pub struct AuditLog(Mode);

enum Mode {
    Tracing,
    Buffered {
        shared: Arc<Shared>,
        /// Joined (after a last flush) on drop.
        writer: Option<JoinHandle<()>>,
    },
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Mode::Tracing => "AuditLog::Tracing",
            Mode::Buffered { .. } => "AuditLog::Buffered",
        })
    }
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl AuditLog {
    /// Lines logged through the tracing subscriber, on the request path.
    pub fn tracing() -> Self {
        Self(Mode::Tracing)
    }

    /// The process's audit log: buffered to stderr when `telemetry::init` installed our
    /// logger (the binary), through tracing otherwise.
    pub fn for_process(dropped: Counter) -> Self {
        match telemetry::stderr_lines() {
            Some(json) => Self::buffered(json, dropped, Box::new(std::io::stderr())),
            None => Self::tracing(),
        }
    }

    /// Buffered lines written to `out` by a writer thread; `dropped` counts lines the full
    /// buffer refused.
    pub fn buffered(json: bool, dropped: Counter, mut out: Box<dyn Write + Send>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lines: Vec::with_capacity(64 * 1024),
                writer_idle: false,
                closed: false,
            }),
            wake: Condvar::new(),
            dropped,
            json,
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(64 * 1024);
                loop {
                    {
                        let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
                        while st.lines.is_empty() && !st.closed {
                            st.writer_idle = true;
                            st = s.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                        st.writer_idle = false;
                        if st.lines.is_empty() {
                            return; // closed and flushed
                        }
                        std::mem::swap(&mut st.lines, &mut batch);
                    }
                    // Nowhere to report a failed write to stderr: the line is lost, as it
                    // would be through tracing.
                    let _ = out.write_all(&batch).and_then(|()| out.flush());
                    batch.clear();
                    std::thread::sleep(BATCH_PAUSE);
                }
            })
            .ok();
        Self(Mode::Buffered { shared, writer })
    }

    /// Records one decision. Never blocks on the writer.
    pub fn record(&self, entry: &Entry<'_>) {
        let shared = match &self.0 {
            Mode::Tracing => return entry.trace(),
            Mode::Buffered { shared, .. } => shared,
        };
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            entry.format(shared.json, line);
            let notify = {
                let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.lines.len() + line.len() > BUFFER_BYTES {
                    drop(st);
                    shared.dropped.inc();
                    return;
                }
                st.lines.extend_from_slice(line.as_bytes());
                std::mem::replace(&mut st.writer_idle, false)
            };
            if notify {
                shared.wake.notify_one();
            }
        });
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Mode::Buffered { shared, writer } = &mut self.0 {
            shared.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            shared.wake.notify_one();
            if let Some(w) = writer.take() {
                let _ = w.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[derive(Clone, Default)]
    struct Sink(Arc<StdMutex<Vec<u8>>>, Arc<StdMutex<bool>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            // A blocked stderr: hold the writer while the flag is set.
            while *self.1.lock().expect("lock") {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry<'a>(uid: &'a str, violations: &'a [String]) -> Entry<'a> {
        Entry {
            webhook: "validate",
            uid,
            operation: "CREATE",
            namespace: "metal3",
            name: "a \"b\"",
            user: "system:serviceaccount:x:y",
            dry_run: false,
            decision: "denied",
            violations,
            duration_us: 42,
        }
    }

    /// The same line as tracing with our formatter prints (timestamps aside).
    #[test]
    fn lines_match_the_tracing_format() {
        let violations = vec!["spec.a".to_owned(), "spec.b".to_owned()];
        for json in [false, true] {
            let traced = telemetry::tests::capture_with(json, || entry("u-1", &violations).trace());
            let mut ours = String::new();
            entry("u-1", &violations).format(json, &mut ours);
            let cut = |s: &str| {
                s.split_once(if json { "\"level\"" } else { " INFO" })
                    .map(|(_, r)| r.to_owned())
            };
            assert_eq!(cut(&ours), cut(&traced), "json={json}");
            assert!(ours.ends_with('\n') && ours.matches('\n').count() == 1);
        }
    }

    #[test]
    fn writes_every_line_and_flushes_on_drop() {
        let sink = Sink::default();
        let dropped = Counter::default();
        let log = AuditLog::buffered(true, dropped.clone(), Box::new(sink.clone()));
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        for i in 0..100 {
            log.record(&entry(&format!("u-{i}"), &[]));
        }
        drop(log);
        let text = String::from_utf8(sink.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text.lines().count(), 100);
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).expect(line);
            assert_eq!(v["uid"], format!("u-{i}"));
        }
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn obeys_the_log_level() {
        use tracing_subscriber::layer::SubscriberExt;
        let sink = Sink::default();
        let log = AuditLog::buffered(false, Counter::default(), Box::new(sink.clone()));
        let quiet = tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::WARN);
        tracing::subscriber::with_default(quiet, || log.record(&entry("hidden", &[])));
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        log.record(&entry("shown", &[]));
        drop(log);
        let text = String::from_utf8(sink.0.lock().expect("lock").clone()).expect("utf8");
        assert!(text.contains("uid=shown") && !text.contains("hidden"), "{text}");
    }

    #[test]
    fn a_blocked_writer_drops_and_counts_instead_of_blocking() {
        let sink = Sink::default();
        let dropped = Counter::default();
        let log = AuditLog::buffered(false, dropped.clone(), Box::new(sink.clone()));
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        *sink.1.lock().expect("lock") = true;
        log.record(&entry("first", &[]));
        std::thread::sleep(Duration::from_millis(50)); // the writer takes it and blocks
        let started = std::time::Instant::now();
        let n = 2 * BUFFER_BYTES / 150;
        for _ in 0..n {
            log.record(&entry("u", &[]));
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "requests waited for the writer"
        );
        let lost = dropped.get();
        assert!(lost > 0 && lost < n as u64, "dropped {lost} of {n}");
        *sink.1.lock().expect("lock") = false;
        drop(log);
        let written = String::from_utf8(sink.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(written.lines().count() as u64 + lost, n as u64 + 1);
    }
}
