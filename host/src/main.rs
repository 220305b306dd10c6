//! The `smartmart` command: a thin shell over the library (`smartmart::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    smartmart::cli::main()
}
