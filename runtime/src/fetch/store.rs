//! store: object storage (S3, GCS, Azure) and HTTP(S) as one `ObjectStore`, and which of
//! its errors are worth another try.

use super::*;

/// Whether `url` names an object in a cloud store (S3, GCS, Azure, in any spelling
/// [`open`] takes): not a path, and not plain HTTP.
pub(crate) fn is_cloud(url: &str) -> bool {
    use ObjectStoreScheme as S;
    let scheme = url::Url::parse(url).ok().and_then(|u| S::parse(&u).ok()).map(|(scheme, _)| scheme);
    matches!(scheme, Some(S::AmazonS3 | S::GoogleCloudStorage | S::MicrosoftAzure))
}

/// The store that serves `url` and the object's location in it. Cloud credentials and
/// endpoints come from the usual environment variables (AWS_*, GOOGLE_*, AZURE_*).
pub(crate) fn open(url: &str, dir: &Path) -> anyhow::Result<(Box<dyn ObjectStore>, StorePath)> {
    use object_store::{ClientConfigKey, RetryConfig, aws, azure, gcp, http, local};
    // Whole-request timeouts would cut large models short; a stalled read is caught instead.
    const CLIENT: [(ClientConfigKey, &str); 3] = [
        (ClientConfigKey::Timeout, "7days"),
        (ClientConfigKey::ConnectTimeout, "10s"),
        (ClientConfigKey::ReadTimeout, "60s"), // STALL_TIMEOUT
    ];
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        // Not a URL: a path, relative to the model directory.
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            let path = std::path::absolute(dir.join(url))?;
            url::Url::from_file_path(&path).map_err(|()| anyhow::anyhow!("bad path {}", path.display()))?
        }
        Err(e) => anyhow::bail!("invalid URL '{url}': {e}"),
    };
    let (scheme, location) = ObjectStoreScheme::parse(&parsed).with_context(|| {
        format!("unsupported URL '{url}': use https://, http://, s3://, gs://, az://, file:// or a path")
    })?;
    let retry = RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(60), ..Default::default() };
    // Set key by key, so what the environment configures (AWS_ALLOW_HTTP...) stays.
    macro_rules! configured {
        ($builder:expr, $key:path) => {
            CLIENT
                .iter()
                .fold($builder.with_url(url).with_retry(retry), |b, (k, v)| b.with_config($key(*k), *v))
        };
    }
    let store: Box<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => Box::new(local::LocalFileSystem::new()),
        ObjectStoreScheme::AmazonS3 => {
            Box::new(configured!(aws::AmazonS3Builder::from_env(), aws::AmazonS3ConfigKey::Client).build()?)
        }
        ObjectStoreScheme::GoogleCloudStorage => Box::new(
            configured!(gcp::GoogleCloudStorageBuilder::from_env(), gcp::GoogleConfigKey::Client).build()?,
        ),
        ObjectStoreScheme::MicrosoftAzure => Box::new(
            configured!(azure::MicrosoftAzureBuilder::from_env(), azure::AzureConfigKey::Client).build()?,
        ),
        ObjectStoreScheme::Http => {
            let base = &parsed[..url::Position::BeforePath];
            let builder =
                CLIENT.iter().fold(http::HttpBuilder::new().with_url(base).with_retry(retry), |b, (k, v)| {
                    b.with_config(*k, *v)
                });
            Box::new(builder.with_config(ClientConfigKey::AllowHttp, "true").build()?)
        }
        other => anyhow::bail!("unsupported URL '{url}' ({other:?})"),
    };
    Ok((store, location))
}

/// Sort an object store's error: a missing object or a refused credential stays so.
pub(super) fn classify(e: object_store::Error) -> Failure {
    use object_store::Error as E;
    let permanent = matches!(
        e,
        E::NotFound { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::UnknownConfigurationKey { .. }
    );
    // The store's messages repeat their causes; say each part once.
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let part = c.to_string();
        if !message.contains(&part) {
            message = format!("{message}: {part}");
        }
        cause = c.source();
    }
    let e = anyhow::anyhow!(message);
    if permanent { Failure::Permanent(e) } else { Failure::Transient(e) }
}

/// Local I/O errors writing `path` (a full or read-only cache) do not pass by trying again.
pub(super) fn permanent(path: &Path) -> impl FnOnce(std::io::Error) -> Failure + '_ {
    move |e| {
        Failure::Permanent(
            anyhow::Error::from(e).context(format!("cannot write the cache: {}", path.display())),
        )
    }
}
