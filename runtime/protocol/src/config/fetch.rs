//! `[[fetch]]`: files a model fetches at start-up, pinned by digest.

use super::*;

/// `[[fetch]]`: a file fetched at start-up, pinned by its digest, and where the model sees it.
///
/// ```toml
/// [[fetch]]
/// url = "s3://models/magika/model.onnx"      # or https://, gs://, az://, file:///, a path
/// sha256 = "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c"
/// path = "model.onnx"                         # default: the URL's file name
///
/// [[fetch]]
/// url = "https://example.com/magika-data.tar.gz"
/// sha256 = "..."                              # of the archive
/// path = "data"                               # unpacked here (default: the model directory)
/// member = "magika/config"                    # only this directory (or file) of the archive
/// ```
///
/// A path a fetch provides is read from the cache instead of the model directory; other
/// paths still come from the model directory.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fetch {
    /// Where from: `https://` or `http://`, `s3://bucket/key` (AWS_* variables configure the
    /// endpoint and credentials), `gs://`, `az://` / `abfs://`, `file:///abs/path`, or a path
    /// relative to the model directory.
    pub url: String,
    /// SHA-256 of the bytes the URL serves (of the archive itself, for an archive), in hex.
    pub sha256: String,
    /// Where the model sees it, relative to its directory. Default: the URL's file name, or
    /// for an archive the model directory itself.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Unpack an archive: `tar.gz` or `zip` (a Python wheel is a zip), or `none` to keep it
    /// whole. Default: from the URL's ending (`.tar.gz`, `.tgz`, `.zip`, `.whl`), else `none`.
    #[serde(default)]
    pub unpack: Option<Unpack>,
    /// With an archive: take only this file or directory of it.
    #[serde(default)]
    pub member: Option<PathBuf>,
}

/// How a fetched file is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
pub enum Unpack {
    /// Kept as it is.
    #[serde(rename = "none")]
    None,
    /// A gzip-compressed tar archive.
    #[serde(rename = "tar.gz")]
    TarGz,
    /// A zip archive (also a Python wheel).
    #[serde(rename = "zip")]
    Zip,
}

impl Fetch {
    /// How to unpack what the URL serves: as configured, else from the URL's ending.
    pub fn unpack(&self) -> Unpack {
        let url = self.url_path().to_ascii_lowercase();
        self.unpack.unwrap_or(if url.ends_with(".tar.gz") || url.ends_with(".tgz") {
            Unpack::TarGz
        } else if url.ends_with(".zip") || url.ends_with(".whl") {
            Unpack::Zip
        } else {
            Unpack::None
        })
    }

    /// Where the model sees it, relative to its directory (empty: the directory itself).
    pub fn path(&self) -> PathBuf {
        match (&self.path, self.unpack()) {
            (Some(path), _) => path.clone(),
            (None, Unpack::None) => PathBuf::from(self.url_path().rsplit('/').next().unwrap_or_default()),
            (None, _) => PathBuf::new(),
        }
    }

    /// The URL without its query and fragment (a signed URL's `?X-Amz-...`).
    fn url_path(&self) -> &str {
        self.url.split(['?', '#']).next().unwrap_or_default()
    }

    /// The entry is well-formed: a sha256, `member` only out of an archive, and `path` and
    /// `member` relative, inside the model directory.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.sha256.len() == 64 && self.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
            "`sha256` must be 64 hex digits (`sha256sum FILE` prints it), not '{}'",
            self.sha256
        );
        let unpacked = self.unpack() != Unpack::None;
        anyhow::ensure!(
            unpacked || self.member.is_none(),
            "`member` needs an archive: the URL ends in none of .tar.gz, .tgz, .zip, .whl; set `unpack`"
        );
        let path = self.path();
        anyhow::ensure!(
            unpacked || !path.as_os_str().is_empty(),
            "`path`: give the file name the model sees (the URL has none)"
        );
        for (field, p) in [("path", Some(&path)), ("member", self.member.as_ref())] {
            let Some(p) = p else { continue };
            anyhow::ensure!(
                p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir)),
                "`{field}` must be a relative path inside the model directory, without `..`: '{}'",
                p.display()
            );
        }
        Ok(())
    }
}
