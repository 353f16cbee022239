//! Reading a BareMetalHost straight from request text, in one pass and without a
//! `serde_json::Value`.
//!
//! Admission requests carry whole objects (often with large `status.hardware` and
//! `managedFields` blocks) of which the rules read a dozen fields. [`HostDoc`] is deserialized
//! directly from the request body: strings borrow from the body, blocks the rules only
//! compare (`image`, `spec.bootVolume` as sent) are kept as slices of it ([`Json`]), and
//! everything else is skipped by the parser without being built. `spec.bootVolume` is then
//! read field by field ([`read_boot_volume`]), recording what the CRD schema would reject
//! (wrong JSON types, unknown fields) instead of failing, so the rules still see the rest.

use super::{BootVolume, IscsiTarget, SecretRef, Sensitive};
use serde::{
    Deserialize,
    de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer},
};
use serde_json::{Number, Value, value::RawValue};
use std::{borrow::Cow, fmt};

/// A JSON value the rules compare or pass on but do not interpret: a slice of the request
/// text, or a node of an already parsed tree (the reconciler, `check`, tests).
#[derive(Clone, Copy, Debug)]
pub enum Json<'a> {
    /// Verbatim JSON text (never `null`: absent and `null` both read as `None`).
    Text(&'a RawValue),
    /// A parsed value.
    Tree(&'a Value),
}

impl Json<'_> {
    /// The value as a `serde_json::Value` (parses a text slice: use off the hot path).
    pub fn to_value(&self) -> Value {
        match self {
            // A RawValue is valid JSON by construction.
            Self::Text(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            Self::Tree(v) => (*v).clone(),
        }
    }

    /// The boolean, when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Text(raw) => match raw.get() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            Self::Tree(v) => v.as_bool(),
        }
    }
}

/// JSON equality (`Value` semantics: object key order and whitespace do not matter). Equal
/// text is the common case and costs a `memcmp`; anything else is decided on parsed values.
impl PartialEq for Json<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Text(a), Self::Text(b)) if a.get() == b.get() => true,
            (Self::Tree(a), Self::Tree(b)) => a == b,
            _ => self.to_value() == other.to_value(),
        }
    }
}

/// A string field read leniently: any other JSON type reads as absent (the rules report
/// what they need to; the API server's schema has already rejected wrong types).
#[derive(Debug, Default)]
pub(crate) struct Str<'a>(pub(crate) Option<Cow<'a, str>>);

impl Str<'_> {
    pub(crate) fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<Cow<'de, str>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(s)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(None)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        d.deserialize_any(V).map(Str)
    }
}

