//! `versions.toml`: which of a versioned model's numbered directories are served.

use super::*;

/// The file of a versioned model's version policy, beside its numbered version directories.
pub const VERSIONS_FILE: &str = "versions.toml";

/// A versioned model's `versions.toml`: which of its numbered version directories are
/// served, and which one its unversioned paths answer with. Without the file: the highest
/// version alone.
///
/// ```toml
/// policy = "latest"   # "latest" (default), "all" or "specific"
/// latest = 2          # with "latest": how many of the highest versions
/// versions = [1, 3]   # with "specific": exactly these
/// default = 2         # what /v2/models/{m}/infer serves (default: the highest served)
/// ```
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    /// Which versions are served.
    #[serde(default)]
    pub policy: VersionPolicy,
    /// With `policy = "latest"`: how many of the highest versions (default 1).
    #[serde(default)]
    pub latest: Option<usize>,
    /// With `policy = "specific"`: the versions.
    #[serde(default)]
    pub versions: Vec<u64>,
    /// The version requests without one go to; default: the highest served.
    #[serde(default)]
    pub default: Option<u64>,
}

/// Which of a model's versions are served (as Triton and TF Serving have it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicy {
    /// The highest `latest` versions.
    #[default]
    Latest,
    /// Every version present.
    All,
    /// The versions listed.
    Specific,
}

impl Versions {
    /// Read `dir/versions.toml`, or the default policy if there is none.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(VERSIONS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("invalid {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Of the versions `present` (any order), those served, ascending, and the default.
    pub fn select(&self, present: &[u64]) -> anyhow::Result<(Vec<u64>, u64)> {
        let mut present = present.to_vec();
        present.sort_unstable();
        anyhow::ensure!(!present.is_empty(), "no version directories (1/, 2/, ...) with a {FILE_NAME}");
        anyhow::ensure!(
            self.latest.is_none() || self.policy == VersionPolicy::Latest,
            "`latest` goes with policy = \"latest\""
        );
        anyhow::ensure!(
            self.versions.is_empty() || self.policy == VersionPolicy::Specific,
            "`versions` goes with policy = \"specific\""
        );
        let served = match self.policy {
            VersionPolicy::Latest => {
                let n = self.latest.unwrap_or(1);
                anyhow::ensure!(n > 0, "`latest` must be > 0");
                present[present.len().saturating_sub(n)..].to_vec()
            }
            VersionPolicy::All => present,
            VersionPolicy::Specific => {
                anyhow::ensure!(!self.versions.is_empty(), "policy = \"specific\" needs `versions`");
                if let Some(missing) = self.versions.iter().find(|v| !present.contains(v)) {
                    anyhow::bail!(
                        "`versions` lists {missing}, which has no directory (present: {present:?})"
                    );
                }
                let mut served = self.versions.clone();
                served.sort_unstable();
                served.dedup();
                served
            }
        };
        let default = self.default.unwrap_or(*served.last().expect("at least one version"));
        anyhow::ensure!(
            served.contains(&default),
            "`default` is {default}, which is not served (served: {served:?})"
        );
        Ok((served, default))
    }
}
