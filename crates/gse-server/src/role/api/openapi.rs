//! The OpenAPI 3.1 document of the HTTP API, generated from the code: every
//! row of [`ENDPOINTS`] (legacy names included) with the typed request it
//! is read into and the typed answer it gives ([`Endpoint::shape`]), both
//! described by their `#[derive(ToSchema)]`. Served at
//! `GET /api/openapi.json` and committed as `docs/openapi.json`
//! (`gse-server openapi > docs/openapi.json`; a test keeps the two equal).
//!
//! Every answer travels in the BlueKing envelope ([`super::envelope`]):
//! `{result: true, code: 0, message, data: <answer>}` on success, or
//! [`ERROR_ENVELOPE`] — which can come with HTTP 200 too (1011003, a
//! queued process operation), so a 200 is either.

use std::sync::LazyLock;

use utoipa::ToSchema;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    RefOr, Required, ResponseBuilder, ResponsesBuilder,
};

use super::endpoint::ENDPOINTS;

/// Path of the document itself.
pub const OPENAPI_PATH: &str = "/api/openapi.json";

/// Name of the failure envelope's schema in `components`.
pub const ERROR_ENVELOPE: &str = "ErrorEnvelope";

/// What one endpoint reads and answers.
pub struct Shape {
    /// The request body (credentials and unknown fields aside).
    pub request: RefOr<Schema>,
    /// The envelope's `data` on success.
    pub answer: RefOr<Schema>,
    /// Named schemas the two refer to.
    pub components: Vec<(String, RefOr<Schema>)>,
}

impl Shape {
    /// The shape of an endpoint that reads `Req` and answers `Ans`.
    pub fn of<Req: ToSchema, Ans: ToSchema>() -> Shape {
        let mut components = Vec::new();
        Req::schemas(&mut components);
        Ans::schemas(&mut components);
        Shape {
            request: named::<Req>(&mut components),
            answer: named::<Ans>(&mut components),
            components,
        }
    }
}

/// A reference to `T` in `components` when it has a name of its own (a
/// struct or enum), so legacy paths and shared answers are described once;
/// `T` inline otherwise (a list, a map).
fn named<T: ToSchema>(components: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
    let name = T::name();
    let schema = T::schema();
    let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain || matches!(schema, RefOr::T(Schema::Array(_))) {
        return schema;
    }
    components.push((name.to_string(), schema));
    RefOr::Ref(Ref::from_schema_name(name))
}

/// An endpoint's typed answer as the envelope's `data`.
pub fn answer<T: serde::Serialize>(answer: &T) -> Result<serde_json::Value, super::ApiError> {
    // A typed answer of ours always serializes (no maps with non-string
    // keys, no failing Serialize impls).
    Ok(serde_json::to_value(answer).expect("typed API answers serialize"))
}

/// The document as JSON, built once.
pub fn document_json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        let mut text = document()
            .to_pretty_json()
            .expect("an OpenAPI document always serializes");
        text.push('\n');
        text
    });
    &JSON
}

/// The whole document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    let mut components = ComponentsBuilder::new().schema(ERROR_ENVELOPE, error_envelope());
    for (path, endpoint) in ENDPOINTS {
        let shape = endpoint.shape();
        components = components.schemas_from_iter(shape.components.clone());
        // A legacy name is the same endpoint at another path; its
        // operation id says which.
        let canonical = endpoint.path() == *path;
        let id = operation_id(path);
        let summary = if canonical {
            endpoint.summary().to_string()
        } else {
            format!(
                "{} (legacy path of {})",
                endpoint.summary(),
                endpoint.path()
            )
        };
        let op = OperationBuilder::new()
            .operation_id(Some(id))
            .summary(Some(summary))
            .tag(tag(endpoint.path()))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .description(Some(
                        "JSON object; fields not named here are ignored. Credentials \
                         (`bk_app_code`, `bk_app_secret`) go in the body or in the \
                         `X-Bkapi-Authorization` header.",
                    ))
                    .required(Some(Required::True))
                    .content("application/json", json_content(shape.request))
                    .build(),
            ))
            .responses(
                ResponsesBuilder::new()
                    .response(
                        "200",
                        ResponseBuilder::new()
                            .description("Success envelope, or a failure that is an answer")
                            .content("application/json", json_content(envelope(shape.answer))),
                    )
                    .response(
                        "default",
                        ResponseBuilder::new()
                            .description("Failure envelope (4xx, 5xx)")
                            .content("application/json", json_content(error_ref())),
                    ),
            );
        paths = paths.path(*path, PathItem::new(HttpMethod::Post, op));
    }
    let health = envelope(
        ObjectBuilder::new()
            .property("version", ObjectBuilder::new().schema_type(Type::String))
            .required("version")
            .into(),
    );
    for (path, what, kind, schema) in [
        (
            "/healthz",
            "Liveness for load balancers (no credentials)",
            "application/json",
            Some(health),
        ),
        (
            "/metrics",
            "Prometheus metrics (no credentials)",
            "text/plain",
            None,
        ),
        (
            OPENAPI_PATH,
            "This document (no credentials)",
            "application/json",
            None,
        ),
    ] {
        let op = OperationBuilder::new()
            .operation_id(Some(operation_id(path)))
            .summary(Some(what))
            .tag("operations")
            .responses(
                ResponsesBuilder::new().response(
                    "200",
                    ResponseBuilder::new()
                        .description(what)
                        .content(kind, ContentBuilder::new().schema(schema).build()),
                ),
            );
        paths = paths.path(path, PathItem::new(HttpMethod::Get, op));
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("gse")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The HTTP API of a gse node, in the shapes bk-job, bk-nodeman, \
                     bk-monitor and bk-cmdb call (docs/API.md). Every path is also \
                     served under the gateway prefix /api/bk-gse/prod and with a \
                     trailing slash.",
                )),
        )
        .paths(paths)
        .components(Some(components.build()))
        .build()
}

