//! The conformance suite, run for the shared-memory queue and the POSIX message queue.

use ipckit_conformance::{Flavour, conformance};
use ipckit_queues::{
    MessageQueue, MqLimits, MqOptions, MqReceiver, MqSender, Queue, QueueOptions, QueueReceiver,
    QueueSender, Result,
};

struct SharedQueue;
impl Flavour for SharedQueue {
    type Tx = QueueSender;
    type Rx = QueueReceiver;
    fn pair() -> Result<(QueueSender, QueueReceiver)> {
        // Room for the suite's 16 MiB messages; pages are only used when written.
        let q: Queue<Vec<u8>> = Queue::create(
            QueueOptions::new(64)
                .max_message(17 << 20)
                .max_bytes(2 << 30),
        )?;
        Ok((q.byte_sender()?, q.byte_receiver()?))
    }
}

conformance!(queue, SharedQueue, messages);

/// The POSIX message queue, as large as this system lets an unprivileged process make it:
/// Linux's defaults are 10 messages of 8 KiB (`/proc/sys/fs/mqueue/msg_max`,
/// `msgsize_max`), which the suite's message sizes are capped to.
struct PosixQueue;
impl PosixQueue {
    fn limits() -> (usize, usize) {
        let l = MqLimits::read();
        let messages = l.msg_max.unwrap_or(10).min(64) as usize;
        let size = l.msgsize_max.unwrap_or(8192).min(16 << 20) as usize;
        (messages, size)
    }
}

impl Flavour for PosixQueue {
    type Tx = MqSender;
    type Rx = MqReceiver;
    fn pair() -> Result<(MqSender, MqReceiver)> {
        let (messages, size) = Self::limits();
        let q: MessageQueue<Vec<u8>> =
            MessageQueue::create(MqOptions::new(messages).max_message(size))?;
        Ok((q.byte_sender()?, q.byte_receiver()?))
    }
    fn max_message() -> usize {
        Self::limits().1
    }
}

conformance!(mqueue, PosixQueue, messages);
