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
