//! Memory-mapped files: two processes map one file and share typed records in it.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use bytemuck::Pod;

use crate::{Result, segment::Mapping};

/// A file mapped into memory, shared with every process that maps it.
///
/// Records are read and written at byte offsets as plain-old-data values (atomically for
/// 1-, 2-, 4- and 8-byte types), and [`flush`](MappedFile::flush) writes them to disk. The
/// file stays where it is when the mapping is dropped: it is the user's.
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
    /// [`Error::Io`](crate::Error::Io) with kind `AlreadyExists` if something is there.
    pub fn create(path: impl AsRef<Path>, len: u64) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.set_len(len)?;
        Self::map(file, path)
    }

    /// Maps an existing file, at its current size.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if it cannot be opened for reading and writing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::map(OpenOptions::new().read(true).write(true).open(path)?, path)
    }

    fn map(file: File, path: &Path) -> Result<Self> {
        Ok(MappedFile {
            m: Mapping::new(file)?,
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
    /// [`Error::OutOfBounds`](crate::Error::OutOfBounds) or
    /// [`Error::Misaligned`](crate::Error::Misaligned).
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
    /// [`Error::OutOfBounds`](crate::Error::OutOfBounds) if the range does not fit.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.m.read(offset, buf)
    }

    /// Copies bytes in at `offset`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`](crate::Error::OutOfBounds) if the range does not fit.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.m.write(offset, data)
    }

    /// Writes the mapped pages to the file on disk (`msync`).
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the kernel reports a write error.
    pub fn flush(&self) -> Result<()> {
        self.m.flush()
    }
}