fn json_content(schema: RefOr<Schema>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

fn error_ref() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(ERROR_ENVELOPE))
}

/// `/api/v2/task/extensions/async_execute_script` →
/// `api_v2_task_extensions_async_execute_script`.
fn operation_id(path: &str) -> String {
    path.trim_start_matches('/')
        .replace(['/', '.'], "_")
        .replace('-', "_")
}

/// The group an endpoint is listed under: its path's family.
fn tag(path: &str) -> &'static str {
    if path.contains("/task/") {
        "task"
    } else if path.contains("/proc/") || path.contains("_proc") {
        "proc"
    } else if path.contains("/data/") || path.contains("route") || path.contains("streamto") {
        "data"
    } else {
        "cluster"
    }
}

/// `{result: true, code: 0, message, data: answer}` or the failure
/// envelope.
fn envelope(answer: RefOr<Schema>) -> RefOr<Schema> {
    let success = ObjectBuilder::new()
        .property(
            "result",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([true])),
        )
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([0])),
        )
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .property("data", answer)
        .required("result")
        .required("code")
        .required("message")
        .required("data");
    RefOr::T(Schema::OneOf(
        OneOfBuilder::new().item(success).item(error_ref()).build(),
    ))
}

/// `{result: false, code, message, data}`: `data` is null, an empty list
/// where clients iterate it, or the per-agent answers of a queued process
/// operation (1011003).
fn error_envelope() -> RefOr<Schema> {
    ObjectBuilder::new()
        .description(Some("A failed call: code and message say what failed"))
        .property(
            "result",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([false])),
        )
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .description(Some("1000400.. for HTTP errors, else the GSE code")),
        )
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .description(Some("null, [] or the per-agent answers of 1011003")),
        )
        .required("result")
        .required("code")
        .required("message")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_str(document_json()).unwrap()
    }

    #[test]
    fn every_route_the_server_serves_is_in_the_document() {
        use super::super::endpoint::Route;
        use axum::http::Method;
        let doc = doc();
        let paths = doc["paths"].as_object().unwrap();
        for (path, endpoint) in ENDPOINTS {
            let item = &paths[*path];
            assert!(item["post"].is_object(), "{path} missing");
            assert_eq!(
                Route::parse(&Method::POST, path).unwrap(),
                Route::Api(*endpoint)
            );
        }
        for path in ["/healthz", "/metrics", OPENAPI_PATH] {
            assert!(paths[path]["get"].is_object(), "{path} missing");
            assert!(Route::parse(&Method::GET, path).is_ok(), "{path}");
        }
        // And nothing more: every documented path is served.
        assert_eq!(paths.len(), ENDPOINTS.len() + 3);
        for (path, item) in paths {
            let method = if item.get("post").is_some() {
                Method::POST
            } else {
                Method::GET
            };
            assert!(Route::parse(&method, path).is_ok(), "{path} not served");
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_ref_resolves() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
    }

    #[test]
    fn docs_openapi_json_is_the_generated_document() {
        let committed =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let text = std::fs::read_to_string(&committed).unwrap_or_default();
        assert!(
            text == document_json(),
            "{} is not the document the code generates; regenerate it with \
             `cargo run -p gse-server -- openapi > docs/openapi.json`",
            committed.display()
        );
    }
}
