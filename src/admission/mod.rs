//! `admission.k8s.io/v1` AdmissionReview: the wire types and the pure decision.
//!
//! We model the review ourselves rather than use kube's typed `AdmissionRequest<T>`: an
//! object that cannot be read as a BareMetalHost must still produce a denial with the uid
//! echoed (kube's types fail the whole decode), and the patch must be the base64 string the
//! Kubernetes API documents (kube-core serializes bytes as a number array, kube-rs #1781).
//! [`admit`] is pure; [`http`] decodes bodies and encodes responses around it.

pub mod http;

use crate::{
    api::{self, HostView},
    mutate,
    rules::{self, FieldError, Policy, Verdict},
};
use api::HostRead;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::{borrow::Cow, collections::BTreeMap};

/// The AdmissionReview `apiVersion` we speak.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The AdmissionReview `kind`.
pub const KIND: &str = "AdmissionReview";

/// Which webhook is answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Webhook {
    /// `/validate`: allow or deny.
    Validate,
    /// `/mutate`: allow, possibly with a patch.
    Mutate,
}

impl Webhook {
    /// Metric and log label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Validate => "validate",
            Self::Mutate => "mutate",
        }
    }
}

/// An incoming AdmissionReview (only the fields we read), borrowing its strings from the
/// request body; every other field is skipped by the parser without being built.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Review<'a> {
    /// Must be `admission.k8s.io/v1`.
    #[serde(borrow)]
    pub api_version: Cow<'a, str>,
    /// Must be `AdmissionReview`.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// The request; a review without one is malformed. Boxed: it is large (two host
    /// readings), and the decoded review is moved several times on its way to `admit`.
    #[serde(borrow)]
    pub request: Option<Box<Request<'a>>>,
}

/// Group/version/kind as the API server sends it.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind<'a> {
    /// API group (`metal3.io`).
    #[serde(default, borrow)]
    pub group: Cow<'a, str>,
    /// Version (`v1alpha1`).
    #[serde(default, borrow)]
    pub version: Cow<'a, str>,
    /// Kind (`BareMetalHost`).
    #[serde(default, borrow)]
    pub kind: Cow<'a, str>,
}

/// The requesting user.
#[derive(Debug, Default, Deserialize)]
pub struct UserInfo<'a> {
    /// User name (`system:serviceaccount:ns:name` for service accounts).
    #[serde(default, borrow)]
    pub username: Cow<'a, str>,
}

/// `AdmissionReview.request`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    /// Echoed in the response.
    #[serde(borrow)]
    pub uid: Cow<'a, str>,
    /// The object's kind.
    #[serde(default, borrow)]
    pub kind: GroupVersionKind<'a>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(borrow)]
    pub operation: Cow<'a, str>,
    /// Object name (may be empty on CREATE with generateName).
    #[serde(default, borrow)]
    pub name: Cow<'a, str>,
    /// Object namespace: authoritative, even when the object omits it.
    #[serde(default, borrow)]
    pub namespace: Cow<'a, str>,
    /// Who asks.
    #[serde(default, borrow)]
    pub user_info: UserInfo<'a>,
    /// The new object (CREATE, UPDATE): only the parts the rules read are kept (see
    /// [`api::HostDoc`]); any JSON is accepted here, for other kinds too.
    #[serde(default, borrow)]
    pub object: Option<HostRead<'a>>,
    /// The stored object (UPDATE, DELETE), read like `object`.
    #[serde(default, borrow)]
    pub old_object: Option<HostRead<'a>>,
    /// Whether the request will be persisted.
    #[serde(default)]
    pub dry_run: bool,
}

impl Request<'_> {
    /// The operation as a static label (unknown values collapse to `other`).
    pub fn operation_label(&self) -> &'static str {
        match &*self.operation {
            "CREATE" => "CREATE",
            "UPDATE" => "UPDATE",
            "DELETE" => "DELETE",
            "CONNECT" => "CONNECT",
            _ => "other",
        }
    }
}

/// `metav1.StatusCause`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCause {
    /// `FieldValueRequired`, `FieldValueInvalid`, ...
    pub reason: String,
    /// The error without its field.
    pub message: String,
    /// Full field path.
    pub field: String,
}

impl From<&FieldError> for StatusCause {
    fn from(e: &FieldError) -> Self {
        Self {
            reason: e.kind.reason().to_owned(),
            message: e.message(),
            field: e.field.clone(),
        }
    }
}

/// `metav1.StatusDetails`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDetails {
    /// Object name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// API group.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// One cause per field error.
    pub causes: Vec<StatusCause>,
}

