//! Interrupted runs leave nothing behind: on SIGINT (Ctrl-C), SIGTERM or SIGHUP the handler
//! removes the `OUT.partial` files of the writes under way and exits with status 130.
//!
//! A write registers its partial file ([`Partial::register`]) before it starts and
//! unregisters it when it ends. The handler removes what is registered while holding the same
//! lock and exits without releasing it, so a registration either happened before the signal
//! (its file is removed) or waits forever behind the exit. One window remains: a file created
//! by the writer after the handler's removal and before the process ends (microseconds); the
//! next run to the same output reports and replaces such a file.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Installs the handler. Failure (another handler already installed) is reported, not fatal:
/// the run then behaves as before, and a partial file left by a kill is reported by the next run.
pub(crate) fn install() {
    if let Err(e) = ctrlc::set_handler(|| {
        let paths = REGISTERED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in paths.iter() {
            let _ = std::fs::remove_file(p);
        }
        eprintln!("\ninterrupted; no output written");
        std::process::exit(130);
    }) {
        eprintln!("warning: cannot handle interrupts ({e}); an interrupted run may leave a .partial file");
    }
}

/// The partial file of one output, registered for removal on a signal while this lives.
pub(crate) struct Partial(PathBuf);

impl Partial {
    /// Registers `partial_path(output)`.
    pub(crate) fn register(output: &Path) -> Self {
        let path = quant::checkpoint::partial_path(output);
        REGISTERED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(path.clone());
        Partial(path)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let mut paths = REGISTERED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = paths.iter().position(|p| *p == self.0) {
            paths.swap_remove(i);
        }
    }
}
