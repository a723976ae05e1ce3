//! Shared-memory segments: named (POSIX `shm_open`) or anonymous (`memfd_create`).

use std::{fs::File, os::fd::OwnedFd, path::Path};

use ipckit_core::{Handle, Handoff};
use memmap2::MmapRaw;
use nix::{
    fcntl::OFlag,
    sys::{
        memfd::{MFdFlags, memfd_create},
        mman::{shm_open, shm_unlink},
        stat::Mode,
    },
};

use crate::{Error, Result, sys};

/// Where POSIX shared memory lives on Linux.
const SHM_DIR: &str = "/dev/shm";

/// A block of memory shared between processes.
///
/// A *named* segment lives in `/dev/shm` under its name until its owner (the process that
/// created it) drops it; other processes [`open`](Segment::open) it by name, Python's
/// `multiprocessing.shared_memory.SharedMemory(name=...)` included. An *anonymous* segment
/// has no name and reaches a child process as an inherited descriptor
/// ([`ipckit_core::Command::handle`]). Either is created mode 0600, with the exact size asked
/// for, zero-filled.
///
/// The bytes are reached through copies ([`read`](Segment::read),
/// [`write`](Segment::write)) made of atomic accesses, or through the typed objects of this
/// crate, never as a `&[u8]` another process could change underneath.
#[derive(Debug)]
pub struct Segment {
    m: Mapping,
    name: Option<String>,
    owner: bool,
}

/// A shared mapping of a file (a memfd, a POSIX shared-memory object, a regular file), with
/// bounds-checked copies made of atomic accesses.
#[derive(Debug)]
pub(crate) struct Mapping {
    map: MmapRaw,
    pub(crate) file: File,
}

fn shm_path(name: &str) -> Result<String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty() || bare.len() > 250 || bare.contains('/') {
        return Err(Error::InvalidName(name.to_string()));
    }
    Ok(format!("/{bare}"))
}

impl Segment {
    /// An anonymous segment of `len` bytes (a memfd).
    ///
    /// # Errors
    /// [`Error::Io`] if the system refuses the memory.
    pub fn create(len: usize) -> Result<Segment> {
        let fd = memfd_create("ipckit-segment", MFdFlags::MFD_CLOEXEC)?;
        Self::map_new(fd, len, None)
    }

    /// A named segment of `len` bytes, with a fresh unique name.
    ///
    /// # Errors
    /// [`Error::Io`] if the system refuses it.
    pub fn create_named(len: usize) -> Result<Segment> {
        Self::create_with_name(&ipckit_core::unique_name("shm"), len)
    }

    /// A named segment of `len` bytes called `name` (with or without the leading `/`).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a name POSIX refuses; [`Error::Io`] with kind
    /// `AlreadyExists` if the name is taken.
    pub fn create_with_name(name: &str, len: usize) -> Result<Segment> {
        let path = shm_path(name)?;
        let fd = shm_open(
            path.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )?;
        let seg = Self::map_new(fd, len, Some(path[1..].to_string()));
        if seg.is_err() {
            let _ = shm_unlink(path.as_str());
        }
        seg
    }

    fn map_new(fd: OwnedFd, len: usize, name: Option<String>) -> Result<Segment> {
        let file = File::from(fd);
        file.set_len(len as u64)?;
        if let Some(n) = &name {
            tracing::debug!(name = %n, len, "segment created");
        }
        Ok(Segment {
            m: Mapping::new(file)?,
            name,
            owner: true,
        })
    }

    /// Opens the named segment `name` that another process created; its size is the size
    /// it was created with.
    ///
    /// # Errors
    /// [`Error::Io`] with kind `NotFound` if there is no such segment.
    pub fn open(name: &str) -> Result<Segment> {
        let path = shm_path(name)?;
        let fd = shm_open(
            path.as_str(),
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let seg = Self::map_existing(fd, Some(path[1..].to_string()))?;
        tracing::debug!(name = %&path[1..], len = seg.len(), "segment opened");
        Ok(seg)
    }

    fn map_existing(fd: OwnedFd, name: Option<String>) -> Result<Segment> {
        Ok(Segment {
            m: Mapping::new(File::from(fd))?,
            name,
            owner: false,
        })
    }

    /// Another handle on the same memory, which does not own it (it does not remove the
    /// name when dropped). Hand this one to a child process.
    ///
    /// # Errors
    /// [`Error::Io`] if the descriptor cannot be duplicated or mapped.
    pub fn try_clone(&self) -> Result<Segment> {
        Self::map_existing(OwnedFd::from(self.m.file.try_clone()?), self.name.clone())
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.m.len()
    }

    /// Whether the segment has no bytes.
    pub fn is_empty(&self) -> bool {
        self.m.len() == 0
    }

    /// The name, for a named segment (without the leading `/`).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether this handle removes the name when dropped.
    pub fn is_owner(&self) -> bool {
        self.owner
    }

    /// The start of the mapping in this process. Any access through it must allow for other
    /// processes accessing the same bytes at the same time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.m.as_ptr()
    }