/// A JSON value read as `T` when it is an object; any other JSON type is recorded rather
/// than failing the whole parse, so a request with a malformed object can still be
/// answered with a field error and its uid.
#[derive(Debug)]
pub enum ObjectOr<T> {
    /// It was an object.
    Object(T),
    /// It was something else (named for the error message).
    Other(&'static str),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOr<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = ObjectOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(ObjectOr::Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ObjectOr::Other("an array"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a string"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("a number"))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(ObjectOr::Other("null"))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The parts of a BareMetalHost the rules, the mutation and the reconciler read, borrowed
/// from the request text; see the module docs. [`HostDoc::view`] gives the [`super::HostView`].
#[derive(Debug, Default)]
pub struct HostDoc<'a> {
    pub(crate) metadata: Option<MetaDoc<'a>>,
    pub(crate) spec: Option<SpecDoc<'a>>,
    pub(crate) status: Option<StatusDoc<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawHostDoc<'a> {
    #[serde(default, borrow)]
    metadata: Option<ObjectOr<MetaDoc<'a>>>,
    #[serde(default, borrow)]
    spec: Option<ObjectOr<SpecDoc<'a>>>,
    #[serde(default, borrow)]
    status: Option<ObjectOr<StatusDoc<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetaDoc<'a> {
    #[serde(default, borrow)]
    pub(crate) name: Str<'a>,
    #[serde(default, borrow)]
    pub(crate) generate_name: Str<'a>,
    #[serde(default, borrow)]
    pub(crate) namespace: Str<'a>,
    #[serde(default, borrow)]
    pub(crate) deletion_timestamp: Option<&'a RawValue>,
}

/// Every `spec` field a rule or the mutation reads; keep in step with `rules::spec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SpecDoc<'a> {
    #[serde(default, borrow)]
    pub(crate) boot_volume: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) image: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) custom_deploy: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) externally_provisioned: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) bmc: Option<ObjectOr<BmcDoc<'a>>>,
    #[serde(default, borrow, rename = "bootMACAddress")]
    pub(crate) boot_mac_address: Str<'a>,
    #[serde(default, borrow)]
    pub(crate) root_device_hints: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) raid: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) user_data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) network_data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) meta_data: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct BmcDoc<'a> {
    #[serde(default, borrow)]
    pub(crate) address: Str<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusDoc<'a> {
    #[serde(default, borrow)]
    pub(crate) operational_status: Str<'a>,
    #[serde(default, borrow)]
    pub(crate) provisioning: Option<ObjectOr<ProvisioningDoc<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProvisioningDoc<'a> {
    #[serde(default, borrow)]
    pub(crate) state: Str<'a>,
    #[serde(default, borrow, rename = "ID")]
    pub(crate) id: Str<'a>,
}

/// A BareMetalHost as read from a request, or why the object cannot be read as one.
/// Deserializing never fails on the object's shape, only on malformed JSON.
#[derive(Debug)]
pub struct HostRead<'a>(pub Result<HostDoc<'a>, super::ViewError>);

impl<'de: 'a, 'a> Deserialize<'de> for HostRead<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use super::ViewError;
        let raw = match ObjectOr::<RawHostDoc<'a>>::deserialize(d)? {
            ObjectOr::Object(raw) => raw,
            ObjectOr::Other(_) => return Ok(Self(Err(ViewError::NotAnObject))),
        };
        let metadata = match raw.metadata {
            Some(ObjectOr::Object(m)) => Some(m),
            Some(ObjectOr::Other("null")) | None => None,
            Some(ObjectOr::Other(_)) => return Ok(Self(Err(ViewError::MetadataNotObject))),
        };
        let spec = match raw.spec {
            Some(ObjectOr::Object(s)) => Some(s),
            Some(ObjectOr::Other("null")) | None => None,
            Some(ObjectOr::Other(_)) => return Ok(Self(Err(ViewError::SpecNotObject))),
        };
        // A malformed status reads as no status.
        let status = match raw.status {
            Some(ObjectOr::Object(s)) => Some(s),
            _ => None,
        };
        Ok(Self(Ok(HostDoc {
            metadata,
            spec,
            status,
        })))
    }
}

/// Reads a BareMetalHost from JSON text (tests, tools): see [`HostDoc`].
pub fn parse_host(json: &str) -> Result<HostDoc<'_>, super::ViewError> {
    serde_json::from_str::<HostRead<'_>>(json)
        .map_err(|e| super::ViewError::Json(e.to_string()))?
        .0
}

// ---------------------------------------------------------------------------------------
// spec.bootVolume, field by field

