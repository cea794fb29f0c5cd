//! A small client of the gse HTTP API for tests.

use serde_json::Value;

/// The server's default `api.preauth_body_limit`.
const PREAUTH_BODY_LIMIT: usize = 64 * 1024;

/// Talks to one server's API with one app's credentials.
#[derive(Clone, Debug)]
pub struct Api {
    pub base: String,
    pub app_code: String,
    pub app_secret: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>, app_code: &str, app_secret: &str) -> Self {
        Api {
            base: base.into(),
            app_code: app_code.into(),
            app_secret: app_secret.into(),
            client: reqwest::Client::new(),
        }
    }

    /// A `gsectl` command connected to this API with these credentials;
    /// the test adds the subcommand.
    pub fn gsectl(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(crate::bin("gsectl"));
        cmd.args([
            "--api",
            &self.base,
            "--app-code",
            &self.app_code,
            "--app-secret",
            &self.app_secret,
        ]);
        cmd
    }

    /// POSTs `body` with the credentials merged into it; returns the HTTP
    /// status and the JSON answer. A body over the server's default
    /// pre-auth limit (64 KiB) carries them in the `X-Bkapi-App-Code` and
    /// `X-Bkapi-App-Secret` headers too, as bk-nodeman sends them: body
    /// credentials alone are only read from small bodies.
    pub async fn post(&self, path: &str, mut body: Value) -> (u16, Value) {
        if let Some(obj) = body.as_object_mut() {
            obj.insert("bk_app_code".into(), self.app_code.clone().into());
            obj.insert("bk_app_secret".into(), self.app_secret.clone().into());
        }
        let bytes = body.to_string().into_bytes();
        let headers = if bytes.len() > PREAUTH_BODY_LIMIT {
            vec![
                ("X-Bkapi-App-Code", self.app_code.clone()),
                ("X-Bkapi-App-Secret", self.app_secret.clone()),
            ]
        } else {
            Vec::new()
        };
        self.send(path, bytes, &headers).await
    }

    /// POSTs `body` with the credentials in the X-Bkapi-Authorization header.
    pub async fn post_header_auth(&self, path: &str, body: Value) -> (u16, Value) {
        let auth =
            serde_json::json!({"bk_app_code": self.app_code, "bk_app_secret": self.app_secret})
                .to_string();
        self.send(
            path,
            body.to_string().into_bytes(),
            &[("X-Bkapi-Authorization", auth)],
        )
        .await
    }

    /// POSTs raw bytes with the given headers and no added credentials.
    pub async fn send(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}{}", self.base, path))
            .header("Content-Type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        crate::openapi::check_answer(path, status, &value);
        (status, value)
    }

    /// GET a path; returns status and body text.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let resp = self
            .client
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(|e| e.to_string())?))
    }

    /// `bk_agent_alive` of one agent through the v1 API (0 when unknown).
    pub async fn alive(&self, cloud: i64, ip: &str) -> i64 {
        let (_, v) = self
            .post(
                "/api/c/compapi/v2/gse/get_agent_status/",
                serde_json::json!({"bk_supplier_account": "0", "hosts": [{"ip": ip, "bk_cloud_id": cloud}]}),
            )
            .await;
        v["data"][format!("{cloud}:{ip}")]["bk_agent_alive"]
            .as_i64()
            .unwrap_or(0)
    }

    /// Waits until agent `0:ip` is alive (20 s, scaled by the test
    /// patience); panics naming it otherwise.
    pub async fn wait_alive(&self, ip: &str) {
        crate::eventually(
            &format!("agent 0:{ip} alive"),
            std::time::Duration::from_secs(20),
            || async {
                (self.alive(0, ip).await == 1)
                    .then_some(())
                    .ok_or("not alive".to_string())
            },
        )
        .await;
    }
}
