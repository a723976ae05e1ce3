//! `Shared<T>`: one process-shared object in a segment of its own.

use std::{
    any::type_name,
    fmt,
    mem::{align_of, size_of},
    ops::Deref,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ipckit_core::{Handle, Handoff};

use crate::{Error, Placeable, Result, Segment, sys::ObjectRef};

const MAGIC: u64 = u64::from_le_bytes(*b"IPCKSHM1");
/// Where the object starts: after the header, aligned for anything up to a cache line.
pub(crate) const DATA: usize = 64;
const READY: u32 = 2;

/// The header at the start of every segment holding an ipckit object: where each word is.
const MAGIC_AT: usize = 0;
const FINGERPRINT_AT: usize = 8;
const SIZE_AT: usize = 16;
const STATE_AT: usize = 24;

/// A stable fingerprint of `T`: its name, size and alignment (FNV-1a).
pub(crate) fn fingerprint<T>() -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let bytes = type_name::<T>()
        .bytes()
        .chain(size_of::<T>().to_le_bytes())
        .chain(align_of::<T>().to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One `T` in a shared-memory segment of its own; dereferences to `&T`.
///
/// ```
/// use ipckit_shmem::{Shared, Mutex};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let hits: Shared<AtomicU64> = Shared::create(0)?;
/// hits.fetch_add(1, Ordering::Relaxed);
/// let total: Shared<Mutex<u64>> = Mutex::create(10)?;
/// *total.lock()? += 5;
/// assert_eq!(*total.lock()?, 15);
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// - **Create** with [`create`](Shared::create) (an anonymous segment, a memfd),
///   [`create_named`](Shared::create_named) (a fresh unique name) or
///   [`create_at`](Shared::create_at) (your name); every primitive of this crate has the
///   same four constructors of its own (`Mutex::create(0)`, `Semaphore::create(2)`, …),
///   returning a `Shared` of itself.
/// - **Share with a child**: hand it a [`try_clone`](Shared::try_clone) with
///   `Command::handle` (an anonymous object passes as a descriptor, a named one by name);
///   the child takes it with `ctx.handle::<Shared<T>>(..)`. An unrelated process
///   [`open`](Shared::open)s a named one.
/// - **A dead peer**: the object stays valid for the others (the segment lives while any
///   process maps it). What a holder's death does to a lock is said by each lock's type. A
///   named segment is removed by the handle that created it, when dropped; if that process
///   is killed first, [`stale_segments`](crate::stale_segments) finds the name.
pub struct Shared<T: Placeable> {
    seg: Segment,
    obj: ObjectRef<T>,
}

impl<T: Placeable> Shared<T> {
    /// A new `T` in an anonymous segment.
    ///
    /// # Errors
    /// [`Error::Os`] if the memory is refused, or what `T`'s initialisation fails with.
    pub fn create(init: T::Init) -> Result<Self> {
        Self::init_in(Segment::create(DATA + size_of::<T>())?, init)
    }

    /// A new `T` in a named segment with a fresh unique name.
    ///
    /// # Errors
    /// As [`create`](Shared::create).
    pub fn create_named(init: T::Init) -> Result<Self> {
        Self::init_in(Segment::create_named(DATA + size_of::<T>())?, init)
    }

    /// A new `T` in a named segment called `name`.
    ///
    /// # Errors
    /// As [`Segment::create_at`], or what `T`'s initialisation fails with.
    pub fn create_at(name: &str, init: T::Init) -> Result<Self> {
        Self::init_in(Segment::create_at(name, DATA + size_of::<T>())?, init)
    }

    fn init_in(mut seg: Segment, init: T::Init) -> Result<Self> {
        const {
            assert!(
                align_of::<T>() <= DATA,
                "alignment above 64 bytes is not supported"
            )
        };
        seg.mapping_mut().place::<T>(DATA, init)?;
        publish(&mut seg, fingerprint::<T>(), size_of::<T>())?;
        Self::check(seg)
    }

    /// Opens the `T` that another process created with [`create_named`](Shared::create_named)
    /// or [`create_at`](Shared::create_at).
    ///
    /// Waits up to a second for its creator to finish initialising it.
    ///
    /// # Errors
    /// [`Error::Os`] (kind `NotFound`) if there is no such segment, [`Error::Mismatch`] if
    /// it holds something else, [`Error::NotReady`] if it was never initialised.
    pub fn open(name: &str) -> Result<Self> {
        let patience = Instant::now() + Duration::from_secs(1);
        loop {
            match Segment::open(name).and_then(Self::check) {
                Err(Error::NotReady(_)) if Instant::now() < patience => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                r => return r,
            }
        }
    }

    fn check(seg: Segment) -> Result<Self> {
        validate(&seg, fingerprint::<T>(), size_of::<T>(), type_name::<T>())?;
        let obj = seg.mapping().object_ref(DATA)?;
        Ok(Shared { seg, obj })
    }

    /// Another handle on the same object, not the owner of its name; hand it to a child.
    ///
    /// # Errors
    /// [`Error::Os`] if the descriptor cannot be duplicated or mapped.
    pub fn try_clone(&self) -> Result<Self> {
        Self::check(self.seg.try_clone()?)
    }

    /// The name, for a named object.
    pub fn name(&self) -> Option<&str> {
        self.seg.name()
    }

    /// The segment underneath.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
}

fn word<A: Placeable>(seg: &Segment, at: usize) -> Result<&A> {
    seg.view::<A>(at)
}

/// Marks an initialised object of `size` bytes with fingerprint `fp` as ready to open.
pub(crate) fn publish(seg: &mut Segment, fp: u64, size: usize) -> Result<()> {
    seg.mapping_mut().publish();
    word::<AtomicU64>(seg, FINGERPRINT_AT)?.store(fp, Ordering::Relaxed);
    word::<AtomicU64>(seg, SIZE_AT)?.store(size as u64, Ordering::Relaxed);
    word::<AtomicU64>(seg, MAGIC_AT)?.store(MAGIC, Ordering::Relaxed);
    // Pairs with the Acquire load in `validate`: an opener that sees READY sees it all.
    word::<AtomicU32>(seg, STATE_AT)?.store(READY, Ordering::Release);
    Ok(())
}

/// Checks that `seg` holds a published object of `size` bytes with fingerprint `fp`.
pub(crate) fn validate(seg: &Segment, fp: u64, size: usize, expected: &'static str) -> Result<()> {
    let name = seg.name().unwrap_or("anonymous").to_string();
    if seg.len() < DATA {
        return Err(Error::NotReady(name));
    }
    // Pairs with the Release store in `publish`.
    if word::<AtomicU32>(seg, STATE_AT)?.load(Ordering::Acquire) != READY {
        return Err(Error::NotReady(name));
    }
    let reason = if word::<AtomicU64>(seg, MAGIC_AT)?.load(Ordering::Relaxed) != MAGIC {
        "not an ipckit object"
    } else if word::<AtomicU64>(seg, FINGERPRINT_AT)?.load(Ordering::Relaxed) != fp
        || word::<AtomicU64>(seg, SIZE_AT)?.load(Ordering::Relaxed) != size as u64
        || seg.len() < DATA + size
    {
        "another type, or another build of it"
    } else {
        return Ok(());
    };
    Err(Error::Mismatch {
        name,
        expected,
        reason: reason.into(),
    })
}

impl<T: Placeable> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.obj
    }
}