/// Fields of `spec.bootVolume` that were present (with any JSON type): see [`Shape::has`].
#[allow(missing_docs)]
pub mod field {
    pub const VOLUME_ID: u32 = 1 << 0;
    pub const VOLUME_DRIVER: u32 = 1 << 1;
    pub const CONNECTOR_ID: u32 = 1 << 2;
    pub const TARGET_TYPE: u32 = 1 << 3;
    pub const ISCSI_TARGET: u32 = 1 << 4;
    pub const CREDENTIALS_NAME: u32 = 1 << 5;
    pub const IQN: u32 = 1 << 6;
    pub const PORTAL: u32 = 1 << 7;
    pub const LUN: u32 = 1 << 8;
    pub const AUTH_METHOD: u32 = 1 << 9;
    pub const AUTH_USER: u32 = 1 << 10;
    pub const AUTH_PASSWD: u32 = 1 << 11;
    pub const I_TYPE: u32 = 1 << 12;
    pub const SECRET_REF: u32 = 1 << 13;
    pub const REF_NAME: u32 = 1 << 14;
    pub const REF_NAMESPACE: u32 = 1 << 15;
    /// Everything under `iscsiTarget`.
    pub const UNDER_TARGET: u32 = IQN
        | PORTAL
        | LUN
        | AUTH_METHOD
        | AUTH_USER
        | AUTH_PASSWD
        | I_TYPE
        | SECRET_REF
        | REF_NAME
        | REF_NAMESPACE;
}

/// A schema violation only reading the block can see.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// A field of the wrong JSON type. `value` is what was sent, `None` for a credential
    /// field (never kept).
    WrongType {
        /// Full field path.
        field: String,
        /// The JSON type the schema declares.
        want: &'static str,
        /// The value sent.
        value: Option<Value>,
    },
    /// A field the schema does not declare.
    Unknown {
        /// Full field path.
        field: String,
    },
}

impl Problem {
    /// The field path.
    pub fn field(&self) -> &str {
        match self {
            Self::WrongType { field, .. } | Self::Unknown { field } => field,
        }
    }
}

/// What reading `spec.bootVolume` found besides its typed value: which fields were there,
/// and the schema violations only the reading can see (a wrong JSON type, an unknown field).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shape {
    /// The block is a JSON object.
    pub object: bool,
    /// Fields present, as [`field`] bits.
    pub present: u32,
    /// `iscsiTarget.lun` when it is a JSON integer (also when too large for the typed `i64`).
    pub lun: Option<Number>,
    /// Type errors and unknown fields, in document order.
    pub problems: Vec<Problem>,
}

impl Shape {
    /// Whether a field (a [`field`] bit) was present.
    pub fn has(&self, bit: u32) -> bool {
        self.present & bit != 0
    }
}

const BV_PATH: &str = "spec.bootVolume";
const TARGET_PATH: &str = "spec.bootVolume.iscsiTarget";
const REF_PATH: &str = "spec.bootVolume.iscsiTarget.authSecretRef";

/// Reads `spec.bootVolume` (see [`Shape`]). Never fails: whatever JSON it is, the result
/// says what could be read and what is wrong.
pub fn read_boot_volume(block: Json<'_>) -> (BootVolume, Shape) {
    let read = match block {
        Json::Text(raw) => {
            let mut de = serde_json::Deserializer::from_str(raw.get());
            Block::deserialize(&mut de)
        }
        Json::Tree(v) => Block::deserialize(v),
    };
    match read {
        Ok(Block(bv, shape)) => (bv, shape),
        // Unreachable for valid JSON (a RawValue, a Value); never accept silently.
        Err(_) => (
            BootVolume::default(),
            Shape {
                problems: vec![Problem::WrongType {
                    field: BV_PATH.into(),
                    want: "object",
                    value: None,
                }],
                ..Shape::default()
            },
        ),
    }
}

/// An object key, borrowed when the text allows.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Collects what one object level reads: its presence bits and problems.
struct Level<'s> {
    shape: &'s mut Shape,
    path: &'static str,
}