/// `metav1.Status` of a denial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Always `Failure`.
    pub status: String,
    /// The aggregated field errors.
    pub message: String,
    /// `Invalid`.
    pub reason: String,
    /// Field-level causes.
    pub details: StatusDetails,
    /// 422.
    pub code: u16,
}

/// `AdmissionReview.response`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The request's uid.
    pub uid: String,
    /// The decision.
    pub allowed: bool,
    /// Why not, when denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// `JSONPatch` when `patch` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Base64 of the RFC 6902 patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Shown by kubectl as `Warning: ...`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub warnings: Vec<String>,
    /// Stored in the audit event, prefixed with the webhook name by the API server.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub audit_annotations: BTreeMap<String, String>,
}

/// The outgoing AdmissionReview.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewResponse {
    /// `admission.k8s.io/v1`.
    pub api_version: String,
    /// `AdmissionReview`.
    pub kind: String,
    /// The answer.
    pub response: Response,
}

impl From<Response> for ReviewResponse {
    fn from(response: Response) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            response,
        }
    }
}

impl Response {
    /// The AdmissionReview carrying this response as JSON, appended to `out`: the bytes
    /// `serde_json` gives for [`ReviewResponse`], written field by field so the base64
    /// patch (which needs no escaping) is copied instead of scanned byte by byte.
    pub fn write_review(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail; our own types always serialize.
        fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
            let _ = serde_json::to_writer(out, value);
        }
        out.extend_from_slice(b"{\"apiVersion\":");
        json(out, API_VERSION);
        out.extend_from_slice(b",\"kind\":");
        json(out, KIND);
        out.extend_from_slice(b",\"response\":{\"uid\":");
        json(out, &self.uid);
        out.extend_from_slice(if self.allowed {
            b",\"allowed\":true"
        } else {
            b",\"allowed\":false"
        });
        if let Some(status) = &self.status {
            out.extend_from_slice(b",\"status\":");
            json(out, status);
        }
        if let Some(patch_type) = &self.patch_type {
            out.extend_from_slice(b",\"patchType\":");
            json(out, patch_type);
        }
        if let Some(patch) = &self.patch {
            out.extend_from_slice(b",\"patch\":");
            if needs_no_escape(patch) {
                out.push(b'"');
                out.extend_from_slice(patch.as_bytes());
                out.push(b'"');
            } else {
                json(out, patch);
            }
        }
        if !self.warnings.is_empty() {
            out.extend_from_slice(b",\"warnings\":");
            json(out, &self.warnings);
        }
        if !self.audit_annotations.is_empty() {
            out.extend_from_slice(b",\"auditAnnotations\":");
            json(out, &self.audit_annotations);
        }
        out.extend_from_slice(b"}}");
    }
}

/// Whether serde_json would write `s` between quotes unchanged (no `"`, `\\` or control
/// character). Branch-free so that it is checked many bytes at a time: a per-byte loop over
/// the base64 patch costs as much as escaping it.
fn needs_no_escape(s: &str) -> bool {
    s.bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
}

/// What was decided, for the audit log and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed without changes.
    Allowed,
    /// Denied.
    Denied,
    /// Allowed with a patch.
    Mutated,
}

impl Decision {
    /// Label for logs, metrics and the `decision` audit annotation.
    pub fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Mutated => "mutated",
        }
    }
}

/// The decision and the response that carries it.
#[derive(Debug)]
pub struct Outcome {
    /// The response to send.
    pub response: Response,
    /// The decision.
    pub decision: Decision,
    /// Fields with errors, for the audit log.
    pub violations: Vec<String>,
}

fn is_bare_metal_host(kind: &GroupVersionKind) -> bool {
    kind.group == "metal3.io" && kind.kind == api::KIND
}

/// Decides one admission request. Pure: the handler only decodes and encodes around it.
///
/// DELETE, CONNECT, other kinds and other groups are allowed untouched.
pub fn admit(policy: &Policy, webhook: Webhook, req: &Request) -> Outcome {
    let ours = is_bare_metal_host(&req.kind) && matches!(&*req.operation, "CREATE" | "UPDATE");
    if !ours {
        return allow(req, Vec::new());
    }
    let mut new: HostView = match &req.object {
        None => return deny(req, unreadable("object", "required for CREATE and UPDATE")),
        Some(HostRead(Err(e))) => return deny(req, unreadable("object", &e.to_string())),
        Some(HostRead(Ok(doc))) => doc.view(),
    };
    if !req.namespace.is_empty() {
        new.namespace = &req.namespace;
    }
    // An unreadable old object cannot be compared with: treat the request like a CREATE.
    let old = match &req.old_object {
        Some(HostRead(Ok(doc))) => Some(doc.view()),
        _ => None,
    }
    .map(|mut o| {
        if !req.namespace.is_empty() {
            o.namespace = &req.namespace;
        }
        o
    });
    match webhook {
        Webhook::Validate => {
            let verdict = rules::validate(policy, old.as_ref(), &new);
            if verdict.allowed() {
                allow(req, verdict.warnings)
            } else {
                deny(req, verdict)
            }
        }
        Webhook::Mutate => {
            let Some(json) = mutate::patch_json(policy, &req.user_info.username, old.as_ref(), &new) else {
                return allow(req, Vec::new());
            };
            let mut outcome = allow(req, Vec::new());
            outcome.decision = Decision::Mutated;
            outcome.response.patch_type = Some("JSONPatch".to_owned());
            outcome.response.patch = Some(base64::engine::general_purpose::STANDARD.encode(json));
            outcome
                .response
                .audit_annotations
                .insert("decision".into(), Decision::Mutated.label().into());
            outcome
        }
    }
}

