//! The one unsafe step of the shared-memory queue: seeing its header and slots, which are
//! made of atomics, in the shared segment.

use std::sync::atomic::AtomicU64;

use ipckit_shmem::{Notify, Segment};

use crate::{senders::Senders, sync};

/// Keeps a value on a cache line of its own.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct Line<T>(pub(crate) T);

/// The queue's shared state, at the start of its segment. All zeroes is a valid (empty,
/// unpublished) header.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) magic: AtomicU64,
    pub(crate) capacity: AtomicU64,
    pub(crate) slot_size: AtomicU64,
    pub(crate) max_message: AtomicU64,
    /// Next position to put at.
    pub(crate) tail: Line<sync::AtomicU64>,
    /// Next position to get from.
    pub(crate) head: Line<sync::AtomicU64>,
    pub(crate) not_empty: Line<Notify>,
    pub(crate) not_full: Line<Notify>,
    /// Tasks put and not yet marked done (JoinableQueue).
    pub(crate) unfinished: Line<AtomicU64>,
    pub(crate) all_done: Line<Notify>,
    pub(crate) senders: Senders,
}

/// A slot's fixed part; the message bytes follow it.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct SlotHead {
    pub(crate) state: sync::AtomicU64,
    pub(crate) len: sync::AtomicU32,
    _pad: u32,
}

/// Bytes before the message in a slot.
pub(crate) const SLOT_HEAD: usize = std::mem::size_of::<SlotHead>();

/// Where the slots start in the segment.
pub(crate) const SLOTS: usize = std::mem::size_of::<Header>().next_multiple_of(64);

/// The header of a queue segment.
///
/// # Panics
/// If the segment is shorter than the header (callers size or check it first).
pub(crate) fn header(seg: &Segment) -> &Header {
    assert!(seg.len() >= SLOTS, "queue segment too short");
    // SAFETY: the segment is at least a header long (checked), page-aligned (so aligned for
    // the header), zero-filled or initialised by the creator, and the header is made of
    // atomics only, which are sound to share between processes; the reference lives as long
    // as the borrow of the segment, whose mapping lives as long as the segment.
    unsafe { &*seg.as_ptr().cast::<Header>() }
}

/// The fixed part of slot `index`, whose slots are `slot_size` bytes each.
///
/// # Panics
/// If the slot lies outside the segment.
pub(crate) fn slot(seg: &Segment, slot_size: usize, index: usize) -> &SlotHead {
    let offset = SLOTS + index * slot_size;
    assert!(
        offset + slot_size <= seg.len(),
        "slot outside the queue segment"
    );
    // SAFETY: in bounds (checked), 64-aligned (SLOTS and slot_size are multiples of 64 on a
    // page-aligned mapping), made of atomics only (zeroes are a valid free slot); the
    // reference lives as long as the borrow of the segment.
    unsafe { &*seg.as_ptr().add(offset).cast::<SlotHead>() }
}