impl Level<'_> {
    /// Marks a field present; a repeated key replaces the earlier value (as in a parsed
    /// `Value`), so the earlier value's problems are dropped.
    fn enter(&mut self, bit: u32, name: &str) {
        if self.shape.has(bit) {
            let prefix = format!("{}.{name}", self.path);
            self.shape.problems.retain(|p| {
                let f = p.field();
                !(f == prefix
                    || f.strip_prefix(prefix.as_str())
                        .is_some_and(|r| r.starts_with('.')))
            });
        }
        self.shape.present |= bit;
    }

    fn type_error(&mut self, name: &str, value: Value, want: &'static str) {
        self.shape.problems.push(Problem::WrongType {
            field: format!("{}.{name}", self.path),
            want,
            value: (name != "authPasswd").then_some(value),
        });
    }

    fn string(&mut self, bit: u32, name: &str, value: Value) -> Option<String> {
        self.enter(bit, name);
        match value {
            Value::String(s) => Some(s),
            other => {
                self.type_error(name, other, "string");
                None
            }
        }
    }

    fn unknown(&mut self, name: &str) {
        self.shape.problems.push(Problem::Unknown {
            field: format!("{}.{name}", self.path),
        });
    }
}

/// `spec.bootVolume`: the typed value and its [`Shape`].
struct Block(BootVolume, Shape);