/// The verdict for an object that cannot be read as a BareMetalHost (shared with `check`).
pub(crate) fn unreadable(field: &str, why: &str) -> Verdict {
    Verdict {
        errors: vec![FieldError::invalid(
            "readable-object",
            field,
            rules::Shown::Json("{...}".into()),
            format!("cannot be read as a BareMetalHost: {why}"),
        )],
        warnings: Vec::new(),
    }
}

fn allow(req: &Request, warnings: Vec<String>) -> Outcome {
    let mut audit = BTreeMap::new();
    audit.insert("decision".to_owned(), Decision::Allowed.label().to_owned());
    Outcome {
        response: Response {
            uid: req.uid.to_string(),
            allowed: true,
            warnings,
            audit_annotations: audit,
            ..Response::default()
        },
        decision: Decision::Allowed,
        violations: Vec::new(),
    }
}

fn deny(req: &Request, verdict: Verdict) -> Outcome {
    let violations: Vec<String> = {
        let mut v: Vec<String> = verdict.errors.iter().map(|e| e.field.clone()).collect();
        v.dedup();
        v
    };
    let mut audit = BTreeMap::new();
    audit.insert("decision".to_owned(), Decision::Denied.label().to_owned());
    audit.insert("violations".to_owned(), violations.join(","));
    let status = Status {
        status: "Failure".to_owned(),
        message: verdict.message(),
        reason: "Invalid".to_owned(),
        details: StatusDetails {
            name: req.name.to_string(),
            group: "metal3.io".to_owned(),
            kind: api::KIND.to_owned(),
            causes: verdict.errors.iter().map(StatusCause::from).collect(),
        },
        code: 422,
    };
    Outcome {
        response: Response {
            uid: req.uid.to_string(),
            allowed: false,
            status: Some(status),
            warnings: verdict.warnings,
            audit_annotations: audit,
            ..Response::default()
        },
        decision: Decision::Denied,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `write_review` gives the bytes serde_json gives for the same review.
    #[test]
    fn review_text_is_what_serde_writes() {
        let mut annotations = BTreeMap::new();
        annotations.insert("decision".to_owned(), "denied".to_owned());
        annotations.insert("violations".to_owned(), "spec.\"a\",b".to_owned());
        let responses = [
            Response {
                uid: "u-1".into(),
                allowed: true,
                ..Response::default()
            },
            Response {
                uid: "u\"\n\u{1}".into(),
                allowed: true,
                patch_type: Some("JSONPatch".into()),
                patch: Some("W3sib3AiOiJhZGQifV0=".into()),
                warnings: vec!["w \"1\"".into(), "w2".into()],
                audit_annotations: annotations.clone(),
                ..Response::default()
            },
            Response {
                uid: "u".into(),
                allowed: false,
                status: Some(Status {
                    status: "Failure".into(),
                    message: "spec.x: Required value".into(),
                    reason: "Invalid".into(),
                    details: StatusDetails {
                        name: String::new(),
                        group: "metal3.io".into(),
                        kind: api::KIND.into(),
                        causes: vec![StatusCause {
                            reason: "FieldValueRequired".into(),
                            message: "Required value".into(),
                            field: "spec.x".into(),
                        }],
                    },
                    code: 422,
                }),
                audit_annotations: annotations,
                ..Response::default()
            },
            // Not base64 (never from `admit`): escaped like any string.
            Response {
                uid: "u".into(),
                allowed: true,
                patch: Some("not \"base64\"".into()),
                ..Response::default()
            },
        ];
        for response in responses {
            let mut text = Vec::new();
            response.write_review(&mut text);
            let want = serde_json::to_vec(&ReviewResponse::from(response.clone())).expect("serializes");
            assert_eq!(String::from_utf8_lossy(&text), String::from_utf8_lossy(&want));
        }
    }
}
