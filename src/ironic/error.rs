//! Typed errors of the Ironic client, decoded from Ironic's (double-encoded) error bodies.
//!
//! Ironic answers errors as `{"error_message": "<a JSON document in a string>"}` whose inner
//! object is `{faultcode, faultstring, debuginfo}` or `{code, title, description}`; its
//! http_basic middleware uses `{"error": {"message", "code"}}` instead. The reconciler's
//! decisions (retry, wait for power off, report) depend on telling these apart, so they are
//! typed here. No variant ever carries a request body: bodies may hold a CHAP password.

use serde_json::Value;

/// Longest Ironic message kept in an error (Ironic's `debuginfo` can hold tracebacks).
const MAX_MESSAGE: usize = 300;

/// What went wrong talking to Ironic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 404: the node, connector or target does not exist.
    #[error("not found: {message}")]
    NotFound {
        /// Ironic's message.
        message: String,
    },
    /// 409: the node is locked by a running task (retry soon) or the object already exists.
    #[error("conflict{}: {message}", if *locked { " (node locked)" } else { "" })]
    Conflict {
        /// True for "Node X is locked by host Y", false for "already exists" and the like.
        locked: bool,
        /// Ironic's message.
        message: String,
    },
    /// The node's power or provision state forbids the request (Ironic answers 400 or 409).
    #[error("invalid node state: {message}")]
    InvalidState {
        /// Ironic's message, naming the action and the state.
        message: String,
    },
    /// Any other 4xx: the request itself is wrong; retrying it unchanged will not help.
    #[error("rejected by Ironic (HTTP {status}): {message}")]
    BadRequest {
        /// HTTP status code.
        status: u16,
        /// Ironic's message.
        message: String,
    },
    /// 401/403: missing or wrong credentials for Ironic.
    #[error("not authorized by Ironic (HTTP {status}): {message}")]
    Unauthorized {
        /// HTTP status code.
        status: u16,
        /// Ironic's message.
        message: String,
    },
    /// 5xx: Ironic failed; worth retrying.
    #[error("Ironic server error (HTTP {status}): {message}")]
    Server {
        /// HTTP status code.
        status: u16,
        /// Ironic's message.
        message: String,
    },
    /// Ironic could not be reached, or did not answer in time.
    #[error("cannot reach Ironic at {url}: {message}")]
    Transport {
        /// The base URL we tried.
        url: String,
        /// What the HTTP stack reported (connection refused, timeout, TLS...).
        message: String,
    },
    /// Ironic answered 2xx with a body we could not read.
    #[error("unexpected response from Ironic: {message}")]
    Decode {
        /// The decoding error.
        message: String,
    },
    /// The client configuration is unusable (bad URL, unreadable credential or CA file).
    #[error("Ironic client configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
}

impl Error {
    /// Builds the typed error for a non-2xx response from its status and raw body.
    pub fn from_response(status: u16, body: &str) -> Self {
        let message = decode_message(body);
        let invalid_state =
            message.contains("can not be performed on node") || message.contains("InvalidState");
        match status {
            404 => Self::NotFound { message },
            409 if invalid_state => Self::InvalidState { message },
            409 => Self::Conflict {
                locked: message.contains("is locked by"),
                message,
            },
            400 if invalid_state => Self::InvalidState { message },
            401 | 403 => Self::Unauthorized { status, message },
            500..=599 => Self::Server { status, message },
            _ => Self::BadRequest { status, message },
        }
    }

    /// Whether the same request may succeed later without any change on our side
    /// (409, 5xx, unreachable): the reconciler retries these with capped backoff.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Conflict { .. } | Self::Server { .. } | Self::Transport { .. }
        )
    }

    /// A short, bounded label for metrics and event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Conflict { .. } => "conflict",
            Self::InvalidState { .. } => "invalid_state",
            Self::BadRequest { .. } => "bad_request",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Server { .. } => "server_error",
            Self::Transport { .. } => "unreachable",
            Self::Decode { .. } => "decode",
            Self::Config { .. } => "config",
        }
    }

    /// Replaces every occurrence of `secret` in the message with `<redacted>`.
    ///
    /// Ironic may echo request values in its messages (`Invalid input for field ... Value: '...'`);
    /// callers that sent a password pass it here before the error goes anywhere.
    pub fn redact(self, secret: &str) -> Self {
        if secret.is_empty() {
            return self;
        }
        let scrub = |m: String| {
            let m = if m.contains(secret) {
                m.replace(secret, "<redacted>")
            } else {
                m
            };
            redact_cut_tail(m, secret)
        };
        match self {
            Self::NotFound { message } => Self::NotFound {
                message: scrub(message),
            },
            Self::Conflict { locked, message } => Self::Conflict {
                locked,
                message: scrub(message),
            },
            Self::InvalidState { message } => Self::InvalidState {
                message: scrub(message),
            },
            Self::BadRequest { status, message } => Self::BadRequest {
                status,
                message: scrub(message),
            },
            Self::Unauthorized { status, message } => Self::Unauthorized {
                status,
                message: scrub(message),
            },
            Self::Server { status, message } => Self::Server {
                status,
                message: scrub(message),
            },
            Self::Transport { url, message } => Self::Transport {
                url,
                message: scrub(message),
            },
            Self::Decode { message } => Self::Decode {
                message: scrub(message),
            },
            Self::Config { message } => Self::Config {
                message: scrub(message),
            },
        }
    }
}