    /// Copies `buf.len()` bytes at `offset` out of the segment.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range does not fit.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.m.read(offset, buf)
    }

    /// Copies `data` into the segment at `offset`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range does not fit.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.m.write(offset, data)
    }

    /// Reads a plain-old-data value at `offset` (aligned for `T`); values of 1, 2, 4 or 8
    /// bytes are read atomically.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub fn read_at<T: bytemuck::Pod>(&self, offset: usize) -> Result<T> {
        self.m.read_at(offset)
    }

    /// Writes a plain-old-data value at `offset` (aligned for `T`); values of 1, 2, 4 or 8
    /// bytes are written atomically.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub fn write_at<T: bytemuck::Pod>(&self, offset: usize, value: &T) -> Result<()> {
        self.m.write_at(offset, value)
    }
}

impl Mapping {
    pub(crate) fn new(file: File) -> Result<Self> {
        Ok(Mapping {
            map: MmapRaw::map_raw(&file)?,
            file,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub(crate) fn flush(&self) -> Result<()> {
        Ok(self.map.flush()?)
    }

    fn range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            end => Err(Error::OutOfBounds {
                offset,
                end: end.unwrap_or(usize::MAX),
                len: self.len(),
            }),
        }
    }

    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.range(offset, buf.len())?;
        // SAFETY: the range was checked to lie within the mapping, which lives as long as `self`.
        unsafe { sys::copy_in(buf, self.as_ptr().add(offset)) };
        Ok(())
    }

    pub(crate) fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.range(offset, data.len())?;
        // SAFETY: the range was checked to lie within the mapping, which lives as long as `self`.
        unsafe { sys::copy_out(self.as_ptr().add(offset), data) };
        Ok(())
    }

    pub(crate) fn read_at<T: bytemuck::Pod>(&self, offset: usize) -> Result<T> {
        let p = self.typed_ptr::<T>(offset)?;
        // SAFETY: `typed_ptr` checked bounds and alignment.
        Ok(unsafe { sys::read_pod(p) })
    }

    pub(crate) fn write_at<T: bytemuck::Pod>(&self, offset: usize, value: &T) -> Result<()> {
        let p = self.typed_ptr::<T>(offset)?;
        // SAFETY: `typed_ptr` checked bounds and alignment.
        unsafe { sys::write_pod(p, value) };
        Ok(())
    }

    fn typed_ptr<T>(&self, offset: usize) -> Result<*mut T> {
        self.range(offset, std::mem::size_of::<T>())?;
        // SAFETY: in bounds, checked above.
        let p = unsafe { self.as_ptr().add(offset) };
        let align = std::mem::align_of::<T>();
        if (p as usize) % align != 0 {
            return Err(Error::Misaligned { offset, align });
        }
        Ok(p.cast())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let (true, Some(name)) = (self.owner, &self.name) {
            match shm_unlink(format!("/{name}").as_str()) {
                Ok(()) => tracing::debug!(%name, "segment removed"),
                Err(e) => tracing::warn!(%name, error = %e, "segment not removed"),
            }
        }
    }
}

/// A named segment passes by name; the owner's, or an anonymous one, as a descriptor (the
/// owner keeps the name and removes it when it drops).
impl Handle for Segment {
    fn into_handoff(self) -> Handoff {
        match (&self.name, self.owner) {
            (Some(name), false) => Handoff::Name(name.clone()),
            _ => match self.m.file.try_clone() {
                Ok(f) => Handoff::Fd(f.into()),
                Err(_) => Handoff::Name(self.name.clone().unwrap_or_default()),
            },
        }
    }

    fn from_handoff(h: Handoff) -> ipckit_core::Result<Self> {
        Ok(match h {
            Handoff::Name(name) => Segment::open(&name)?,
            Handoff::Fd(fd) => Segment::map_existing(fd, None)?,
        })
    }
}

/// Named segments in `/dev/shm` that ipckit made and whose creating process is gone (it
/// was killed before it could remove them).
///
/// # Errors
/// [`Error::Io`] if `/dev/shm` cannot be read.
pub fn stale_segments() -> Result<Vec<String>> {
    Ok(ipckit_core::find_stale(Path::new(SHM_DIR))
        .map_err(ipckit_io)?
        .into_iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .collect())
}

/// Removes what [`stale_segments`] finds; returns their names.
///
/// # Errors
/// [`Error::Io`] if `/dev/shm` cannot be read.
pub fn remove_stale_segments() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in stale_segments()? {
        if shm_unlink(format!("/{name}").as_str()).is_ok() {
            tracing::info!(%name, "removed segment of a dead process");
            removed.push(name);
        }
    }
    Ok(removed)
}

fn ipckit_io(e: ipckit_core::Error) -> Error {
    match e {
        ipckit_core::Error::Io(e) => Error::Io(e),
        e => Error::Io(std::io::Error::other(e.to_string())),
    }
}
