//! Delivering simulated events to the service's webhook as Feishu would (signed, encrypted),
//! after waiting for the service to be ready, with errors that say what to do.

use crate::feishu::crypto::EncryptKey;
use anyhow::{Context, bail};
use rand::Rng;
use std::time::{Duration, Instant};

/// Signs and (with a key) encrypts one event the way Feishu does: returns the body and the
/// `X-Lark-*` headers to send with it.
pub fn feishu_delivery(
    key: Option<&EncryptKey>,
    event: &serde_json::Value,
) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let plain = event.to_string();
    let Some(key) = key else {
        return (plain.into_bytes(), Vec::new());
    };
    let body =
        serde_json::json!({ "encrypt": key.encrypt(plain.as_bytes(), rand::random()) }).to_string();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let nonce = rand::rng()
        .random_range(100_000_000u32..999_999_999)
        .to_string();
    let signature = key.signature(&timestamp, &nonce, body.as_bytes());
    let headers = vec![
        ("X-Lark-Request-Timestamp", timestamp),
        ("X-Lark-Request-Nonce", nonce),
        ("X-Lark-Signature", signature),
    ];
    (body.into_bytes(), headers)
}

/// Posts events to one webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    key: Option<std::sync::Arc<EncryptKey>>,
}

impl Webhook {
    pub fn new(url: String, key: Option<EncryptKey>) -> Self {
        Self {
            client: reqwest::Client::new(),
            url,
            key: key.map(std::sync::Arc::new),
        }
    }

    /// The service's base URL (scheme, host and port of the webhook URL).
    fn base(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(url) => url.origin().ascii_serialization(),
            Err(_) => self.url.clone(),
        }
    }

    /// Waits until the service's `/readyz` answers 200, saying so every few seconds; fails
    /// after `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let readyz = format!("{}/readyz", self.base());
        let started = Instant::now();
        let mut said = None::<Instant>;
        loop {
            let last = match self
                .client
                .get(&readyz)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("{} answers {}", readyz, r.status()),
                Err(e) if e.is_connect() => format!("nothing listens at {} yet", self.base()),
                Err(e) => format!("{readyz}: {e}"),
            };
            if started.elapsed() >= limit {
                bail!(
                    "the service was not ready within {} s ({last}); start it with `process-state serve`, \
                     or point simulate at it with --webhook-url",
                    limit.as_secs()
                );
            }
            if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                eprintln!("waiting for the service to be ready: {last}");
                said = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Delivers one event; an error says what the answer means.
    pub async fn send(&self, event: &serde_json::Value) -> anyhow::Result<()> {
        let (body, headers) = feishu_delivery(self.key.as_deref(), event);
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json; charset=utf-8");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await.with_context(|| {
            format!("POST {}: is `process-state serve` running there?", self.url)
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let hint = match status.as_u16() {
            401 | 403 => {
                "\nThe service refused the event's signature or Verification Token: simulate and serve \
                 probably have different FEISHU_ENCRYPT_KEY or FEISHU_VERIFICATION_TOKEN values. \
                 Export the same two values in both shells (or pass --encrypt-key and \
                 --verification-token), then run simulate again."
            }
            400 if self.key.is_none() => {
                "\nsimulate sent plaintext: if the service has an Encrypt Key, export the same \
                 FEISHU_ENCRYPT_KEY for simulate."
            }
            _ => "",
        };
        bail!("{} answered {status}: {}{hint}", self.url, text.trim())
    }
}
