//! Behaviour specific to pipes: named-pipe lifecycle and timeouts, line mode, the duplex
//! deadlock pitfall, and Python interop of the framing.

mod deadlock {
    use std::time::Duration;

    use ipckit_core::{Command, Ctx, Role, RoleResult};
    use ipckit_pipes::{Connection, RecvBytes, SendBytes, duplex};

    const BIG: usize = 8 << 20;

    fn swapper(ctx: &mut Ctx) -> RoleResult {
        let mut conn: Connection = ctx.handle("conn")?;
        conn.send_bytes(&vec![2u8; BIG])?;
        let got = conn.recv_bytes_timeout(Duration::from_secs(30))?;
        if got.len() != BIG || got.iter().any(|&b| b != 1) {
            return Err("child received a damaged message".into());
        }
        Ok(())
    }

    const ROLES: &[Role] = &[Role::new("swapper", swapper)];

    /// The Python tutorial's pitfall: both sides send a message far larger than the socket buffer
    /// before either receives. A duplex connection must not deadlock.
    #[test]
    fn simultaneous_large_sends_do_not_deadlock() {
        ipckit_core::enter(ROLES);
        let (mut mine, theirs) = duplex().unwrap();
        let mut child = Command::new("swapper")
            .handle("conn", theirs)
            .spawn()
            .unwrap();
        mine.send_bytes_timeout(&vec![1u8; BIG], Duration::from_secs(30))
            .unwrap();
        let got = mine.recv_bytes_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(got.len(), BIG);
        assert!(got.iter().all(|&b| b == 2));
        assert!(
            child
                .join_timeout(Duration::from_secs(30))
                .unwrap()
                .success()
        );
    }

    /// Two one-way pipes in opposite directions cannot be rescued by the library: the
    /// documented behaviour is that `send_timeout` reports `Timeout` when no byte fits.
    #[test]
    fn a_full_one_way_pipe_times_out_as_documented() {
        let (_r, mut w) = ipckit_pipes::pipe().unwrap();
        // Fill the pipe (64 KiB) with messages nobody reads.
        let mut sent = 0;
        loop {
            match w.try_send_bytes(&[0u8; 1000]) {
                Ok(()) => sent += 1,
                Err(ipckit_core::TrySendError::Full(())) => break,
                Err(e) => panic!("unexpected {e}"),
            }
            assert!(sent < 1000, "a pipe never filled up");
        }
        let start = std::time::Instant::now();
        let r = w.send_bytes_timeout(&[0u8; 1000], Duration::from_millis(100));
        assert!(
            matches!(r, Err(ipckit_core::SendTimeoutError::Timeout(()))),
            "{r:?}"
        );
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
}

mod fifo {
    use std::{
        os::unix::fs::{FileTypeExt, PermissionsExt},
        process::Command,
        time::Duration,
    };

    use ipckit_pipes::{Error, Fifo, Framing, RecvBytes, SendBytes};

    #[test]
    fn created_0600_and_removed_on_drop() {
        let fifo = Fifo::create().unwrap();
        let path = fifo.path().to_owned();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_fifo());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        drop(fifo);
        assert!(!path.exists());
    }

    #[test]
    fn open_timeouts_give_up_cleanly() {
        let fifo = Fifo::create().unwrap();
        let t = Duration::from_millis(100);
        assert!(matches!(
            ipckit_pipes::open_read_timeout(fifo.path(), t),
            Err(Error::Timeout)
        ));
        assert!(matches!(
            ipckit_pipes::open_write_timeout(fifo.path(), t),
            Err(Error::Timeout)
        ));
    }

    #[test]
    fn opening_a_regular_file_is_a_clear_error() {
        let path = ipckit_core::temp_path("notfifo");
        std::fs::write(&path, b"").unwrap();
        let r = ipckit_pipes::open_read_timeout(&path, Duration::from_secs(5));
        std::fs::remove_file(&path).unwrap();
        match r {
            Err(Error::NotA { expected, name, .. }) => {
                assert_eq!(expected, "a FIFO");
                assert_eq!(name, path.display().to_string());
            }
            other => panic!("expected NotA, got {other:?}"),
        }
    }

