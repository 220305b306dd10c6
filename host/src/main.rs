//! The `smartmart` command: a thin shell over the library (`smartmart::cli`).

use std::process::ExitCode;

/// The service's allocator (why: the workspace's `Cargo.toml`). Set here,
/// in the binary only: a program embedding the library chooses its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    smartmart::cli::main()
}
