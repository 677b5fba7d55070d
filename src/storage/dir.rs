//! Preparing the queue directory before recovery reads it, in an order that
//! leaves nothing behind when the answer is no and nothing undurable when it is
//! yes:
//! Depends on `error` and `storage::vfs`.
//!
//! 1. find which components of the path are missing (nothing is created yet);
//! 2. refuse a network filesystem, checked on the directory if it exists, else
//!    on its nearest existing ancestor (where it would be created);
//! 3. create the missing components and fsync each new component's parent,
//!    top-down, so the new directory's entry survives a crash;
//! 4. take the exclusive lock ([`Error::Locked`] when someone holds it).
//!
//! A directory that already exists also gets its parent fsynced (best effort:
//! a parent we may not open is not an error), so that a directory created by an
//! earlier run that died before its own fsync is made durable now, before any
//! mail is acknowledged in it.

use crate::error::{Error, Result};
use crate::storage::vfs::Vfs;
use std::any::Any;
use std::path::{Path, PathBuf};

/// Checks, creates (durably) and locks the queue directory `dir`; the returned
/// guard holds the lock until dropped.
pub(crate) fn prepare(
    vfs: &dyn Vfs,
    dir: &Path,
    allow_network_fs: bool,
) -> Result<Box<dyn Any + Send + Sync>> {
    let missing = missing_components(vfs, dir)?;
    if !allow_network_fs {
        let existing = match missing.first() {
            Some(top) => parent_of(top),
            None => dir.to_path_buf(),
        };
        if let Some(fs) = vfs
            .network_fs(&existing)
            .map_err(|e| Error::io("statfs", &existing, e))?
        {
            return Err(Error::NetworkFilesystem {
                path: dir.to_path_buf(),
                fs,
            });
        }
    }
    if missing.is_empty() {
        let _ = vfs.sync_dir(&parent_of(dir));
    } else {
        vfs.create_dir_all(dir)
            .map_err(|e| Error::io("create queue directory", dir, e))?;
        for component in &missing {
            let parent = parent_of(component);
            vfs.sync_dir(&parent)
                .map_err(|e| Error::io("sync new directory's parent", &parent, e))?;
        }
    }
    vfs.lock_dir(dir)
        .map_err(|e| Error::io("lock queue directory", dir, e))?
        .ok_or_else(|| Error::Locked(dir.to_path_buf()))
}

/// The components of `dir` that do not exist yet, outermost first (empty when
/// `dir` exists).
fn missing_components(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = dir.to_path_buf();
    while !vfs
        .dir_exists(&cur)
        .map_err(|e| Error::io("stat", &cur, e))?
    {
        let parent = parent_of(&cur);
        missing.push(cur);
        if missing.last() == Some(&parent) {
            // The root (or `.`) itself is missing: nothing further up to check.
            break;
        }
        cur = parent;
    }
    missing.reverse();
    Ok(missing)
}

/// The directory holding `p`: `.` for a relative name, `p` itself for the root.
fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(parent) if parent.as_os_str().is_empty() => PathBuf::from("."),
        Some(parent) => parent.to_path_buf(),
        None => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::simfs::SimFs;

    #[test]
    fn parent_of_relative_absolute_and_root() {
        assert_eq!(parent_of(Path::new("/a/q")), Path::new("/a"));
        assert_eq!(parent_of(Path::new("q")), Path::new("."));
        assert_eq!(parent_of(Path::new("/")), Path::new("/"));
    }

    #[test]
    fn missing_components_are_listed_outermost_first() {
        let fs = SimFs::new();
        fs.put(Path::new("/a/f"), b"x".to_vec());
        assert_eq!(
            missing_components(&fs, Path::new("/a/b/c")).unwrap(),
            vec![PathBuf::from("/a/b"), PathBuf::from("/a/b/c")]
        );
        assert!(missing_components(&fs, Path::new("/a")).unwrap().is_empty());
    }
}
