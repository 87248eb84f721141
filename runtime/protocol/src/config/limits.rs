//! `[limits]`: how much input one request may bring to the model.

use super::*;

/// `[limits]`: how much input one request may bring, checked as the request is decoded,
/// before the plugin sees it (413 past either, naming the input and the limit).
///
/// ```toml
/// [limits]
/// max_bytes_element_kib = 1024   # one BYTES element (a sentence, a file)
/// max_input_kib = 8192           # all of a request's input data together
/// ```
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest BYTES element, in KiB. Default: the server's `--max-bytes-element-kib`
    /// (16384: 16 MiB).
    pub max_bytes_element_kib: Option<u64>,
    /// Most input data in one request, all inputs together (tensor bytes as the plugin gets
    /// them), in KiB. Default: no limit but the body's (`--max-body-mib`).
    pub max_input_kib: Option<u64>,
}

/// The server's default for `max_bytes_element_kib` (16 MiB): files and documents fit,
/// what no plugin should be handed in one piece does not.
pub const DEFAULT_MAX_BYTES_ELEMENT_KIB: u64 = 16 << 10;

/// The limits one request's inputs are checked against, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest BYTES element.
    pub max_element: usize,
    /// Most input data, all inputs together.
    pub max_total: usize,
}

impl InputLimits {
    /// No limit (warm-up requests, which the model's own config brings).
    pub const NONE: Self = Self { max_element: usize::MAX, max_total: usize::MAX };
}

impl ModelConfig {
    /// The limits for this model's requests: its `[limits]`, else `default_element_bytes`
    /// for BYTES elements (the server's setting) and no limit on the total.
    pub fn input_limits(&self, default_element_bytes: usize) -> InputLimits {
        let kib = |v: u64| usize::try_from(v.saturating_mul(1024)).unwrap_or(usize::MAX);
        InputLimits {
            max_element: self.limits.max_bytes_element_kib.map_or(default_element_bytes, kib),
            max_total: self.limits.max_input_kib.map_or(usize::MAX, kib),
        }
    }
}
