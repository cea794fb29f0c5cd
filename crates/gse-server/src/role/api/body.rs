//! Reading a request body: bounded in size, parsed as a JSON object, and read
//! field by field so an error names the exact field (`hosts[3].ip`), or
//! into a typed request ([`typed`]), whose errors name the field path the
//! same way.
//!
//! Unknown fields are ignored everywhere: clients add their own (bk_token,
//! bk_username, bk_supplier_account, nodeman_spec, atomicTaskNum ...).

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures::StreamExt;
use serde_json::{Map, Value};

use super::error::{ApiError, json_type, quoted};

/// A request body parsed as a JSON object.
pub type Fields = Map<String, Value>;

/// Reads the whole body, refusing it as soon as it grows past `limit` bytes
/// (and before reading anything when Content-Length already says so).
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BodyUnreadable {
            reason: e.to_string(),
        })?;
        if out.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Parses the body as a JSON object; an empty body counts as `{}`.
pub fn parse_object(bytes: &[u8]) -> Result<Fields, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::BodyNotObject {
            got: json_type(&other),
        }),
        Err(e) => Err(ApiError::InvalidJson {
            line: e.line(),
            column: e.column(),
            reason: syntax_reason(&e),
        }),
    }
}

/// The request of an endpoint that reads nothing but credentials.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct NoFields {}

/// The body as the typed request `T` (serde; unknown fields ignored); an
/// error names the field path (`agent_message_list[2].content`) and what
/// was wrong with it.
pub fn typed<T: serde::de::DeserializeOwned>(fields: &Fields) -> Result<T, ApiError> {
    // Read from the parsed map in place (serde_json deserializes from a
    // `&Map`), not from a copy of it.
    serde_path_to_error::deserialize(fields).map_err(|e| {
        let mut path = e.path().to_string();
        let mut inner = e.into_inner().to_string();
        // An error inside a [`Verbatim`] part carries the rest of its path.
        if let Some((rest, problem)) = inner
            .strip_prefix(NESTED)
            .and_then(|r| r.split_once(NESTED))
        {
            if rest != "." {
                path = if path == "." {
                    rest.to_string()
                } else {
                    format!("{path}.{rest}")
                };
            }
            inner = problem.to_string();
        }
        let inner = plain_words(&inner);
        match inner.strip_prefix("missing field `") {
            Some(rest) => {
                let name = rest.trim_end_matches('`');
                let field = match path.as_str() {
                    "." => name.to_string(),
                    p => format!("{p}.{name}"),
                };
                ApiError::MissingField { field }
            }
            None => ApiError::Invalid {
                field: if path == "." { "body".into() } else { path },
                problem: inner,
            },
        }
    })
}

/// serde's "invalid type: string \"0\", expected u64" in the words the
/// API uses everywhere: "expected an integer, got string \"0\"".
fn plain_words(message: &str) -> String {
    let expected = |what: &str| -> String {
        let what = what.trim();
        match what {
            "u8" | "u16" | "u32" | "u64" | "usize" => "an integer >= 0".into(),
            "i8" | "i16" | "i32" | "i64" | "isize" | "a JSON number" => "an integer".into(),
            "f32" | "f64" => "a number".into(),
            "a sequence" => "an array".into(),
            "a map" => "an object".into(),
            w if w.starts_with("struct ") => "an object".into(),
            w if w.starts_with("a boolean") => "a boolean".into(),
            w => w.to_string(),
        }
    };
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((got, want)) = rest.split_once(", expected ")
        {
            return format!("expected {}, got {got}", expected(want));
        }
    }
    message.to_string()
}

/// Marks the inner path in the message of an error inside a [`Verbatim`].
const NESTED: char = '\u{0}';