impl<T: Placeable> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("type", &type_name::<T>())
            .field("segment", &self.seg)
            .finish()
    }
}

impl<T: Placeable> Handle for Shared<T> {
    fn into_handoff(self) -> Handoff {
        self.seg.into_handoff()
    }

    fn from_handoff(h: Handoff) -> ipckit_core::Result<Self> {
        Ok(Self::check(Segment::from_handoff(h)?)?)
    }
}

/// The four constructors every process-shared type of this crate has, each returning a
/// [`Shared`] of it: `create`, `create_named`, `create_at(name)`, `open(name)`, with the
/// initial value as their argument, or none for types that start from zero.
macro_rules! constructors {
    ($(#[$doc:meta])* [$($gen:tt)*] $ty:ty) => {
        impl<$($gen)*> $ty {
            $(#[$doc])*
            ///
            /// # Errors
            /// [`Error::Os`](crate::Error::Os) if the system refuses the memory.
            pub fn create() -> crate::Result<crate::Shared<Self>> {
                crate::Shared::create(())
            }

            /// As [`create`](Self::create), in a named segment with a fresh unique name
            /// ([`Shared::name`](crate::Shared::name)) that unrelated processes
            /// [`open`](Self::open).
            ///
            /// # Errors
            /// As [`create`](Self::create).
            pub fn create_named() -> crate::Result<crate::Shared<Self>> {
                crate::Shared::create_named(())
            }

            /// As [`create`](Self::create), in a named segment called `name`.
            ///
            /// # Errors
            /// As [`Segment::create_at`](crate::Segment::create_at).
            pub fn create_at(name: &str) -> crate::Result<crate::Shared<Self>> {
                crate::Shared::create_at(name, ())
            }

            /// Opens the one another process created by name.
            ///
            /// # Errors
            /// As [`Shared::open`](crate::Shared::open).
            pub fn open(name: &str) -> crate::Result<crate::Shared<Self>> {
                crate::Shared::open(name)
            }
        }
    };
    ($(#[$doc:meta])* [$($gen:tt)*] $ty:ty, $init:ty, |$arg:ident| $conv:expr) => {
        impl<$($gen)*> $ty {
            $(#[$doc])*
            ///
            /// # Errors
            /// [`Error::Os`](crate::Error::Os) if the system refuses the memory, or
            /// [`Error::InvalidOptions`](crate::Error::InvalidOptions) for an initial value
            /// that makes no valid object.
            pub fn create($arg: $init) -> crate::Result<crate::Shared<Self>> {
                crate::Shared::create($conv)
            }

            /// As [`create`](Self::create), in a named segment with a fresh unique name
            /// ([`Shared::name`](crate::Shared::name)) that unrelated processes
            /// [`open`](Self::open).
            ///
            /// # Errors
            /// As [`create`](Self::create).
            pub fn create_named($arg: $init) -> crate::Result<crate::Shared<Self>> {
                crate::Shared::create_named($conv)
            }

            /// As [`create`](Self::create), in a named segment called `name`.
            ///
            /// # Errors
            /// As [`Segment::create_at`](crate::Segment::create_at).
            pub fn create_at(name: &str, $arg: $init) -> crate::Result<crate::Shared<Self>> {
                crate::Shared::create_at(name, $conv)
            }

            /// Opens the one another process created by name.
            ///
            /// # Errors
            /// As [`Shared::open`](crate::Shared::open).
            pub fn open(name: &str) -> crate::Result<crate::Shared<Self>> {
                crate::Shared::open(name)
            }
        }
    };
}

pub(crate) use constructors;
