//! `[load]`: when a model is brought into memory, and what it is charged against the
//! server's model memory budget.

use super::*;

/// `[load]`: when the model loads and what it counts against `--model-memory-mib`.
///
/// ```toml
/// [load]
/// policy = "on_demand"   # loaded at its first request, evicted when least recently used
/// memory_mib = 120       # charge this instead of the memory its load was measured to take
/// ```
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// `eager` or `on_demand`. Default: the server's `--load-policy` (`eager`).
    pub policy: Option<LoadPolicy>,
    /// What the model is charged against the server's model memory budget, in MiB, instead
    /// of the growth of the server's resident memory measured across its load.
    pub memory_mib: Option<u64>,
}

/// When a model is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadPolicy {
    /// At start-up, before the server reports ready; never evicted.
    Eager,
    /// At its first request (or a control `load`); evicted, least recently used first, when
    /// a load needs room under the model memory budget.
    OnDemand,
}

impl std::str::FromStr for LoadPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "eager" => Ok(Self::Eager),
            "on_demand" | "on-demand" => Ok(Self::OnDemand),
            other => Err(format!("unknown load policy '{other}': eager or on_demand")),
        }
    }
}

impl std::fmt::Display for LoadPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Eager => "eager",
            Self::OnDemand => "on_demand",
        })
    }
}
