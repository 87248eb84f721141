//! unpack: what a download becomes in the cache: an archive's member unpacked once, and the
//! view of hard links a model sees.

use super::*;

/// Unpack the entries of `archive` under `member` (all of it when empty) into `dest`, once:
/// an existing `dest` is complete by construction. Entries that would land outside `dest`
/// (`..`, absolute paths) and links are left out.
pub(super) fn unpack(archive: &Path, kind: Unpack, member: &Path, dest: &Path) -> anyhow::Result<()> {
    if dest.is_dir() {
        return Ok(());
    }
    let tmp = temporary(dest);
    std::fs::create_dir_all(&tmp)?;
    let unpacked = (|| -> anyhow::Result<()> {
        let file = std::fs::File::open(archive)?;
        match kind {
            Unpack::TarGz => {
                let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
                for entry in tar.entries()? {
                    let mut entry = entry?;
                    let kind = entry.header().entry_type();
                    if (kind.is_file() || kind.is_dir()) && entry.path()?.starts_with(member) {
                        // unpack_in refuses paths that leave `tmp`.
                        entry.unpack_in(&tmp)?;
                    }
                }
            }
            Unpack::Zip => {
                let mut zip = zip::ZipArchive::new(file)?;
                for i in 0..zip.len() {
                    let mut entry = zip.by_index(i)?;
                    let Some(name) = entry.enclosed_name().filter(|n| n.starts_with(member)) else {
                        continue;
                    };
                    let path = tmp.join(name);
                    if entry.is_dir() {
                        std::fs::create_dir_all(&path)?;
                    } else if entry.is_file() {
                        std::fs::create_dir_all(path.parent().expect("inside tmp"))?;
                        std::io::copy(&mut entry, &mut std::fs::File::create(&path)?)?;
                    }
                }
            }
            Unpack::None => unreachable!("only archives are unpacked"),
        }
        Ok(())
    })();
    settle(&tmp, dest, unpacked)
}

/// Rename a finished temporary directory into place; another process may have won the race,
/// which is as good.
pub(super) fn settle(tmp: &Path, dest: &Path, built: anyhow::Result<()>) -> anyhow::Result<()> {
    let result = built.and_then(|()| match std::fs::rename(tmp, dest) {
        Err(_) if dest.is_dir() => Ok(()),
        other => other.with_context(|| format!("cannot move {} into place", dest.display())),
    });
    if tmp.exists() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    result
}

/// The directory where a model sees its fetched files, each at its `path`: hard links into
/// the cache, shared by every model with the same fetch list.
pub(super) fn build_view(root: &Path, fetches: &[Fetch], sources: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let dest = root.join("views").join(key(&serde_json::to_string(fetches)?, sources)?);
    if dest.is_dir() {
        return Ok(dest);
    }
    let tmp = temporary(&dest);
    std::fs::create_dir_all(&tmp)?;
    let built = fetches.iter().zip(sources).try_for_each(|(fetch, source)| {
        link_tree(source, &tmp.join(fetch.path()))
            .with_context(|| format!("cannot place {} at '{}'", fetch.url, fetch.path().display()))
    });
    settle(&tmp, &dest, built)?;
    Ok(dest)
}

/// Hard-link `src` (a file, or a directory's files) at `dst`; copy where linking fails.
/// Symbolic links are left out: they could point a plugin anywhere on the host.
pub(super) fn link_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let meta = src.symlink_metadata()?;
    if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            link_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
    } else if meta.is_file() {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        anyhow::ensure!(!dst.exists(), "two fetches provide {}", dst.display());
        if std::fs::hard_link(src, dst).is_err() {
            std::fs::copy(src, dst)?;
        }
    } else {
        tracing::warn!(path = %src.display(), "left out of the model's files: a symbolic link");
    }
    Ok(())
}
