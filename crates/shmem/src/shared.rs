//! `Shared<T>`: one process-shared object in a segment of its own.

use std::{
    any::type_name,
    fmt,
    marker::PhantomData,
    mem::{align_of, size_of},
    ops::Deref,
    sync::atomic::{
        AtomicBool, AtomicI32, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    },
    time::{Duration, Instant},
};

use ipckit_core::{Handle, Handoff};

use crate::{Error, Result, Segment};

/// A type that can live in shared memory and be used from several processes at once.
///
/// # Safety
/// An implementor promises that:
/// - every access through `&Self` stays sound while other processes access the same bytes
///   (all mutation goes through atomics, or through cells only touched under a
///   process-shared lock of `Self`);
/// - it holds no pointers, references or handles (they mean nothing in another process);
/// - after [`init`](Placeable::init) on zero-filled memory, the bytes are a valid `Self`.
pub unsafe trait Placeable: Sync {
    /// What the creator gives to initialise it.
    type Init;

    /// Initialises `Self` in place.
    ///
    /// # Safety
    /// `this` is aligned, valid for writes of `size_of::<Self>()` zero-filled bytes, and no
    /// other thread or process can reach it yet.
    ///
    /// # Errors
    /// What the system's initialisation calls fail with.
    unsafe fn init(this: *mut Self, init: Self::Init) -> std::io::Result<()>;
}

const MAGIC: u64 = u64::from_le_bytes(*b"IPCKSHM1");
/// Where the object starts: after the header, aligned for anything up to a cache line.
pub(crate) const DATA: usize = 64;
const READY: u32 = 2;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    fingerprint: AtomicU64,
    size: AtomicU64,
    state: AtomicU32,
}

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
/// let total: Shared<Mutex<u64>> = Shared::create(10)?;
/// *total.lock()? += 5;
/// assert_eq!(*total.lock()?, 15);
/// # Ok::<(), ipckit_shmem::Error>(())
/// ```
///
/// [`create`](Shared::create) makes an anonymous segment, passed to children as a
/// descriptor; [`create_named`](Shared::create_named) a named one that unrelated processes
/// [`open`](Shared::open). Hand a [`try_clone`](Shared::try_clone) to a child with
/// `ipckit_core::Command::handle`.
pub struct Shared<T: Placeable> {
    seg: Segment,
    _t: PhantomData<T>,
}

impl<T: Placeable> Shared<T> {
    /// A new `T` in an anonymous segment.
    ///
    /// # Errors
    /// [`Error::Io`] if the memory or the object's initialisation is refused.
    pub fn create(init: T::Init) -> Result<Self> {
        Self::init_in(Segment::create(DATA + size_of::<T>())?, init)
    }

    /// A new `T` in a named segment with a fresh unique name.
    ///
    /// # Errors
    /// [`Error::Io`] if the memory or the object's initialisation is refused.
    pub fn create_named(init: T::Init) -> Result<Self> {
        Self::init_in(Segment::create_named(DATA + size_of::<T>())?, init)
    }

    fn init_in(seg: Segment, init: T::Init) -> Result<Self> {
        const {
            assert!(
                align_of::<T>() <= DATA,
                "alignment above 64 bytes is not supported"
            )
        };
        // SAFETY: the segment was just created, zero-filled, at least DATA + size_of::<T>()
        // long; its start is page-aligned so DATA is aligned for T; nobody else has it yet
        // (an opener waits for READY, which `publish` sets last).
        unsafe { T::init(seg.as_ptr().add(DATA).cast(), init)? };
        publish(&seg, fingerprint::<T>(), size_of::<T>());
        Ok(Shared {
            seg,
            _t: PhantomData,
        })
    }

    /// Opens the `T` that another process created with [`create_named`](Shared::create_named).
    ///
    /// Waits up to a second for its creator to finish initialising it.
    ///
    /// # Errors
    /// [`Error::Io`] (`NotFound`) if there is no such segment, [`Error::Mismatch`] if it
    /// holds something else, [`Error::NotReady`] if it was never initialised.
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
        Ok(Shared {
            seg,
            _t: PhantomData,
        })
    }

    /// Another handle on the same object, not the owner of its name; hand it to a child.
    ///
    /// # Errors
    /// [`Error::Io`] if the descriptor cannot be duplicated or mapped.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Shared {
            seg: self.seg.try_clone()?,
            _t: PhantomData,
        })
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

fn header(seg: &Segment) -> &Header {
    // SAFETY: every segment handled here is at least DATA bytes (checked or created so),
    // page-aligned, and the header is made of atomics only; the reference lives as long as
    // the segment's mapping.
    unsafe { &*seg.as_ptr().cast::<Header>() }
}

/// Marks an initialised object of `size` bytes with fingerprint `fp` as ready to open.
pub(crate) fn publish(seg: &Segment, fp: u64, size: usize) {
    let header = header(seg);
    header.fingerprint.store(fp, Ordering::Relaxed);
    header.size.store(size as u64, Ordering::Relaxed);
    header.magic.store(MAGIC, Ordering::Relaxed);
    // Pairs with the Acquire load in `validate`: an opener that sees READY sees it all.
    header.state.store(READY, Ordering::Release);
}

/// Checks that `seg` holds a published object of `size` bytes with fingerprint `fp`.
pub(crate) fn validate(seg: &Segment, fp: u64, size: usize, expected: &'static str) -> Result<()> {
    let name = seg.name().unwrap_or("anonymous").to_string();
    if seg.len() < DATA {
        return Err(Error::NotReady(name));
    }
    let header = header(seg);
    // Pairs with the Release store in `publish`.
    if header.state.load(Ordering::Acquire) != READY {
        return Err(Error::NotReady(name));
    }
    let reason = if header.magic.load(Ordering::Relaxed) != MAGIC {
        "not an ipckit object"
    } else if header.fingerprint.load(Ordering::Relaxed) != fp
        || header.size.load(Ordering::Relaxed) != size as u64
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
        // SAFETY: `init_in` or `check` established that a valid, initialised T lives at
        // DATA, and `Placeable` promises that `&T` is sound while other processes use it.
        unsafe { &*self.seg.as_ptr().add(DATA).cast::<T>() }
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

macro_rules! atomics {
    ($($a:ty => $v:ty),*) => {$(
        // SAFETY: an atomic is sound to share; it holds no pointers; `init` stores its value.
        unsafe impl Placeable for $a {
            type Init = $v;

            unsafe fn init(this: *mut Self, init: $v) -> std::io::Result<()> {
                // SAFETY: the caller gives aligned, writable, unshared memory.
                unsafe { this.write(<$a>::new(init)) };
                Ok(())
            }
        }
    )*};
}

atomics!(AtomicBool => bool, AtomicU8 => u8, AtomicU32 => u32, AtomicU64 => u64, AtomicUsize => usize, AtomicI32 => i32, AtomicI64 => i64);

macro_rules! tuples {
    ($(($($t:ident $i:tt),*)),*) => {$(
        // SAFETY: a tuple of placeable parts is placeable: each part keeps its promise and
        // is initialised in its own place.
        unsafe impl<$($t: Placeable),*> Placeable for ($($t,)*) {
            type Init = ($($t::Init,)*);

            unsafe fn init(this: *mut Self, init: Self::Init) -> std::io::Result<()> {
                // SAFETY: each field lies within the caller's memory, aligned for itself.
                $(unsafe { $t::init(&raw mut (*this).$i, init.$i)? };)*
                Ok(())
            }
        }
    )*};
}

tuples!((A 0, B 1), (A 0, B 1, C 2), (A 0, B 1, C 2, D 3));
