//! A program that forgets `enter` gets an error naming it, and no process is started
//! (the child would re-run `main` and spawn again, without end).

use ipckit_core::{Command, Error};

fn double(x: u32) -> u32 {
    x * 2
}

/// The children of this process, from every thread's `children` list in /proc.
fn children() -> Vec<String> {
    let mut all = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        all.extend(list.split_whitespace().map(str::to_string));
    }
    all
}

#[test]
fn spawning_without_enter_is_refused_and_starts_nothing() {
    let before = children();
    match Command::new("anything").spawn() {
        Err(Error::EnterMissing) => {}
        other => panic!("expected EnterMissing, got {other:?}"),
    }
    match ipckit_core::spawn(1, double) {
        Err(e @ Error::EnterMissing) => assert!(e.to_string().contains("enter"), "{e}"),
        other => panic!("expected EnterMissing, got {other:?}"),
    }
    assert_eq!(children(), before, "no process was started");
}
