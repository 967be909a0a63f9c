//! The `imagenet-hard` binary: parse the command line, run the command,
//! print an error as `error: ...` with exit code 1 (clap exits 2 on bad usage).

use clap::Parser;
use std::process::ExitCode;

// The models allocate a fresh activation buffer per layer; mimalloc keeps
// freed pages for reuse, where glibc's malloc returns large blocks to the
// kernel and page-faults them in again (about 10% of ResNet-50's CPU time).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    imagenet_hard::util::keep_freed_memory();
    // A write past the file-size limit (`ulimit -f`, a quota emulated by
    // it) then fails with EFBIG, which fails the unit with its file named,
    // instead of SIGXFSZ killing the worker.
    // SAFETY: sets the disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "imagenet_hard=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // clap exits with 2 on bad usage.
    let cli = imagenet_hard::cli::Cli::parse();
    let printer = imagenet_hard::printer::Printer::new(cli.quiet);
    match imagenet_hard::commands::run(cli.command, printer) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
