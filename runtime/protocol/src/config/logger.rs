//! `[logger]`: where a model's requests and responses are logged, KServe's way.

use super::*;

/// What a payload logger sends: requests, responses, or both (KServe's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    /// Requests and responses.
    All,
    /// Requests only.
    Request,
    /// Responses only.
    Response,
}

impl LogMode {
    /// Whether requests are logged.
    pub fn requests(self) -> bool {
        self != LogMode::Response
    }

    /// Whether responses are logged.
    pub fn responses(self) -> bool {
        self != LogMode::Request
    }
}

impl std::str::FromStr for LogMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(LogMode::All),
            "request" => Ok(LogMode::Request),
            "response" => Ok(LogMode::Response),
            _ => Err(format!("'{s}' is not a log mode: all, request or response")),
        }
    }
}

/// `[logger]`: this model's payload logging, over the server's `--payload-log-*` defaults.
/// Each inference request sampled sends CloudEvents (binary mode) to the sink: one for the
/// request, one for the response, sharing their `ce-id`.
///
/// ```toml
/// [logger]
/// url = "http://audit-sink.monitoring:8080/"   # default: --payload-log-url
/// mode = "all"                                 # or "request", "response"
/// sample_rate = 0.1                            # share of requests logged; 0 turns it off for this model
/// ```
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// The sink the events are POSTed to (http or https). Default: the server's
    /// `--payload-log-url`.
    pub url: Option<String>,
    /// What to log. Default: the server's `--payload-log-mode` (all).
    pub mode: Option<LogMode>,
    /// The share of requests logged, 0 to 1. Default: the server's
    /// `--payload-log-sample-rate` (1).
    pub sample_rate: Option<f64>,
}

impl Logger {
    /// The URL is http(s) and the rate between 0 and 1.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.url {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "`logger.url`: '{url}' is not an http:// or https:// URL"
            );
        }
        if let Some(rate) = self.sample_rate {
            anyhow::ensure!(
                (0.0..=1.0).contains(&rate),
                "`logger.sample_rate`: {rate} is not between 0 and 1"
            );
        }
        Ok(())
    }
}
