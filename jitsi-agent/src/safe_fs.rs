//! Files written and read by root in directories that containers' users can reach: no symlink
//! is followed, a file is created with its final mode and owner before it holds anything, and
//! it replaces the old one in a single rename (readers see the old or the new file).

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::{fs::MetadataExt, fs::OpenOptionsExt},
    },
    path::Path,
};

/// Opens `dir` as a directory without following a symlink at its last component.
pub fn open_dir(dir: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
}

fn cstr(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("`{name}` is not a file name")));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a file name"))
}

fn random_suffix() -> io::Result<String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes `bytes` as `dir/name`: a temporary file of a random name created with `O_EXCL |
/// O_NOFOLLOW` and `mode`, given `owner` (uid, gid) with `fchown`, written and `fsync`ed, then
/// renamed over `name` and the directory `fsync`ed. A symlink planted at `name` is replaced, not
/// followed.
pub fn write_replace(dir: &Path, name: &str, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    let d = open_dir(dir)?;
    let target = cstr(name)?;
    let tmp = cstr(&format!(".{name}.{}.tmp", random_suffix()?))?;
    // SAFETY: openat on a directory fd we own with a NUL-terminated name; the returned fd is
    // owned by the File below.
    let fd = unsafe {
        libc::openat(
            d.as_raw_fd(),
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid descriptor nobody else owns.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let written = (|| {
        // The umask may have narrowed `mode`: set it exactly, on the descriptor.
        // SAFETY: fchmod/fchown on a valid fd.
        if unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some((uid, gid)) = owner
            && unsafe { libc::fchown(f.as_raw_fd(), uid, gid) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        // SAFETY: renameat between two names in the same directory fd.
        if unsafe { libc::renameat(d.as_raw_fd(), tmp.as_ptr(), d.as_raw_fd(), target.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        d.sync_all()
    })();
    if written.is_err() {
        // SAFETY: unlinkat of our own temporary name in the directory fd.
        unsafe { libc::unlinkat(d.as_raw_fd(), tmp.as_ptr(), 0) };
    }
    written
}

/// Reads `path` if it is a regular file of at most `max` bytes, without following a symlink
/// and without blocking on a FIFO. `Ok(None)` when it does not exist.
pub fn read_capped(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "is a symlink: not followed"));
        }
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    if meta.size() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    let mut out = Vec::with_capacity(meta.size() as usize);
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(Some(out))
}

/// Makes sure `path` is a real directory (creating it if missing; a symlink or another kind of
/// file is an error) with exactly `mode` (not narrowed by the umask) and, when given, `owner`,
/// both set on a handle opened without following a symlink. Returns whether it was created.
pub fn ensure_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    let created = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "is a symlink: refusing to follow it"));
        }
        Ok(m) if !m.is_dir() => return Err(io::Error::new(io::ErrorKind::InvalidData, "is not a directory")),
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().mode(mode).create(path)?;
            true
        }
        Err(e) => return Err(e),
    };
    let d = open_dir(path)?;
    // SAFETY: fchown/fchmod on a directory fd we own.
    if let Some((uid, gid)) = owner
        && unsafe { libc::fchown(d.as_raw_fd(), uid, gid) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    if unsafe { libc::fchmod(d.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(created)
}

/// Refuses a directory that someone other than root could replace or redirect: `path` and
/// each of its ancestors must be a real directory owned by root, not writable by group or
/// others unless sticky (like `/tmp`, where only an entry's owner may rename it).
pub fn trusted_dir(path: &Path) -> io::Result<()> {
    for p in path.ancestors() {
        let m = std::fs::symlink_metadata(p)?;
        let why = if m.file_type().is_symlink() {
            "is a symlink"
        } else if !m.is_dir() {
            "is not a directory"
        } else if m.uid() != 0 {
            "is not owned by root"
        } else if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
            "is writable by a group or others"
        } else {
            continue;
        };
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} {why}: another user could redirect what root writes below it", p.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::{ffi::OsStrExt, fs::PermissionsExt};

    use super::*;

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("turn.key")).unwrap();
        write_replace(dir.path(), "turn.key", b"secret", 0o640, None).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "the link's target is untouched");
        let key = dir.path().join("turn.key");
        assert!(!std::fs::symlink_metadata(&key).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "secret");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file left");
        // A symlinked directory is not written through either.
        let elsewhere = tempfile::tempdir().unwrap();
        let link = dir.path().join("certs");
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
        assert!(write_replace(&link, "turn.crt", b"x", 0o644, None).is_err());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn reads_only_small_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        assert!(read_capped(&f, 10).unwrap().is_none());
        std::fs::write(&f, "0123456789").unwrap();
        assert_eq!(read_capped(&f, 10).unwrap().unwrap(), b"0123456789");
        assert!(read_capped(&f, 9).is_err(), "over the cap");
        let l = dir.path().join("l");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert!(read_capped(&l, 10).unwrap_err().to_string().contains("symlink"));
        let fifo = CString::new(dir.path().join("p").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(read_capped(&dir.path().join("p"), 10).unwrap_err().to_string().contains("regular"));
        assert!(ensure_dir(&l, 0o755, None).is_err(), "a symlink is not taken for a directory");
        assert!(ensure_dir(&dir.path().join("d"), 0o750, None).unwrap());
        assert!(!ensure_dir(&dir.path().join("d"), 0o750, None).unwrap());
        // The exact mode, whatever the umask, also on an existing directory.
        std::fs::set_permissions(dir.path().join("d"), std::fs::Permissions::from_mode(0o700)).unwrap();
        ensure_dir(&dir.path().join("d"), 0o750, None).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("d")).unwrap().permissions().mode() & 0o7777, 0o750);
    }
}
