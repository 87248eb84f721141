//! `route.toml`: a public name whose requests go to other models by weight, with a shadow.

use super::*;

/// The file that makes a directory of the repository a route instead of a model.
pub const ROUTE_FILE: &str = "route.toml";

/// A route's `route.toml`: a public model name whose requests go to other models (or
/// versions) by weight, optionally sticky by a request header, optionally copied to a shadow.
///
/// ```toml
/// sticky_header = "x-user-id"   # same value, same variant (default: random by weight)
/// [[variants]]
/// model = "magika"
/// weight = 90
/// [[variants]]
/// model = "magika-next"
/// version = "2"                 # default: the model's default version
/// weight = 10
/// [shadow]                      # gets a copy of every request; its answers are logged, never returned
/// model = "magika-canary"
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A request header whose value picks the variant (the same value, the same variant,
    /// on every replica); requests without it are split at random by weight.
    #[serde(default)]
    pub sticky_header: Option<String>,
    /// Where requests go, each with its share.
    pub variants: Vec<Variant>,
    /// A model that gets a copy of every request; its answers are measured and logged.
    #[serde(default)]
    pub shadow: Option<RouteTarget>,
}

/// One of a route's variants: a model (at a version) and its weight.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// The model requests go to.
    pub model: String,
    /// Its version; default: the model's default version.
    #[serde(default)]
    pub version: Option<String>,
    /// Its share of the requests, relative to the other variants' weights; default 1 (equal
    /// shares, and a route of one variant needs none).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// The model a route copies requests to.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTarget {
    /// The model's name.
    pub model: String,
    /// Its version; default: the model's default version.
    #[serde(default)]
    pub version: Option<String>,
}

/// `model` or `model/version`: how responses and metrics name a route's target.
pub fn target_label(model: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("{model}/{v}"),
        None => model.to_string(),
    }
}

impl RouteConfig {
    /// Read and check `dir/route.toml`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(ROUTE_FILE);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid {}", path.display()))
    }

    /// Parse and check the text of a `route.toml`.
    fn parse(text: &str) -> anyhow::Result<Self> {
        let route: Self = toml::from_str(text)?;
        anyhow::ensure!(!route.variants.is_empty(), "`variants`: a route needs one");
        anyhow::ensure!(route.variants.iter().all(|v| v.weight > 0), "every variant's `weight` must be > 0");
        Ok(route)
    }

    /// Which variant a request goes to, from a number spread evenly over `u64`.
    pub fn pick(&self, draw: u64) -> &Variant {
        let total: u64 = self.variants.iter().map(|v| u64::from(v.weight)).sum();
        let mut point = draw % total;
        for variant in &self.variants {
            if point < u64::from(variant.weight) {
                return variant;
            }
            point -= u64::from(variant.weight);
        }
        unreachable!("the point falls within the total weight")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_default_to_equal_shares_and_are_checked() {
        let route = RouteConfig::parse("[[variants]]\nmodel = \"a\"\n[[variants]]\nmodel = \"b\"\n").unwrap();
        let picked: Vec<&str> = (0..4).map(|draw| route.pick(draw).model.as_str()).collect();
        assert_eq!(picked, ["a", "b", "a", "b"]);
        let one = RouteConfig::parse("[[variants]]\nmodel = \"a\"\n[shadow]\nmodel = \"c\"\n").unwrap();
        assert_eq!((one.pick(7).model.as_str(), one.variants[0].weight), ("a", 1));
        let weighted =
            RouteConfig::parse("[[variants]]\nmodel = \"a\"\nweight = 3\n[[variants]]\nmodel = \"b\"\n")
                .unwrap();
        let picked: Vec<&str> = (0..4).map(|draw| weighted.pick(draw).model.as_str()).collect();
        assert_eq!(picked, ["a", "a", "a", "b"]);
        for (text, error) in [
            ("[[variants]]\nmodel = \"a\"\nweight = 0\n", "every variant's `weight` must be > 0"),
            ("variants = []\n", "a route needs one"),
            ("[[variants]]\nmodel = \"a\"\nweigth = 2\n", "unknown field `weigth`"),
        ] {
            let err = format!("{:#}", RouteConfig::parse(text).unwrap_err());
            assert!(err.contains(error), "{text}: {err}");
        }
    }
}
