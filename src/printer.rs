//! Where the tool's words go, decided once per process and passed down:
//! results (tables, JSON, the data a pipe reads) to stdout, never silenced;
//! progress, paths and hints for people to stderr, silenced by `--quiet`
//! (errors are the caller's, printed by `main` either way); progress bars
//! only on a terminal and not under `--quiet`.

use std::fmt::Display;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Printer {
    quiet: bool,
}

impl Printer {
    pub fn new(quiet: bool) -> Printer {
        Printer { quiet }
    }

    /// Whether notes and progress are silenced.
    pub(crate) fn is_quiet(self) -> bool {
        self.quiet
    }

    /// A result, as it is (no newline added), on stdout.
    pub fn result(self, text: impl Display) {
        print!("{text}");
    }

    /// A result line on stdout.
    pub(crate) fn result_line(self, text: impl Display) {
        println!("{text}");
    }

    /// A value as pretty JSON, one document on stdout.
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> serde_json::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    /// A line for people on stderr, unless quiet.
    pub(crate) fn note(self, text: impl Display) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// A progress bar on stderr: hidden under `--quiet` and when stderr is
    /// not a terminal.
    pub fn progress(self, len: u64, what: &str) -> indicatif::ProgressBar {
        if self.quiet {
            return indicatif::ProgressBar::hidden();
        }
        crate::util::progress(len, what)
    }
}
