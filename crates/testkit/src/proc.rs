//! Child processes the kit starts: killed and reaped on drop, so a failing test leaves
//! no server behind. Also the check that a program is installed at all.

use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};

use crate::Result;

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn new(child: Child, name: impl Into<String>) -> Proc {
        Proc { child, name: name.into() }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap: a crash, not a shutdown.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `program --version` and returns what it printed; an error naming how to install
/// it when it cannot be run.
pub(crate) fn version_of(program: &OsStr, install: &str) -> Result<String> {
    let shown = program.to_string_lossy();
    match Command::new(program).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Ok(out) => Err(format!("{shown} --version failed ({}): {install}", out.status)),
        Err(e) => Err(format!("{shown}: {e}: {install}")),
    }
}
