//! Process roles: exit status, panics and errors reported to the parent, descriptors passed
//! only on purpose, and no child outliving its parent.

use std::{
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use ipckit_core::{Command, Ctx, Error, Reader, RecvBytes, Role, RoleResult, SendBytes, Writer};
use nix::{
    fcntl::OFlag,
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    sys::signal::kill,
    unistd::{Pid, pipe2},
};

const PATIENCE: Duration = Duration::from_secs(30);

fn ok(_: &mut Ctx) -> RoleResult {
    Ok(())
}

fn panics(_: &mut Ctx) -> RoleResult {
    panic!("the oven is on fire");
}

fn fails(_: &mut Ctx) -> RoleResult {
    Err("out of dough".into())
}

fn exits(ctx: &mut Ctx) -> RoleResult {
    std::process::exit(ctx.arg()?);
}

/// Reports, for each descriptor number it is given, whether it is open in this process.
fn probe(ctx: &mut Ctx) -> RoleResult {
    let fds: Vec<RawFd> = ctx.arg()?;
    let mut out: Writer = ctx.handle("out")?;
    for fd in fds {
        let open = std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists();
        out.send_bytes(&[u8::from(open)])?;
    }
    Ok(())
}

/// Starts a sleeping grandchild, reports its pid, then waits to be killed.
fn middle(ctx: &mut Ctx) -> RoleResult {
    let mut out: Writer = ctx.handle("out")?;
    let grandchild = Command::new("sleeper").quiet().spawn()?;
    out.send_bytes(&grandchild.pid().to_le_bytes())?;
    std::mem::forget(grandchild);
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

fn sleeper(_: &mut Ctx) -> RoleResult {
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}

const ROLES: &[Role] = &[
    Role::new("ok", ok),
    Role::new("panics", panics),
    Role::new("fails", fails),
    Role::new("exits", exits),
    Role::new("probe", probe),
    Role::new("middle", middle),
    Role::new("sleeper", sleeper),
];

#[test]
fn join_gives_the_exit_status() {
    ipckit_core::enter(ROLES);
    let status = Command::new("ok")
        .quiet()
        .spawn()
        .unwrap()
        .join_timeout(PATIENCE)
        .unwrap();
    assert!(status.success());
    let mut child = Command::new("exits")
        .arg(&7)
        .unwrap()
        .quiet()
        .spawn()
        .unwrap();
    assert_eq!(child.join_timeout(PATIENCE).unwrap().code(), Some(7));
}

#[test]
fn a_panic_comes_back_with_its_message() {
    ipckit_core::enter(ROLES);
    let mut child = Command::new("panics").quiet().spawn().unwrap();
    match child.join_timeout(PATIENCE) {
        Err(Error::RolePanicked { role, message }) => {
            assert_eq!(role, "panics");
            assert_eq!(message, "the oven is on fire");
        }
        other => panic!("expected RolePanicked, got {other:?}"),
    }
}

#[test]
fn an_error_comes_back_with_its_message() {
    ipckit_core::enter(ROLES);
    let mut child = Command::new("fails").quiet().spawn().unwrap();
    assert!(matches!(
        child.join_timeout(PATIENCE),
        Err(Error::RoleFailed { message, .. }) if message == "out of dough"
    ));
}

#[test]
fn an_unknown_role_is_an_error() {
    ipckit_core::enter(ROLES);
    let mut child = Command::new("nobody").quiet().spawn().unwrap();
    assert!(matches!(
        child.join_timeout(PATIENCE),
        Err(Error::RoleFailed { message, .. }) if message.contains("nobody")
    ));
}

#[test]
fn join_timeout_leaves_a_running_child_running() {
    ipckit_core::enter(ROLES);
    let mut child = Command::new("sleeper").quiet().spawn().unwrap();
    assert!(matches!(
        child.join_timeout(Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    child.kill().unwrap();
    assert!(matches!(
        child.join_timeout(PATIENCE),
        Err(Error::RoleKilled { signal: 9, .. })
    ));
}

#[test]
fn only_passed_descriptors_are_inherited() {
    ipckit_core::enter(ROLES);
    let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let (secret_r, secret_w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let probe_fds = vec![secret_r.as_raw_fd(), secret_w.as_raw_fd(), w.as_raw_fd()];
    let mut child = Command::new("probe")
        .arg(&probe_fds)
        .unwrap()
        .handle("out", Writer::from_fd(w).unwrap())
        .quiet()
        .spawn()
        .unwrap();
    let mut r = Reader::from_fd(r).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(r.recv_bytes_timeout(PATIENCE).unwrap()[0]);
    }
    // The secret pipe is not open in the child; the passed end is.
    assert_eq!(seen, [0, 0, 1]);
    assert!(child.join_timeout(PATIENCE).unwrap().success());
    drop((secret_r, secret_w));
}

#[test]
fn a_child_dies_with_its_parent() {
    ipckit_core::enter(ROLES);
    let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let mut middle = Command::new("middle")
        .handle("out", Writer::from_fd(w).unwrap())
        .quiet()
        .spawn()
        .unwrap();
    let mut r = Reader::from_fd(r).unwrap();
    let pid = u32::from_le_bytes(
        r.recv_bytes_timeout(PATIENCE).unwrap()[..4]
            .try_into()
            .unwrap(),
    );
    let grandchild = Pid::from_raw(pid as i32);
    assert_eq!(kill(grandchild, None), Ok(()), "the grandchild runs");
    middle.kill().unwrap();
    assert!(matches!(
        middle.join_timeout(PATIENCE),
        Err(Error::RoleKilled { .. })
    ));
    let deadline = Instant::now() + PATIENCE;
    while ipckit_core::is_alive(grandchild.as_raw()) {
        assert!(
            Instant::now() < deadline,
            "the grandchild outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn square(x: u64) -> u64 {
    x * x
}

fn shout(words: Vec<String>) -> String {
    words.join(" ").to_uppercase()
}

fn boom(_: ()) -> u32 {
    panic!("no more dough");
}

fn with_handle(greeting: String, ctx: &mut Ctx) -> RoleResult<usize> {
    let mut out: Writer = ctx.handle("out")?;
    out.send_bytes(greeting.as_bytes())?;
    Ok(greeting.len())
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_spawned_function_returns_its_result() {
    ipckit_core::enter(ROLES);
    let mut child = ipckit_core::spawn(12, square).unwrap();
    assert_eq!(child.join_timeout(PATIENCE).unwrap(), 144);
    let words = vec!["pizza".to_string(), "time".to_string()];
    let mut child = ipckit_core::spawn(words, shout).unwrap();
    assert_eq!(child.join_timeout(PATIENCE).unwrap(), "PIZZA TIME");
    // A closure that captures nothing is a function too.
    let mut child = ipckit_core::spawn(20u32, |x| x + 1).unwrap();
    assert_eq!(child.join_timeout(PATIENCE).unwrap(), 21);
}

#[test]
fn a_spawned_functions_panic_comes_back_with_its_message() {
    ipckit_core::enter(ROLES);
    let mut child = ipckit_core::spawn((), boom).unwrap();
    match child.join_timeout(PATIENCE) {
        Err(Error::RolePanicked { message, .. }) => assert_eq!(message, "no more dough"),
        other => panic!("expected the panic, got {other:?}"),
    }
}

#[test]
fn a_function_with_handles_uses_them_and_returns() {
    ipckit_core::enter(ROLES);
    let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
    let mut child = Command::function(&"hello".to_string(), with_handle)
        .unwrap()
        .handle("out", Writer::from_fd(w).unwrap())
        .spawn()
        .unwrap();
    let mut r = Reader::from_fd(r).unwrap();
    assert_eq!(r.recv_bytes_timeout(PATIENCE).unwrap(), b"hello");
    assert_eq!(child.join_timeout(PATIENCE).unwrap(), 5);
}

#[test]
fn spawning_from_a_named_thread_works() {
    ipckit_core::enter(ROLES);
    let worker = std::thread::Builder::new()
        .name("tokio-runtime-worker".into())
        .spawn(|| {
            let mut child = ipckit_core::spawn(3, square).unwrap();
            let squared = child.join_timeout(PATIENCE).unwrap();
            let status = Command::new("ok")
                .quiet()
                .spawn()
                .unwrap()
                .join_timeout(PATIENCE)
                .unwrap();
            (squared, status.success())
        })
        .unwrap();
    assert_eq!(worker.join().unwrap(), (9, true));
}

#[test]
fn a_child_spawned_from_a_thread_that_ends_lives_on() {
    ipckit_core::enter(ROLES);
    let mut child = std::thread::spawn(|| ipckit_core::spawn(300, nap).unwrap())
        .join()
        .unwrap();
    // The spawning thread is gone; the child still finishes its work.
    assert_eq!(child.join_timeout(PATIENCE).unwrap(), 300);
}

#[test]
fn the_exit_descriptor_wakes_a_poll_when_the_child_dies() {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    ipckit_core::enter(ROLES);
    let mut child = Command::new("sleeper").quiet().spawn().unwrap();
    {
        let mut fds = [PollFd::new(child.exit_fd().unwrap(), PollFlags::POLLIN)];
        assert_eq!(
            poll(&mut fds, PollTimeout::from(50u16)).unwrap(),
            0,
            "still running"
        );
    }
    kill(
        Pid::from_raw(child.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    {
        let mut fds = [PollFd::new(child.exit_fd().unwrap(), PollFlags::POLLIN)];
        let ready = poll(
            &mut fds,
            PollTimeout::try_from(PATIENCE.as_millis() as i32).unwrap(),
        );
        assert_eq!(ready.unwrap(), 1, "the death is seen");
    }
    assert!(matches!(
        child.try_join(),
        Ok(None) | Err(Error::RoleKilled { signal: 9, .. })
    ));
    assert!(matches!(
        child.join_timeout(PATIENCE),
        Err(Error::RoleKilled { signal: 9, .. })
    ));
}

fn apply_twice(x: u64, ctx: &mut Ctx) -> RoleResult<u64> {
    let f: fn(u64) -> u64 = ctx.function("f")?;
    let hello: fn() -> &'static str = ctx.function("hello")?;
    assert_eq!(hello(), "hello");
    // Asking for another type is refused, not undefined behaviour.
    assert!(ctx.function::<fn(u32) -> u32>("f").is_err());
    assert!(ctx.function::<fn(u64) -> u64>("missing").is_err());
    Ok(f(f(x)))
}

fn hello() -> &'static str {
    "hello"
}

#[test]
fn functions_pass_to_a_child_checked_by_type() {
    ipckit_core::enter(ROLES);
    let mut child = Command::function(&3u64, apply_twice)
        .unwrap()
        .pass_fn("f", square as fn(u64) -> u64)
        .pass_fn("hello", hello as fn() -> &'static str)
        .spawn()
        .unwrap();
    assert_eq!(child.join_timeout(PATIENCE).unwrap(), 81);
}

/// The CPUs the calling thread may run on.
fn cpus_here() -> Vec<usize> {
    let set = sched_getaffinity(Pid::from_raw(0)).unwrap();
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

fn cpus_of_child((): ()) -> Vec<usize> {
    cpus_here()
}

/// Pins the calling thread to `cpus`.
fn pin(cpus: &[usize]) {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).unwrap();
    }
    sched_setaffinity(Pid::from_raw(0), &set).unwrap();
}

#[test]
fn a_child_runs_on_the_cpus_of_the_thread_that_spawned_it() {
    ipckit_core::enter(ROLES);
    let all = cpus_here();
    if all.len() < 2 {
        eprintln!("one CPU: nothing to tell apart");
        return;
    }
    let child_cpus = || {
        ipckit_core::spawn((), cpus_of_child)
            .unwrap()
            .join_timeout(PATIENCE)
            .unwrap()
    };
    // Pinned, then not, then pinned to another: whatever CPUs the thread that forks
    // children was left with, each child gets its caller's.
    pin(&all[..1]);
    assert_eq!(child_cpus(), all[..1]);
    pin(&all);
    assert_eq!(child_cpus(), all);
    pin(&all[1..2]);
    assert_eq!(child_cpus(), all[1..2]);
    pin(&all);
}