/// Messages are cut at [`MAX_MESSAGE`] characters when the error is built, before the caller
/// can redact: a secret straddling the cut would leave its first characters. Those go too.
fn redact_cut_tail(m: String, secret: &str) -> String {
    let Some(head) = m.strip_suffix("...") else {
        return m;
    };
    if head.chars().count() != MAX_MESSAGE {
        return m;
    }
    // End offsets of the secret's proper prefixes, longest first.
    let kept = secret
        .char_indices()
        .map(|(end, _)| end)
        .filter(|&end| end > 0)
        .rev()
        .find(|&end| head.ends_with(&secret[..end]));
    match kept {
        Some(end) => format!("{}<redacted>...", &head[..head.len() - end]),
        None => m,
    }
}

/// Extracts the human message from any of Ironic's error body shapes.
fn decode_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|outer| {
        if let Some(inner) = outer.get("error_message") {
            // Usually a JSON document inside a string; occasionally already an object.
            let inner = match inner {
                Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
                other => other.clone(),
            };
            return message_of(&inner);
        }
        outer
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let message = message.unwrap_or_else(|| body.trim().to_owned());
    truncate(message.trim())
}

fn message_of(inner: &Value) -> Option<String> {
    if let Value::String(s) = inner {
        return Some(s.clone());
    }
    let field = |k: &str| inner.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    field("faultstring")
        .or_else(|| field("description"))
        .or_else(|| field("title"))
        .map(str::to_owned)
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bodies copied from a real Ironic 39.0.0 (recorded from its API).
    #[test]
    fn decodes_every_observed_body_shape() {
        let cases: &[(u16, &str, Error)] = &[
            (
                404,
                r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Node default~nope could not be found.\", \"debuginfo\": null}"}"#,
                Error::NotFound { message: "Node default~nope could not be found.".into() },
            ),
            (
                409,
                r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Node 1be26c0b-03f2-4d2e-ae87-c02d7f33c123 is locked by host localhost, please retry after the current operation is completed.\", \"debuginfo\": null}"}"#,
                Error::Conflict {
                    locked: true,
                    message: "Node 1be26c0b-03f2-4d2e-ae87-c02d7f33c123 is locked by host localhost, please retry after the current operation is completed.".into(),
                },
            ),
            (
                409,
                r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"A volume connector with type iqn and connector ID iqn.2004-10.com.example:host-0 already exists.\", \"debuginfo\": null}"}"#,
                Error::Conflict {
                    locked: false,
                    message: "A volume connector with type iqn and connector ID iqn.2004-10.com.example:host-0 already exists.".into(),
                },
            ),
            (
                400,
                r#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"The requested action \\\"volume target update\\\" can not be performed on node \\\"x\\\" while it is in state \\\"power on\\\".\", \"debuginfo\": null}"}"#,
                Error::InvalidState {
                    message: r#"The requested action "volume target update" can not be performed on node "x" while it is in state "power on"."#.into(),
                },
            ),
            (
                406,
                r#"{"error_message": "{\"code\": 406, \"title\": \"Not Acceptable\", \"description\": \"Version 1.999 was requested but the minor version is not supported by this service.\"}"}"#,
                Error::BadRequest {
                    status: 406,
                    message: "Version 1.999 was requested but the minor version is not supported by this service.".into(),
                },
            ),
            (
                404,
                r#"{"error_message": "{\"code\": 404, \"title\": \"Not Found\", \"description\": \"\"}"}"#,
                Error::NotFound { message: "Not Found".into() },
            ),
            (
                401,
                r#"{"error":{"message":"Incorrect username or password","code":401}}"#,
                Error::Unauthorized { status: 401, message: "Incorrect username or password".into() },
            ),
            (503, "<html>Service Unavailable</html>", Error::Server {
                status: 503,
                message: "<html>Service Unavailable</html>".into(),
            }),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                &Error::from_response(*status, body),
                want,
                "status {status} body {body}"
            );
        }
    }

    #[test]
    fn transient_errors_are_409_5xx_and_transport() {
        let transient = [
            Error::from_response(409, "x"),
            Error::from_response(502, "x"),
            Error::Transport {
                url: "u".into(),
                message: "refused".into(),
            },
        ];
        assert!(transient.iter().all(Error::is_transient));
        let permanent = [
            Error::from_response(400, "x"),
            Error::from_response(404, "x"),
            Error::from_response(401, "x"),
        ];
        assert!(!permanent.iter().any(Error::is_transient));
    }

    #[test]
    fn redact_scrubs_the_secret_and_long_messages_are_cut() {
        let e = Error::from_response(400, "Invalid input for field/attribute. Value: 's3cr3t-pw'. ")
            .redact("s3cr3t-pw");
        assert_eq!(
            e.to_string(),
            "rejected by Ironic (HTTP 400): Invalid input for field/attribute. Value: '<redacted>'."
        );
        // Ironic's message is cut at MAX_MESSAGE characters before anyone can redact it: a
        // password straddling the cut must not leave its first characters behind.
        let secret = "s3cr3t-pw";
        for kept in 1..secret.len() {
            let body = format!("{}{secret} and more text", "y".repeat(MAX_MESSAGE - kept));
            let shown = Error::from_response(500, &body).redact(secret).to_string();
            assert!(
                shown.ends_with(&format!("{}<redacted>...", "y".repeat(10))),
                "{kept} characters of the secret kept: {shown}"
            );
        }
        let long = "x".repeat(1000);
        assert_eq!(
            Error::from_response(500, &long).to_string().len(),
            "Ironic server error (HTTP 500): ".len() + 303
        );
    }
}
