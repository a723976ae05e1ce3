//! The floor rows' shared memory: a raw shared mapping of an anonymous memfd, made with the
//! calls that `ipckit_shmem::Segment::create` wraps, and the raw spinning ping-pong on it.

use std::{
    any::type_name,
    fs::File,
    marker::PhantomData,
    mem::size_of,
    ops::Deref,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Instant,
};

use anyhow::ensure;
use ipckit_core::{Ctx, Handoff};
use memmap2::MmapRaw;
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::{Fd, spin_until};

/// An anonymous memfd mapped shared.
#[derive(Debug)]
pub struct RawMem {
    map: MmapRaw,
    file: File,
}

impl RawMem {
    /// `len` zero bytes.
    ///
    /// # Errors
    /// If the memory is refused.
    pub fn create(len: usize) -> anyhow::Result<Self> {
        let file = File::from(memfd_create("ipckit-bench", MFdFlags::MFD_CLOEXEC)?);
        file.set_len(len as u64)?;
        Self::map(file)
    }

    /// The memory the parent handed over as `key` (a descriptor).
    ///
    /// # Errors
    /// If there is no such handle or it cannot be mapped.
    pub fn open(ctx: &mut Ctx, key: &str) -> anyhow::Result<Self> {
        Self::map(File::from(ctx.handle::<Fd>(key)?.0))
    }

    fn map(file: File) -> anyhow::Result<Self> {
        Ok(RawMem {
            map: MmapRaw::map_raw(&file)?,
            file,
        })
    }

    /// A descriptor of the memory, for a child.
    ///
    /// # Errors
    /// If the descriptor cannot be duplicated.
    pub fn handoff(&self) -> anyhow::Result<Handoff> {
        Ok(Handoff::Fd(self.file.try_clone()?.into()))
    }

    /// The mapping's length.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The start of the mapping; accesses must allow for the other process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
}

/// A type the floor rows place alone in a [`RawMem`].
///
/// # Safety
/// All zero bytes are a valid `Self`, its alignment is at most a page, and `&Self` stays
/// sound while other processes use the same bytes (every change is atomic, or made under a
/// process-shared lock of `Self`).
pub unsafe trait Floor: Sync {}

// SAFETY: an atomic; zeroes are 0.
unsafe impl Floor for AtomicU32 {}

// SAFETY: an atomic; zeroes are 0.
unsafe impl Floor for AtomicU64 {}

/// A `T` alone in a raw shared mapping: an `ipckit_shmem::Shared` without its header and
/// checks.
#[derive(Debug)]
pub struct Raw<T> {
    mem: RawMem,
    _t: PhantomData<T>,
}

impl<T: Floor> Raw<T> {
    /// A zero `T`.
    ///
    /// # Errors
    /// If the memory is refused.
    pub fn create() -> anyhow::Result<Self> {
        Self::new(RawMem::create(size_of::<T>())?)
    }

    /// The `T` the parent handed over as `key`.
    ///
    /// # Errors
    /// If there is no such handle, or its mapping is too small.
    pub fn open(ctx: &mut Ctx, key: &str) -> anyhow::Result<Self> {
        Self::new(RawMem::open(ctx, key)?)
    }

    fn new(mem: RawMem) -> anyhow::Result<Self> {
        ensure!(
            mem.len() >= size_of::<T>(),
            "a mapping too small for {}",
            type_name::<T>()
        );
        Ok(Raw {
            mem,
            _t: PhantomData,
        })
    }

    /// A descriptor of the memory, for a child.
    ///
    /// # Errors
    /// If the descriptor cannot be duplicated.
    pub fn handoff(&self) -> anyhow::Result<Handoff> {
        self.mem.handoff()
    }
}

impl<T: Floor> Deref for Raw<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the mapping is page-aligned, at least `size_of::<T>()` long (`new`) and
        // lives as long as `self`; it started zero-filled, which `Floor` promises is a valid
        // `T`, and `Floor` promises that `&T` is sound while other processes use it.
        unsafe { &*self.mem.as_ptr().cast::<T>() }
    }
}

/// A word on a cache line of its own.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Line<W>(pub W);

/// The two words of a floor's ping-pong: the parent writes `ping`, the other side copies
/// it into `pong`.
#[repr(C)]
#[derive(Debug)]
pub struct Words<W> {
    /// The parent's word.
    pub ping: Line<W>,
    /// The echo.
    pub pong: Line<W>,
}

// SAFETY: two `Floor` words; zeroes are two zero words.
unsafe impl<W: Floor> Floor for Words<W> {}

/// The raw spinning ping-pong, the floor of the busy-wait round trips: two atomics spun on.
#[derive(Debug)]
pub struct RawSpin {
    /// The two words.
    pub words: Raw<Words<AtomicU64>>,
    /// The value last echoed (on the echoing side).
    pub last: u64,
}

impl RawSpin {
    /// The parent's side of a round trip: writes `v`, spins until its echo.
    ///
    /// # Errors
    /// If no echo comes before `deadline`.
    pub fn round(&mut self, v: u64, deadline: Instant) -> anyhow::Result<()> {
        // Pairs with the echoing side's Acquire load.
        self.words.ping.0.store(v, Ordering::Release);
        let pong = &self.words.pong.0;
        // Pairs with the echoing side's Release store.
        spin_until(deadline, || {
            (pong.load(Ordering::Acquire) == v).then_some(())
        })
    }

    /// The echoing side: spins for the next value, copies it back.
    ///
    /// # Errors
    /// If no value comes before `deadline`.
    pub fn echo(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let (ping, last) = (&self.words.ping.0, self.last);
        // Pairs with the parent's Release store.
        let v = spin_until(deadline, || {
            Some(ping.load(Ordering::Acquire)).filter(|&v| v != last)
        })?;
        self.last = v;
        // Pairs with the parent's Acquire load.
        self.words.pong.0.store(v, Ordering::Release);
        Ok(())
    }
}
