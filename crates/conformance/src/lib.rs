//! The conformance suite: generic tests that every ipckit channel mechanism runs.
//!
//! A mechanism describes each of its channel flavours with a [`Flavour`] and runs the whole
//! suite from its `tests/conformance.rs` with one line per flavour:
//!
//! ```ignore
//! ipckit_conformance::conformance!(pipe, PipeFlavour, stream);
//! ipckit_conformance::conformance!(queue, QueueFlavour, messages);
//! ```
//!
//! A `stream` flavour (its sending end is a descriptor, `AsFd`) also runs the tests that
//! write raw bytes: a giant header, garbage, a typed iterator meeting garbage. A `messages`
//! flavour (a queue that delivers whole messages) cannot carry a torn frame: those tests
//! are generated too, marked `#[ignore]` with the reason, so a run reports them as not run
//! instead of passing them.
//!
//! The tests run the two ends in different processes (started with ipckit-core's process
//! roles), kill the sending process with SIGKILL mid-stream, feed the receiver giant
//! headers and garbage, and never block without a timeout.
#![forbid(unsafe_code)]

mod suite;

pub use suite::{Flavour, roles, run};

/// Every test of the suite, for `#[test]` generation by [`conformance!`].
pub mod tests {
    pub use crate::suite::{
        drop_drains_then_disconnects, empty_and_16mib_messages, garbage_is_an_error,
        giant_header_is_refused, hundred_thousand_messages, iterator_ends_with_peer,
        iterator_reports_garbage, order_kept_across_processes, parent_to_child,
        peer_killed_mid_stream, recv_timeout_honours_timeout, try_recv_on_empty,
    };
}

/// Generates a module `$name` with one `#[test]` per conformance test for `$flavour`;
/// `stream` or `messages` says which kind of channel it is (see the crate docs).
#[macro_export]
macro_rules! conformance {
    ($name:ident, $flavour:ty, stream) => {
        $crate::conformance!(@module $name, $flavour;
            [giant_header_is_refused, garbage_is_an_error, iterator_reports_garbage];
            []);
    };
    ($name:ident, $flavour:ty, messages) => {
        $crate::conformance!(@module $name, $flavour;
            [];
            [giant_header_is_refused, garbage_is_an_error, iterator_reports_garbage]);
    };
    (@module $name:ident, $flavour:ty; [$($stream:ident),*]; [$($not_run:ident),*]) => {
        mod $name {
            #[allow(unused_imports)] // reason: the flavour type may be named from the parent module
            use super::*;
            $crate::conformance!(@tests $flavour;
                order_kept_across_processes,
                hundred_thousand_messages,
                empty_and_16mib_messages,
                try_recv_on_empty,
                recv_timeout_honours_timeout,
                drop_drains_then_disconnects,
                peer_killed_mid_stream,
                parent_to_child,
                iterator_ends_with_peer
                $(, $stream)*
            );
            $(
                #[test]
                #[ignore = "a message queue delivers whole messages: no raw bytes can be sent"]
                fn $not_run() {}
            )*
        }
    };
    (@tests $flavour:ty; $($test:ident),*) => {$(
        #[test]
        fn $test() {
            $crate::run::<$flavour>($crate::tests::$test::<$flavour>);
        }
    )*};
}
