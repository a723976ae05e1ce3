//! Memory-mapped files: two processes map one file and share typed records in it.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use bytemuck::Pod;

use crate::{Error, Result, sys::Mapping};

const FILE: &str = "mapped file";

/// A file mapped into memory, shared with every process that maps it.
///
/// Records are read and written at byte offsets as plain-old-data values (atomically for
/// 1-, 2-, 4- and 8-byte types), and [`flush`](MappedFile::flush) writes them to disk. The
/// file stays where it is when the mapping is dropped: it is the user's.
///
/// Create it with [`create`](MappedFile::create) (a new file) or [`open`](MappedFile::open)
/// (an existing one); a child process opens the same path (pass the path as a role
/// argument). A process that dies leaves its writes in the file: the kernel writes the
/// mapped pages back whether or not anyone calls `flush`.
///
/// ```
/// use ipckit_shmem::MappedFile;
///
/// let path = std::env::temp_dir().join(ipckit_core::unique_name("doc"));
/// let sensor = MappedFile::create(&path, 4096)?;
/// sensor.write_at(0, &21.5f64)?;
/// let monitor = MappedFile::open(&path)?;
/// assert_eq!(monitor.read_at::<f64>(0)?, 21.5);
/// sensor.flush()?;
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
#[derive(Debug)]
pub struct MappedFile {
    m: Mapping,
    path: PathBuf,
}

impl MappedFile {
    /// Creates a file of `len` zero bytes at `path` (mode 0600; it must not exist) and maps it.
    ///
    /// # Errors
    /// [`Error::Os`] (kind `AlreadyExists`) if something is there, or if the file cannot be
    /// sized or mapped.
    pub fn create(path: impl AsRef<Path>, len: u64) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::os("create", FILE, path.display(), e))?;
        file.set_len(len)
            .map_err(|e| Error::os("resize", FILE, path.display(), e))?;
        Self::map(file, path)
    }

    /// Maps an existing file, at its current size.
    ///
    /// # Errors
    /// [`Error::Os`] if it cannot be opened for reading and writing, or mapped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::os("open", FILE, path.display(), e))?;
        Self::map(file, path)
    }

    fn map(file: File, path: &Path) -> Result<Self> {
        Ok(MappedFile {
            m: Mapping::new(file, false).map_err(|e| Error::os("map", FILE, path.display(), e))?,
            path: path.to_owned(),
        })
    }

    /// The mapped file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.m.len()
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.m.len() == 0
    }

    /// Reads a record at `offset` (aligned for `T`).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or
    /// [`Error::Misaligned`].
    pub fn read_at<T: Pod>(&self, offset: usize) -> Result<T> {
        self.m.read_at(offset)
    }

    /// Writes a record at `offset` (aligned for `T`).
    ///
    /// # Errors
    /// As [`read_at`](MappedFile::read_at).
    pub fn write_at<T: Pod>(&self, offset: usize, value: &T) -> Result<()> {
        self.m.write_at(offset, value)
    }

    /// Copies bytes out at `offset`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range does not fit.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.m.read(offset, buf)
    }

    /// Copies bytes in at `offset`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range does not fit.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.m.write(offset, data)
    }

    /// Writes the mapped pages to the file on disk (`msync`).
    ///
    /// # Errors
    /// [`Error::Os`] if the kernel reports a write error.
    pub fn flush(&self) -> Result<()> {
        self.m
            .flush()
            .map_err(|e| Error::os("flush", FILE, self.path.display(), e))
    }
}