    #[test]
    fn opening_a_missing_fifo_names_its_path() {
        let path = ipckit_core::temp_path("missing");
        for r in [
            ipckit_pipes::open_read_timeout(&path, Duration::from_secs(5)).map(drop),
            ipckit_pipes::open_write_timeout(&path, Duration::from_secs(5)).map(drop),
            ipckit_pipes::open_write(&path).map(drop),
        ] {
            let e = r.expect_err("the FIFO is not there");
            assert!(
                matches!(&e, Error::Os { action: "open", object: "FIFO", name, .. } if *name == path.display().to_string()),
                "{e:?}"
            );
            assert_eq!(
                e.io_error().map(|e| e.kind()),
                Some(std::io::ErrorKind::NotFound)
            );
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
    }

    #[test]
    fn a_shell_echo_is_read_as_a_message_in_line_mode() {
        let fifo = Fifo::create().unwrap();
        let script = format!(
            "{{ echo hi; printf 'two\\r\\nthree'; }} > '{}'",
            fifo.path().display()
        );
        let mut shell = Command::new("sh").arg("-c").arg(&script).spawn().unwrap();
        let mut r = ipckit_pipes::open_read_timeout(fifo.path(), Duration::from_secs(10))
            .unwrap()
            .framing(Framing::Lines);
        let t = Duration::from_secs(10);
        assert_eq!(r.recv_bytes_timeout(t).unwrap(), b"hi");
        assert_eq!(r.recv_bytes_timeout(t).unwrap(), b"two");
        // The last line needs no newline.
        assert_eq!(r.recv_bytes_timeout(t).unwrap(), b"three");
        assert!(matches!(
            r.recv_bytes_timeout(t),
            Err(ipckit_core::RecvTimeoutError::Disconnected)
        ));
        assert!(shell.wait().unwrap().success());
    }

    #[test]
    fn line_mode_writer_refuses_newlines() {
        let (_r, w) = ipckit_pipes::pipe().unwrap();
        let mut w = w.framing(Framing::Lines);
        assert!(matches!(w.send_bytes(b"a\nb"), Err(Error::Malformed(_))));
        w.send_bytes(b"fine").unwrap();
    }
}

mod python {
    use std::{
        os::fd::{AsFd, AsRawFd},
        time::Duration,
    };

    use ipckit_pipes::{RecvBytes, SendBytes};
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};

    /// A Python `multiprocessing.connection.Connection` on the other end of an ipckit pipe
    /// reads and writes the same frames.
    #[test]
    fn python_connection_speaks_the_same_framing() {
        // Any Python 3 speaks this framing.
        let Some(python) = ipckit_testkit::python(8..=99) else {
            return;
        };
        let (mut ours, theirs) = ipckit_pipes::duplex().unwrap();
        let fd = theirs.as_fd().try_clone_to_owned().unwrap();
        drop(theirs);
        let script = format!(
            "from multiprocessing.connection import Connection\n\
             c = Connection({})\n\
             m = c.recv_bytes()\n\
             c.send_bytes(m[::-1])\n\
             c.send_bytes(b'x' * (1 << 20))\n",
            fd.as_raw_fd()
        );
        // Python inherits exactly this descriptor: close-on-exec is cleared on it alone.
        fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
        let py = ipckit_testkit::Bounded::python(&python, &script, &[]).unwrap();
        drop(fd);
        ours.send_bytes(b"hello python").unwrap();
        assert_eq!(
            ours.recv_bytes_timeout(Duration::from_secs(30)).unwrap(),
            b"nohtyp olleh"
        );
        assert_eq!(
            ours.recv_bytes_timeout(Duration::from_secs(30))
                .unwrap()
                .len(),
            1 << 20
        );
        py.wait_ok("the Python peer");
    }
}
