//! The API's unix socket: taken before anything is attached, created private, never put in
//! place of anything but a stale socket, and removed at exit only while it is still ours.
use std::{
    fs,
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, MetadataExt},
        net::UnixListener,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// The socket file this agent created (device and inode), removed on drop if still there.
pub struct OwnSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for OwnSocket {
    fn drop(&mut self) {
        // Another agent may have replaced the file since (ours was removed by hand): its
        // socket is not ours to remove.
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// What is at the socket path now.
enum Existing {
    Nothing,
    /// A socket nobody accepts on: left by an agent that was killed.
    Stale(fs::Metadata),
}

fn kind(m: &fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else {
        "special file"
    }
}

/// Whether a process accepts connections on the socket at `path`. A full backlog (a busy or
/// attacked agent) answers EAGAIN to a non-blocking connect: that is alive too.
fn in_use(path: &Path) -> Result<bool> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(path)?) {
        Ok(()) | Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINPROGRESS) => Ok(true),
        Err(nix::errno::Errno::ECONNREFUSED) => Ok(false),
        Err(e) => bail!("cannot tell whether {} is in use ({e}): refusing to replace it", path.display()),
    }
}

fn inspect(path: &Path) -> Result<Existing> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
        if fs::metadata(path).is_err() {
            bail!(
                "--socket {} is a dangling symlink (to {target}): remove it or choose another path",
                path.display()
            );
        }
        bail!("--socket {} is a symlink (to {target}): refusing to replace it", path.display());
    }
    if !meta.file_type().is_socket() {
        bail!(
            "--socket {} exists and is not a socket (a {}): refusing to replace it",
            path.display(),
            kind(&meta)
        );
    }
    if in_use(path)? {
        bail!("another podtrace agent is serving {}", path.display());
    }
    Ok(Existing::Stale(meta))
}

/// Creates the socket's directory if missing (0700: podtrace created it). An existing
/// directory is left exactly as it is.
fn prepare_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            // Others could replace the socket in a directory they may write to (without the
            // sticky bit): say so, but it is the operator's directory to fix.
            if m.mode() & 0o002 != 0 && m.mode() & 0o1000 == 0 {
                log::warn!(
                    "{} is writable by every user: others could replace the API socket",
                    dir.display()
                );
            }
            Ok(())
        }
        Ok(_) if fs::metadata(dir).is_ok_and(|m| m.is_dir()) => Ok(()),
        Ok(m) => bail!("{} is not a directory (a {})", dir.display(), kind(&m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", dir.display())),
    }
}

/// Binds the API socket at `path`, mode 0600 from the start. Fails, with nothing changed, when
/// another agent serves it or when something other than a stale socket is there.
pub fn bind(path: &Path) -> Result<(UnixListener, OwnSocket)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_dir(dir)?;
    }
    if let Existing::Stale(old) = inspect(path)? {
        // Still the same stale socket (not something put there in between)?
        if fs::symlink_metadata(path).is_ok_and(|m| m.ino() == old.ino() && m.dev() == old.dev()) {
            fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
            log::info!("replaced the stale socket {} (its agent was killed)", path.display());
        }
    }
    // The socket file gets its mode when it is bound: a umask of 0177 makes it 0600 at once,
    // with no moment where others may connect. Nothing else creates files this early.
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old_umask);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    let meta = fs::symlink_metadata(path)?;
    Ok((listener, OwnSocket { path: path.to_path_buf(), dev: meta.dev(), ino: meta.ino() }))
}
