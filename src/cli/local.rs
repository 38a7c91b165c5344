//! The command line's client of the local sidecar's API: address and token from the
//! config, a JSON error answer turned into a failure with its message.
//!
//! Owns: that one HTTP call. Does not own: what the commands do with the answers.

use autobalancer::config::Config;

use super::{Fail, usage};

/// Talks to the local sidecar's API (address and token from the config).
pub struct Local {
    base: String,
    token: Option<String>,
}

impl Local {
    pub fn new(config: &Config) -> Result<Local, Fail> {
        let token = match &config.api.token_file {
            Some(p) => Some(autobalancer::config::read_secret(p, "api.token-file").map_err(usage)?),
            None => None,
        };
        Ok(Local { base: format!("http://{}", config.api.listen), token })
    }

    /// Calls `method path`; a JSON error answer becomes a failure with its message.
    pub fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<serde_json::Value, Fail> {
        let mut req =
            ureq::request(method, &format!("{}{path}", self.base)).timeout(std::time::Duration::from_secs(3600));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match resp {
            Ok(r) => r.into_json().map_err(|e| Fail(1, anyhow::anyhow!("{method} {path}: bad answer: {e}"))),
            Err(ureq::Error::Status(code, r)) => {
                let v: serde_json::Value = r.into_json().unwrap_or_default();
                let msg = v["error"]["message"].as_str().unwrap_or("no message").to_string();
                let c = v["error"]["code"].as_str().unwrap_or("error").to_string();
                Err(Fail(1, anyhow::anyhow!("{method} {path}: {code} {c}: {msg}")))
            }
            Err(e) => Err(Fail(
                1,
                anyhow::anyhow!("cannot reach the local sidecar at {}: {e} (is `autobalancer run` up?)", self.base),
            )),
        }
    }
}
