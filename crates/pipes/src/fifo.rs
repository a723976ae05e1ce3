//! Named pipes (FIFOs).

use std::{
    fs::{File, OpenOptions},
    io,
    os::{fd::OwnedFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::Duration,
};

use nix::{
    errno::Errno,
    fcntl::OFlag,
    sys::stat::{Mode, SFlag, fstat},
    unistd::mkfifo,
};

use crate::{Deadline, Error, Reader, Result, Writer};

/// A named pipe in the file system, removed when this owner is dropped.
///
/// ```
/// use ipckit_pipes::{Fifo, RecvBytes, SendBytes};
/// use std::time::Duration;
///
/// let fifo = Fifo::create()?;
/// let path = fifo.path().to_owned();
/// let writer = std::thread::spawn(move || -> ipckit_pipes::Result<()> {
///     ipckit_pipes::open_write_timeout(&path, Duration::from_secs(5))?.send_bytes(b"hi")
/// });
/// let mut reader = ipckit_pipes::open_read_timeout(fifo.path(), Duration::from_secs(5))?;
/// assert_eq!(reader.recv_bytes()?, b"hi");
/// writer.join().unwrap()?;
/// # Ok::<(), ipckit_pipes::Error>(())
/// ```
#[derive(Debug)]
pub struct Fifo {
    path: PathBuf,
}

impl Fifo {
    /// Creates a FIFO with a fresh unique name in the temporary directory, mode 0600. (A
    /// FIFO always has a path; `create` picks a fresh one, [`create_at`](Fifo::create_at)
    /// takes yours.)
    ///
    /// # Errors
    /// [`Error::Os`] if it cannot be created.
    pub fn create() -> Result<Fifo> {
        Self::create_at(ipckit_core::temp_path("fifo"))
    }

    /// Creates a FIFO at `path`, mode 0600.
    ///
    /// # Errors
    /// [`Error::Os`] naming the path, with an `AlreadyExists` source if something is there
    /// already.
    pub fn create_at(path: impl Into<PathBuf>) -> Result<Fifo> {
        let path = path.into();
        mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR)
            .map_err(|e| Error::os("create", "FIFO", path.display(), e))?;
        tracing::debug!(path = %path.display(), "fifo created");
        Ok(Fifo { path })
    }

    /// Where the FIFO is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(path = %self.path.display(), "fifo removed"),
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "fifo not removed"),
        }
    }
}

/// The opened file, if it is a FIFO.
fn checked(file: io::Result<File>, path: &Path) -> Result<OwnedFd> {
    let file = file.map_err(|e| Error::os("open", "FIFO", path.display(), e))?;
    let st = fstat(&file)?;
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if kind != SFlag::S_IFIFO {
        return Err(Error::NotA {
            expected: "a FIFO",
            name: path.display().to_string(),
            reason: format!("it is a {}", file_kind(kind)),
        });
    }
    tracing::debug!(path = %path.display(), "fifo connected");
    Ok(file.into())
}

fn file_kind(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFREG => "regular file",
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        SFlag::S_IFLNK => "symbolic link",
        _ => "file of another kind",
    }
}

/// Opens a FIFO for reading, waiting (as the OS does) until a writer opens it.
///
/// # Errors
/// [`Error::Os`] naming the path if it cannot be opened (it does not exist, say);
/// [`Error::NotA`] if it is not a FIFO.
pub fn open_read(path: impl AsRef<Path>) -> Result<Reader> {
    let path = path.as_ref();
    Reader::from_fd(checked(File::open(path), path)?)
}

/// Opens a FIFO for writing, waiting (as the OS does) until a reader opens it.
///
/// # Errors
/// As [`open_read`].
pub fn open_write(path: impl AsRef<Path>) -> Result<Writer> {
    let path = path.as_ref();
    Writer::from_fd(checked(OpenOptions::new().write(true).open(path), path)?)
}

/// Opens a FIFO for writing, waiting at most `timeout` for a reader.
///
/// # Errors
/// [`Error::Timeout`] if no reader opened it in time; otherwise as [`open_read`].
pub fn open_write_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Writer> {
    let path = path.as_ref();
    let deadline = Deadline::after(timeout);
    let mut pause = Duration::from_millis(1);
    loop {
        match OpenOptions::new()
            .write(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(path)
        {
            // The writer switches itself back to blocking writes on first use.
            Ok(f) => return Writer::from_fd(checked(Ok(f), path)?),
            Err(e) if e.raw_os_error() == Some(Errno::ENXIO as i32) => {}
            Err(e) => return Err(Error::os("open", "FIFO", path.display(), e)),
        }
        let left = deadline.remaining().unwrap_or(pause);
        if left.is_zero() {
            return Err(Error::Timeout);
        }
        thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Opens a FIFO for reading, waiting at most `timeout` for a writer.
///
/// # Errors
/// [`Error::Timeout`] if no writer opened it in time; otherwise as [`open_read`].
pub fn open_read_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Reader> {
    let path = path.as_ref().to_owned();
    // Linux cannot wait for a FIFO's writer with a timeout, so a helper thread makes the
    // blocking open and, on timeout, is released by a writer we open ourselves.
    let (tx, rx) = mpsc::channel();
    let opener = {
        let path = path.clone();
        thread::Builder::new()
            .name("ipckit-fifo-open".into())
            .spawn(move || {
                let _ = tx.send(File::open(&path));
            })?
    };
    match rx.recv_timeout(timeout) {
        Ok(file) => {
            let _ = opener.join();
            Reader::from_fd(checked(file, &path)?)
        }
        Err(_) => {
            loop {
                // This open succeeds once the helper is blocked in its own open, which then
                // returns; the helper's descriptor is dropped unused.
                let _release = OpenOptions::new()
                    .write(true)
                    .custom_flags(OFlag::O_NONBLOCK.bits())
                    .open(&path);
                match rx.recv_timeout(Duration::from_millis(5)) {
                    Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
            let _ = opener.join();
            Err(Error::Timeout)
        }
    }
}
