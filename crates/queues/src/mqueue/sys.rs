//! The unsafe steps of the POSIX message queue: closing its descriptor exactly once, and
//! placing its sender table in shared memory.

use std::mem::ManuallyDrop;

use ipckit_shmem::Placeable;
use nix::mqueue::{MqdT, mq_close};

use crate::senders::Senders;

/// A queue descriptor, closed when dropped.
#[derive(Debug)]
pub(super) struct Mqd(ManuallyDrop<MqdT>);

impl Mqd {
    /// Takes ownership of `mqd`.
    pub(super) fn new(mqd: MqdT) -> Self {
        Mqd(ManuallyDrop::new(mqd))
    }

    /// The descriptor, for calls on it.
    pub(super) fn get(&self) -> &MqdT {
        &self.0
    }
}

impl Drop for Mqd {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and nothing uses the field after it: the descriptor is
        // taken out exactly once, to be closed.
        let mqd = unsafe { ManuallyDrop::take(&mut self.0) };
        let _ = mq_close(mqd);
    }
}

// SAFETY: made of atomics only (sound to share between processes, no pointers); all zeroes
// is a fresh table, which is what a new segment holds.
unsafe impl Placeable for Senders {
    type Init = ();

    unsafe fn init(_: *mut Self, (): ()) -> ipckit_shmem::Result<()> {
        Ok(())
    }
}
