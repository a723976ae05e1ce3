//! A Python process driven line by line: the Python rows of a bench.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    thread,
};

use anyhow::{Context as _, bail};

use crate::PATIENCE;

/// A Python script running in a child process, which reads orders on its standard input
/// and answers each with a line on its standard output. Killed when dropped.
#[derive(Debug)]
pub struct PythonProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl PythonProc {
    /// Starts `python script args…`.
    ///
    /// # Errors
    /// When the process cannot start.
    pub fn start(python: &Path, script: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(PythonProc {
            child,
            stdin,
            lines,
        })
    }

    /// The next line it prints, waiting at most [`PATIENCE`].
    ///
    /// # Errors
    /// When none comes in time, or the process ended.
    pub fn line(&self) -> anyhow::Result<String> {
        self.lines
            .recv_timeout(PATIENCE)
            .context("the Python process did not answer in time (or ended)")
    }

    /// Writes `order` as a line on its standard input.
    ///
    /// # Errors
    /// When the process is gone.
    pub fn order(&mut self, order: &str) -> anyhow::Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            bail!("the Python process's input is closed");
        };
        writeln!(stdin, "{order}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes its standard input and waits (at most [`PATIENCE`]) for it to end cleanly.
    ///
    /// # Errors
    /// When it does not end in time, or fails.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.stdin = None;
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the Python process ended with {status}");
                }
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the Python process did not end within {PATIENCE:?}");
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for PythonProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A Python row of a paired group: `benches/python/compare.py WORKLOAD MECHANISM` (see the
/// script for both), which starts its own processes and times each batch it is ordered.
#[derive(Debug)]
pub struct PythonRow(PythonProc);

impl PythonRow {
    /// Starts `compare.py workload mech` with interpreter `python` and waits until ready.
    ///
    /// # Errors
    /// When it cannot start or does not say it is ready.
    pub fn start(python: &Path, workload: &str, mech: &str) -> anyhow::Result<Self> {
        Self::script("python/compare.py", python, &[workload, mech])
    }

    /// Starts `script` (a path in the benches crate) with `args`: any script that prints
    /// `ready`, then answers each line `n` with the seconds `n` iterations took.
    ///
    /// # Errors
    /// When it cannot start or does not say it is ready.
    pub fn script(script: &str, python: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
        let p = PythonProc::start(python, &path, args)?;
        let line = p.line()?;
        anyhow::ensure!(line == "ready", "{script} said {line:?}");
        Ok(PythonRow(p))
    }
}

impl crate::Rig for PythonRow {
    fn run(&mut self, iters: u64) -> anyhow::Result<std::time::Duration> {
        self.0.order(&iters.to_string())?;
        let secs: f64 = self.0.line()?.parse().context("a time in seconds")?;
        Ok(std::time::Duration::from_secs_f64(secs))
    }

    fn finish(self) -> anyhow::Result<()> {
        self.0.finish()
    }
}
