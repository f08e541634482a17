//! The data directory: SQLite's files and the development keys live there, so only the
//! gateway's own user may read it.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Creates `path` (and its parents) readable by its owner only, or takes the permissions
/// of group and others away from one that exists.
pub fn ensure_private(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("creating data dir {}", path.display()))?;
        return Ok(());
    }
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading data dir {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))
            .with_context(|| format!("making data dir {} private", path.display()))?;
        tracing::info!(
            data_dir = %path.display(),
            "the data directory was readable by others: now by its owner only"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_private_or_made_so() {
        let root = std::env::temp_dir().join(format!("vg-datadir-{}", uuid::Uuid::new_v4()));
        let made = root.join("a/data");
        ensure_private(&made).expect("created");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&made), 0o700);
        let open = root.join("open");
        std::fs::create_dir_all(&open).expect("created");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_private(&open).expect("tightened");
        assert_eq!(mode(&open), 0o700);
        let _ = std::fs::remove_dir_all(&root);
    }
}