/// A request part read as `T` and also kept exactly as sent (`raw`):
/// callers compare what a query returns with what they sent, so parts
/// such as a stream_to are stored verbatim, while `T` is what the server
/// checks and reads. An error in `T` names its whole field path.
///
/// In a `ToSchema` struct, describe the field with
/// `#[schema(value_type = T)]`.
#[derive(Debug)]
pub struct Verbatim<T> {
    pub raw: Map<String, Value>,
    pub typed: T,
}

impl<'de, T: serde::de::DeserializeOwned> serde::Deserialize<'de> for Verbatim<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <Map<String, Value> as serde::Deserialize>::deserialize(d)?;
        let typed = serde_path_to_error::deserialize(&raw).map_err(|e| {
            serde::de::Error::custom(format_args!("{NESTED}{}{NESTED}{}", e.path(), e.inner()))
        })?;
        Ok(Verbatim { raw, typed })
    }
}

/// serde_json's message without its trailing " at line L column C", which
/// the error repeats in its own words.
fn syntax_reason(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}

/// An optional string field; null counts as absent.
pub fn optional_str<'a>(fields: &'a Fields, name: &str) -> Result<Option<&'a str>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::WrongType {
            field: name.to_string(),
            expected: "a string",
            got: json_type(other),
        }),
    }
}

/// A required cloud id of the entry at `path` (`hosts[2]`): an integer,
/// at least 0. Read as a JSON number, so a number in a string (`"0"`) is
/// refused by the request's type: every client schema says int (COMPAT.md
/// §2).
pub fn cloud_id(value: Option<serde_json::Number>, path: &str) -> Result<i64, ApiError> {
    let field = format!("{path}.bk_cloud_id");
    let Some(n) = value else {
        return Err(ApiError::MissingField { field });
    };
    match n.as_i64() {
        Some(id) if id >= 0 => Ok(id),
        _ => Err(ApiError::BadCloudId {
            field,
            value: quoted(&n.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // read by serde only
    struct Req {
        hosts: Vec<HostPart>,
        part: Option<Verbatim<Inner>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct HostPart {
        ip: String,
        bk_cloud_id: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        list: Vec<HostPart>,
    }

    fn err(v: serde_json::Value) -> ApiError {
        typed::<Req>(v.as_object().unwrap()).unwrap_err()
    }

    #[test]
    fn errors_name_the_field_path_in_plain_words() {
        let e =
            err(json!({"hosts": [{"ip": "a", "bk_cloud_id": 0}, {"ip": "b", "bk_cloud_id": "0"}]}));
        assert_eq!(e.code(), 1000400);
        assert_eq!(
            e.to_string(),
            ApiError::Invalid {
                field: "hosts[1].bk_cloud_id".into(),
                problem: "expected an integer >= 0, got string \"0\"".into(),
            }
            .to_string()
        );
        let e = err(json!({"hosts": [{"ip": "a"}]}));
        assert!(
            matches!(&e, ApiError::MissingField { field } if field == "hosts[0].bk_cloud_id"),
            "{e:?}"
        );
        assert!(matches!(err(json!({})), ApiError::MissingField { field } if field == "hosts"));
    }

    #[test]
    fn a_verbatim_part_keeps_what_was_sent_and_names_inner_paths() {
        let body = json!({"hosts": [], "part": {"list": [], "extra": {"kept": [1, null]}}});
        let req: Req = typed(body.as_object().unwrap()).unwrap();
        let part = req.part.unwrap();
        assert_eq!(Value::Object(part.raw), body["part"]);
        let e = err(json!({"hosts": [], "part": {"list": [{"ip": 1, "bk_cloud_id": 0}]}}));
        assert!(
            matches!(&e, ApiError::Invalid { field, problem }
                if field == "part.list[0].ip" && problem == "expected a string, got integer `1`"),
            "{e:?}"
        );
        let e = err(json!({"hosts": [], "part": {}}));
        assert!(
            matches!(&e, ApiError::MissingField { field } if field == "part.list"),
            "{e:?}"
        );
    }
}
