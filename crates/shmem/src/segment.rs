//! Shared-memory segments: named (POSIX `shm_open`) or anonymous (`memfd_create`).

use std::{fs::File, os::fd::OwnedFd, path::Path};

use ipckit_core::{Handle, Handoff};
use nix::{
    fcntl::OFlag,
    sys::{
        memfd::{MFdFlags, memfd_create},
        mman::{shm_open, shm_unlink},
        stat::Mode,
    },
};

use crate::{Error, Placeable, Result, sys::Mapping};

/// Where POSIX shared memory lives on Linux.
const SHM_DIR: &str = "/dev/shm";
const SEGMENT: &str = "shared-memory segment";
const MEMFD: &str = "memfd segment";

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
///
/// - **Create** with [`create`](Segment::create) (anonymous), [`create_named`](Segment::create_named)
///   (a fresh unique name) or [`create_at`](Segment::create_at) (yours);
///   [`open`](Segment::open) by name.
/// - **Share with a child**: `Command::new(..).handle("seg", seg.try_clone()?)`; the child
///   takes it with `ctx.handle::<Segment>("seg")?`.
/// - **A dead peer**: the memory lives while any process maps it. An owner killed before
///   it drops a named segment leaves the name in `/dev/shm`:
///   [`stale_segments`](crate::stale_segments) finds it,
///   [`remove_stale_segments`](crate::remove_stale_segments) removes it.
#[derive(Debug)]
pub struct Segment {
    m: Mapping,
    name: Option<String>,
    owner: bool,
}

fn shm_path(name: &str) -> Result<String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty() || bare.len() > 250 || bare.contains('/') {
        return Err(Error::InvalidName(name.to_string()));
    }
    Ok(format!("/{bare}"))
}

impl Segment {
    /// An anonymous segment of `len` bytes (a memfd), shared with a child process as an
    /// inherited descriptor ([`ipckit_core::Command::handle`] with a
    /// [`try_clone`](Segment::try_clone)).
    ///
    /// # Errors
    /// [`Error::Os`] if the system refuses the memory.
    pub fn create(len: usize) -> Result<Segment> {
        const NAME: &str = "ipckit-segment";
        let fd = memfd_create(NAME, MFdFlags::MFD_CLOEXEC)
            .map_err(|e| Error::os("create", MEMFD, NAME, e))?;
        Self::map_new(fd, len, None)
    }

    /// A named segment of `len` bytes, with a fresh unique name ([`name`](Segment::name))
    /// that other processes [`open`](Segment::open).
    ///
    /// # Errors
    /// [`Error::Os`] if the system refuses it.
    pub fn create_named(len: usize) -> Result<Segment> {
        Self::create_at(&ipckit_core::unique_name("shm"), len)
    }

    /// A named segment of `len` bytes called `name` (with or without the leading `/`).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a name POSIX refuses; [`Error::Os`] (kind
    /// `AlreadyExists`) if the name is taken.
    pub fn create_at(name: &str, len: usize) -> Result<Segment> {
        let path = shm_path(name)?;
        let fd = shm_open(
            path.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| Error::os("create", SEGMENT, &path[1..], e))?;
        let seg = Self::map_new(fd, len, Some(path[1..].to_string()));
        if seg.is_err() {
            let _ = shm_unlink(path.as_str());
        }
        seg
    }

    fn map_new(fd: OwnedFd, len: usize, name: Option<String>) -> Result<Segment> {
        let file = File::from(fd);
        let (object, shown) = Self::described(name.as_deref());
        file.set_len(len as u64)
            .map_err(|e| Error::os("resize", object, shown, e))?;
        if let Some(n) = &name {
            tracing::debug!(name = %n, len, "segment created");
        }
        Ok(Segment {
            m: Mapping::new(file, true).map_err(|e| Error::os("map", object, shown, e))?,
            name,
            owner: true,
        })
    }

    /// What to call a segment in an error.
    fn described(name: Option<&str>) -> (&'static str, &str) {
        match name {
            Some(n) => (SEGMENT, n),
            None => (MEMFD, "anonymous"),
        }
    }

    /// Opens the named segment `name` that another process created; its size is the size
    /// it was created with.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a name POSIX refuses; [`Error::Os`] (kind `NotFound`) if
    /// there is no such segment.
    pub fn open(name: &str) -> Result<Segment> {
        let path = shm_path(name)?;
        let fd = shm_open(
            path.as_str(),
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::os("open", SEGMENT, &path[1..], e))?;
        let seg = Self::map_existing(fd, Some(path[1..].to_string()))?;
        tracing::debug!(name = %&path[1..], len = seg.len(), "segment opened");
        Ok(seg)
    }

    fn map_existing(fd: OwnedFd, name: Option<String>) -> Result<Segment> {
        let (object, shown) = Self::described(name.as_deref());
        let m =
            Mapping::new(File::from(fd), false).map_err(|e| Error::os("map", object, shown, e))?;
        Ok(Segment {
            m,
            name,
            owner: false,
        })
    }

    /// Another handle on the same memory, which does not own it (it does not remove the
    /// name when dropped). Hand this one to a child process.
    ///
    /// # Errors
    /// [`Error::Os`] if the descriptor cannot be duplicated or mapped.
    pub fn try_clone(&self) -> Result<Segment> {
        let (object, shown) = Self::described(self.name.as_deref());
        let fd = self
            .m
            .file
            .try_clone()
            .map_err(|e| Error::os("duplicate", object, shown, e))?;
        Self::map_existing(OwnedFd::from(fd), self.name.clone())
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

    /// The [`Placeable`] object at `offset` (atomics, locks, cells, or a type of yours
    /// built of them), seen in place: the way to lay several objects out in one segment.
    /// Memory nobody initialised is all zeroes, a valid state of every `Placeable` type
    /// made of atomics.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub fn view<T: Placeable>(&self, offset: usize) -> Result<&T> {
        self.m.object(offset)
    }

    /// The mapping, for placing objects in it.
    pub(crate) fn mapping_mut(&mut self) -> &mut Mapping {
        &mut self.m
    }

    /// The mapping.
    pub(crate) fn mapping(&self) -> &Mapping {
        &self.m
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
/// [`Error::Os`] if `/dev/shm` cannot be read.
pub fn stale_segments() -> Result<Vec<String>> {
    Ok(ipckit_core::find_stale(Path::new(SHM_DIR))
        .map_err(|e| match e {
            ipckit_core::Error::Io(e) => Error::os("list", "directory", SHM_DIR, e),
            e => Error::Io(std::io::Error::other(e)),
        })?
        .into_iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .collect())
}

/// Removes what [`stale_segments`] finds; returns their names.
///
/// # Errors
/// [`Error::Os`] if `/dev/shm` cannot be read.
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
