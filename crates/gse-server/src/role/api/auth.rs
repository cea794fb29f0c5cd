//! App authentication (A3), read the way real clients send it (COMPAT.md §2.0).
//!
//! Credentials are looked for, in order, in the `X-Bkapi-Authorization` JSON
//! header (bk-job, bk-monitor), the `X-Bkapi-App-Code`/`X-Bkapi-App-Secret`
//! headers, and the `bk_app_code`/`bk_app_secret` body fields (bk-nodeman's
//! default). The app must be registered in the state store; user identity
//! (`bk_username`, `bk_token`) is accepted and ignored. The store holds
//! only a hash of each secret; [`VerifiedSecrets`] checks against it.

use axum::http::HeaderMap;
use gse_core::seams::StateStore;
use serde_json::Value;

use super::body::{Fields, optional_str};
use super::error::{ApiError, quoted};
use crate::secret_cache::{Verdict, VerifiedSecrets};

const AUTHORIZATION_HEADER: &str = "x-bkapi-authorization";
const APP_CODE_HEADER: &str = "x-bkapi-app-code";
const APP_SECRET_HEADER: &str = "x-bkapi-app-secret";

/// Where a caller's credentials were found, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    AuthorizationHeader,
    AppHeaders,
    Body,
}

/// An app code and secret as the caller sent them.
#[derive(Clone)]
pub struct Credentials {
    pub app_code: String,
    app_secret: String,
    pub source: Source,
}

// === impl Credentials ===

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("Credentials")
            .field("app_code", &self.app_code)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials from the headers, if any header carries an app code.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Credentials>, ApiError> {
        if let Some(raw) = headers.get(AUTHORIZATION_HEADER) {
            let bad = |reason: String| ApiError::BadAuthorizationHeader { reason };
            let value: Value = serde_json::from_slice(raw.as_bytes())
                .map_err(|e| bad(format!("not JSON ({e})")))?;
            let fields = value
                .as_object()
                .ok_or_else(|| bad("not a JSON object".to_string()))?;
            let code = optional_str(fields, "bk_app_code").map_err(|e| bad(e.to_string()))?;
            let secret = optional_str(fields, "bk_app_secret").map_err(|e| bad(e.to_string()))?;
            // A header with only user credentials (bk_token) names no app:
            // keep looking in the other places.
            if let Some(code) = code {
                return Ok(Some(Credentials::new(
                    code,
                    secret,
                    Source::AuthorizationHeader,
                )));
            }
        }
        let code = headers.get(APP_CODE_HEADER).and_then(|v| v.to_str().ok());
        let secret = headers.get(APP_SECRET_HEADER).and_then(|v| v.to_str().ok());
        Ok(code.map(|code| Credentials::new(code, secret, Source::AppHeaders)))
    }

    /// Credentials from the body fields, if it names an app code.
    pub fn from_body(fields: &Fields) -> Result<Option<Credentials>, ApiError> {
        let code = optional_str(fields, "bk_app_code")?;
        let secret = optional_str(fields, "bk_app_secret")?;
        Ok(code.map(|code| Credentials::new(code, secret, Source::Body)))
    }

    fn new(code: &str, secret: Option<&str>, source: Source) -> Self {
        Credentials {
            app_code: code.to_string(),
            app_secret: secret.unwrap_or_default().to_string(),
            source,
        }
    }

    /// Checks the app is registered and the secret matches its stored hash.
    pub async fn verify(
        &self,
        store: &dyn StateStore,
        secrets: &VerifiedSecrets,
    ) -> Result<(), ApiError> {
        let app = store.get_app(&self.app_code).await?;
        let Some(app) = app else {
            return Err(ApiError::UnknownApp {
                app_code: quoted(&self.app_code),
            });
        };
        match secrets.verify(&app, &self.app_secret).await {
            Verdict::Right => Ok(()),
            Verdict::Wrong => Err(ApiError::WrongSecret {
                app_code: quoted(&self.app_code),
            }),
            Verdict::Busy => Err(ApiError::AuthBusy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Credentials::new("app", Some("hunter2"), Source::Body);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