impl<'de> Deserialize<'de> for Block {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Block;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Block, A::Error> {
                use field::*;
                let mut bv = BootVolume::default();
                let mut shape = Shape {
                    object: true,
                    ..Shape::default()
                };
                while let Some(Key(key)) = map.next_key()? {
                    let key = key.as_ref();
                    let mut level = Level {
                        shape: &mut shape,
                        path: BV_PATH,
                    };
                    match key {
                        "volumeId" => bv.volume_id = level.string(VOLUME_ID, key, map.next_value()?),
                        "volumeDriver" => {
                            bv.volume_driver = level.string(VOLUME_DRIVER, key, map.next_value()?)
                        }
                        "connectorId" => bv.connector_id = level.string(CONNECTOR_ID, key, map.next_value()?),
                        "targetType" => bv.target_type = level.string(TARGET_TYPE, key, map.next_value()?),
                        "iscsiCredentialsName" => {
                            bv.iscsi_credentials_name = level.string(CREDENTIALS_NAME, key, map.next_value()?)
                        }
                        "iscsiTarget" => {
                            level.enter(ISCSI_TARGET, key);
                            // Clears what an earlier `iscsiTarget` key recorded below it.
                            shape.present &= !UNDER_TARGET;
                            shape.lun = None;
                            bv.iscsi_target = match map.next_value::<Nested<Target>>()? {
                                Nested::Object(Target(t, sub)) => {
                                    shape.present |= sub.present;
                                    shape.lun = sub.lun;
                                    shape.problems.extend(sub.problems);
                                    Some(t)
                                }
                                Nested::Other(value) => {
                                    Level {
                                        shape: &mut shape,
                                        path: BV_PATH,
                                    }
                                    .type_error(key, value, "object");
                                    None
                                }
                            };
                        }
                        _ => {
                            level.unknown(key);
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Block(bv, shape))
            }
            fn visit_str<E>(self, s: &str) -> Result<Block, E> {
                Ok(not_object(Value::String(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Block, E> {
                Ok(not_object(Value::String(s)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Block, E> {
                Ok(not_object(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Block, E> {
                Ok(not_object(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Block, E> {
                Ok(not_object(n.into()))
            }
            fn visit_bool<E>(self, b: bool) -> Result<Block, E> {
                Ok(not_object(b.into()))
            }
            fn visit_unit<E>(self) -> Result<Block, E> {
                Ok(not_object(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Block, A::Error> {
                Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(not_object)
            }
        }
        d.deserialize_any(V)
    }
}

fn not_object(value: Value) -> Block {
    Block(
        BootVolume::default(),
        Shape {
            problems: vec![Problem::WrongType {
                field: BV_PATH.into(),
                want: "object",
                value: Some(value),
            }],
            ..Shape::default()
        },
    )
}

/// A nested object read as `T`, or the other JSON value it was.
enum Nested<T> {
    Object(T),
    Other(Value),
}

/// How a nested level reads its fields from a map.
trait FromMap: Sized {
    fn from_map<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

impl<'de, T: FromMap> Deserialize<'de> for Nested<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: FromMap> Visitor<'de> for V<T> {
            type Value = Nested<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Nested<T>, A::Error> {
                T::from_map(map).map(Nested::Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Nested<T>, A::Error> {
                Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Nested::Other)
            }
            fn visit_str<E>(self, s: &str) -> Result<Nested<T>, E> {
                Ok(Nested::Other(Value::String(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Nested<T>, E> {
                Ok(Nested::Other(Value::String(s)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Nested<T>, E> {
                Ok(Nested::Other(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Nested<T>, E> {
                Ok(Nested::Other(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Nested<T>, E> {
                Ok(Nested::Other(n.into()))
            }
            fn visit_bool<E>(self, b: bool) -> Result<Nested<T>, E> {
                Ok(Nested::Other(b.into()))
            }
            fn visit_unit<E>(self) -> Result<Nested<T>, E> {
                Ok(Nested::Other(Value::Null))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `iscsiTarget` with what reading it found.
struct Target(IscsiTarget, Shape);

impl FromMap for Target {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        use field::*;
        let mut t = IscsiTarget::default();
        let mut shape = Shape::default();
        while let Some(Key(key)) = map.next_key()? {
            let key = key.as_ref();
            let mut level = Level {
                shape: &mut shape,
                path: TARGET_PATH,
            };
            match key {
                "iqn" => t.iqn = level.string(IQN, key, map.next_value()?),
                "portal" => t.portal = level.string(PORTAL, key, map.next_value()?),
                "authMethod" => t.auth_method = level.string(AUTH_METHOD, key, map.next_value()?),
                "authUser" => t.auth_user = level.string(AUTH_USER, key, map.next_value()?),
                "authPasswd" => {
                    t.auth_passwd = level
                        .string(AUTH_PASSWD, key, map.next_value()?)
                        .map(Sensitive::new)
                }
                "iType" => t.i_type = level.string(I_TYPE, key, map.next_value()?),
                "lun" => {
                    level.enter(LUN, key);
                    level.shape.lun = None;
                    t.lun = None;
                    match map.next_value()? {
                        Value::Number(n) if is_integer(&n) => {
                            t.lun = n.as_i64();
                            level.shape.lun = Some(n);
                        }
                        other => level.type_error(key, other, "integer"),
                    }
                }
                "authSecretRef" => {
                    level.enter(SECRET_REF, key);
                    shape.present &= !(REF_NAME | REF_NAMESPACE);
                    t.auth_secret_ref = match map.next_value::<Nested<Ref>>()? {
                        Nested::Object(Ref(r, sub)) => {
                            shape.present |= sub.present;
                            shape.problems.extend(sub.problems);
                            Some(r)
                        }
                        Nested::Other(value) => {
                            Level {
                                shape: &mut shape,
                                path: TARGET_PATH,
                            }
                            .type_error(key, value, "object");
                            None
                        }
                    };
                }
                _ => {
                    level.unknown(key);
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Self(t, shape))
    }
}

/// JSON Schema's `integer`: any number without a fractional part (`1.0` included).
fn is_integer(n: &Number) -> bool {
    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
}

/// `authSecretRef` with what reading it found.
struct Ref(SecretRef, Shape);

impl FromMap for Ref {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        use field::*;
        let mut r = SecretRef::default();
        let mut shape = Shape::default();
        while let Some(Key(key)) = map.next_key()? {
            let key = key.as_ref();
            let mut level = Level {
                shape: &mut shape,
                path: REF_PATH,
            };
            match key {
                "name" => r.name = level.string(REF_NAME, key, map.next_value()?),
                "namespace" => r.namespace = level.string(REF_NAMESPACE, key, map.next_value()?),
                _ => {
                    level.unknown(key);
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Self(r, shape))
    }
}
