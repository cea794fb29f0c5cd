//! Every API answer a test receives, checked against the OpenAPI document
//! the server generates (issue 13: "real responses of the end-to-end tests
//! validate against it"). [`crate::Api`] calls [`check_answer`] on each
//! answer, so every end-to-end test that calls the API is also a test of
//! the document; an answer that does not match panics with the path, the
//! mismatches and the answer.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use gse_server::role::api::endpoint::Route;
use gse_server::role::api::openapi::document_json;
use reqwest::Method;
use serde_json::{Value, json};

/// Validators by (document path, response key), compiled once per test
/// process.
type Cache = Mutex<HashMap<(String, String), Arc<jsonschema::Validator>>>;

static DOCUMENT: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(document_json()).expect("the document is JSON"));
static VALIDATORS: LazyLock<Cache> = LazyLock::new(Cache::default);

/// Panics when `answer`, received with HTTP `status` for a POST to `path`,
/// is not what the document says that path answers. Paths the server does
/// not serve (tests of 404) and answers that are not JSON are not checked.
pub fn check_answer(path: &str, status: u16, answer: &Value) {
    if let Err(problems) = validate(path, status, answer) {
        panic!(
            "the answer to POST {path} (HTTP {status}) does not match docs/openapi.json:\n{}\nanswer: {}",
            problems.join("\n"),
            truncate(&answer.to_string())
        );
    }
}

/// The mismatches of one answer, if any.
pub fn validate(path: &str, status: u16, answer: &Value) -> Result<(), Vec<String>> {
    let Ok(Route::Api(endpoint)) = Route::parse(&Method::POST, path) else {
        return Ok(());
    };
    if !answer.is_object() {
        return Ok(());
    }
    let doc_path = endpoint.path().to_string();
    let responses = &DOCUMENT["paths"][&doc_path]["post"]["responses"];
    let key = if responses.get(status.to_string()).is_some() {
        status.to_string()
    } else {
        "default".to_string()
    };
    // A 200 is the success envelope or the failure one; `result` says
    // which to hold it to, so that a mismatch is named field by field
    // rather than as "not valid under any of oneOf".
    let branch = match answer["result"].as_bool() {
        Some(true) => 0,
        _ => 1,
    };
    let validator = {
        let mut cache = VALIDATORS.lock().unwrap();
        cache
            .entry((doc_path.clone(), format!("{key}/{branch}")))
            .or_insert_with(|| {
                let mut schema = &responses[&key]["content"]["application/json"]["schema"];
                assert!(!schema.is_null(), "{doc_path}: no schema for {key}");
                if let Some(one_of) = schema["oneOf"].as_array() {
                    schema = &one_of[branch];
                }
                // The response schema, with the document's components
                // beside it so that `#/components/schemas/...` resolves.
                let root = json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "components": DOCUMENT["components"],
                    "allOf": [schema],
                });
                Arc::new(
                    jsonschema::validator_for(&root)
                        .unwrap_or_else(|e| panic!("{doc_path} {key}: bad schema: {e}")),
                )
            })
            .clone()
    };
    let problems: Vec<String> = validator
        .iter_errors(answer)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 4000 {
        return s.to_string();
    }
    let mut end = 4000;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_unlike_the_document_is_caught() {
        let path = "/api/v2/cluster/list_agents/";
        let good = json!({"result": true, "code": 0, "message": "success",
            "data": {"total": 0, "agents": []}});
        assert_eq!(validate(path, 200, &good), Ok(()));
        // A field of the wrong type, a missing field, a success with a
        // failure code: each is named.
        for (bad, at) in [
            (
                json!({"result": true, "code": 0, "message": "success",
                "data": {"total": "0", "agents": []}}),
                "/data/total",
            ),
            (
                json!({"result": true, "code": 0, "message": "success",
                "data": {"agents": []}}),
                "/data",
            ),
            (
                json!({"result": true, "code": 7, "message": "x", "data": null}),
                "/code",
            ),
        ] {
            let problems = validate(path, 200, &bad).unwrap_err().join("\n");
            assert!(problems.contains(at), "{at}: {problems}");
        }
        // Failures: any data, but the envelope's own fields are required.
        let failure = json!({"result": false, "code": 1000400, "message": "x", "data": null});
        assert_eq!(validate(path, 400, &failure), Ok(()));
        assert!(validate(path, 400, &json!({"result": false})).is_err());
        // Paths the server does not serve are not checked.
        assert_eq!(validate("/nope", 404, &json!({})), Ok(()));
    }
}
