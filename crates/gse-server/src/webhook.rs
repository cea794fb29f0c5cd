//! POSTing JSON to an upper system's HTTP endpoint, retried with back-off:
//! the alarm webhook and the plugin-message callbacks.
//!
//! Each POST runs on a task of its own, so a slow endpoint holds no caller.
//! An answer the [`Accept`] rule does not take, a timeout or a connection
//! error is retried after a back-off that doubles from
//! [`Policy::first_backoff`] up to [`Policy::max_backoff`] (with up to 50 %
//! jitter), [`Policy::attempts`] times at most; then the POST is given up,
//! counted and logged. At most [`Policy::max_pending`] POSTs are under way
//! at once (waiting included): beyond that a new one is refused at once
//! ([`Full`]) rather than queued without bound behind a dead endpoint.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Which HTTP answers count as delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Any 2xx.
    Success,
    /// Exactly 200 (the plugin-message callback, COMPAT §1.3).
    Only200,
}

/// How a [`Webhook`] retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Per attempt.
    pub timeout: Duration,
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub max_pending: usize,
    pub accept: Accept,
}

/// Too many POSTs of this webhook are under way: the new one was not
/// started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{pending} POSTs to the {name} are under way already (its endpoint is slow or down); this one is dropped"
)]
pub struct Full {
    pub name: &'static str,
    pub pending: usize,
}

/// One kind of outgoing POST (its name labels logs and metrics:
/// `gse_webhook_posts_total{webhook, outcome}`).
#[derive(Clone)]
pub struct Webhook {
    name: &'static str,
    client: reqwest::Client,
    policy: Policy,
    pending: Arc<Semaphore>,
}

impl Webhook {
    pub fn new(name: &'static str, policy: Policy) -> Self {
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .build()
            .expect("a plain reqwest client always builds");
        Webhook {
            name,
            client,
            policy,
            pending: Arc::new(Semaphore::new(policy.max_pending.max(1))),
        }
    }

    /// Starts POSTing `body` (JSON) to `url`; `done` hears whether it was
    /// delivered, once.
    pub fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        what: String,
        done: impl FnOnce(bool) + Send + 'static,
    ) -> Result<(), Full> {
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            metrics::counter!("gse_webhook_posts_total", "webhook" => self.name, "outcome" => "dropped").increment(1);
            return Err(Full {
                name: self.name,
                pending: self.policy.max_pending,
            });
        };
        let me = self.clone();
        let url = url.to_string();
        tokio::spawn(async move {
            let _permit = permit;
            let delivered = me.deliver(&url, body, &what).await;
            done(delivered);
        });
        Ok(())
    }

    async fn deliver(&self, url: &str, body: Vec<u8>, what: &str) -> bool {
        let policy = &self.policy;
        let mut backoff = policy.first_backoff;
        let mut last_error = String::new();
        for attempt in 1..=policy.attempts.max(1) {
            let sent = self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) if accepted(policy.accept, resp.status()) => {
                    metrics::counter!("gse_webhook_posts_total", "webhook" => self.name, "outcome" => "delivered").increment(1);
                    return true;
                }
                Ok(resp) => last_error = format!("HTTP {}", resp.status()),
                Err(e) => last_error = e.to_string(),
            }
            if attempt < policy.attempts {
                tracing::debug!(webhook = self.name, url, attempt, error = %last_error, "{what}: POST failed; retrying");
                let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
        }
        metrics::counter!("gse_webhook_posts_total", "webhook" => self.name, "outcome" => "failed")
            .increment(1);
        tracing::error!(webhook = self.name, url, attempts = policy.attempts, error = %last_error, "{what}: POST failed every attempt; given up");
        false
    }
}

fn accepted(accept: Accept, status: reqwest::StatusCode) -> bool {
    match accept {
        Accept::Success => status.is_success(),
        Accept::Only200 => status == reqwest::StatusCode::OK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP endpoint answering the statuses in `answers` in turn (the
    /// last one from then on), counting requests.
    async fn endpoint(answers: Vec<u16>) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let code = answers[n.min(answers.len() - 1)];
            async move { axum::http::StatusCode::from_u16(code).unwrap() }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/cb", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, hits)
    }

    fn policy(accept: Accept, attempts: u32) -> Policy {
        Policy {
            timeout: Duration::from_secs(5),
            attempts,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            max_pending: 2,
            accept,
        }
    }

    async fn outcome(hook: &Webhook, url: &str) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        hook.post(url, b"{}".to_vec(), "a test POST".into(), move |ok| {
            let _ = tx.send(ok);
        })
        .unwrap();
        rx.await.unwrap()
    }

    #[tokio::test]
    async fn failures_are_retried_until_one_is_accepted() {
        let (url, hits) = endpoint(vec![500, 503, 200]).await;
        assert!(outcome(&Webhook::new("test", policy(Accept::Only200, 5)), &url).await);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn only_200_refuses_other_successes_and_gives_up_after_the_attempts() {
        let (url, hits) = endpoint(vec![204]).await;
        assert!(!outcome(&Webhook::new("test", policy(Accept::Only200, 3)), &url).await);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        let (url, hits) = endpoint(vec![204]).await;
        assert!(outcome(&Webhook::new("test", policy(Accept::Success, 3)), &url).await);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn posts_beyond_the_pending_bound_are_refused_at_once() {
        // Nothing listens: each POST retries for a while.
        let hook = Webhook::new(
            "test",
            Policy {
                first_backoff: Duration::from_secs(5),
                ..policy(Accept::Only200, 3)
            },
        );
        let url = "http://127.0.0.1:9/cb";
        for _ in 0..2 {
            hook.post(url, b"{}".to_vec(), "a test POST".into(), |_| {})
                .unwrap();
        }
        let third = hook.post(url, b"{}".to_vec(), "a test POST".into(), |_| {});
        assert_eq!(
            third,
            Err(Full {
                name: "test",
                pending: 2
            })
        );
    }
}
